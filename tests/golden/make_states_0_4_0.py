"""Write ``states_0.4.0.npz`` and ``states_0.4.0.pkl``: states saved by momentum_jax 0.4.0.

Run from the repository root: ``python tests/golden/make_states_0_4_0.py``. The committed
fixtures were written by momentum_jax 0.4.0 (commit 87c1380). Each case's state after
``STEPS`` updates is saved twice: its leaves by key path in the ``.npz`` (what a checkpoint
holds), and the whole state in the pickle, every array as a nested list (so the file loads
with any NumPy version, and the pickle names each state class by its module).
``tests/test_checkpoint.py`` loads them into the current code, without ``restore_state``,
and checks that the states continue exactly as a fresh run does.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import momentum_jax  # noqa: E402
from momentum_jax import compat, schedules  # noqa: E402

STEPS = 3
NPZ = Path(__file__).with_name("states_0.4.0.npz")
PKL = Path(__file__).with_name("states_0.4.0.pkl")
_SR = {"accumulator_dtype": jnp.bfloat16, "stochastic_rounding": True, "seed": 7}


def cases() -> dict[str, Callable[[], Any]]:
    """Name -> factory: every public transform, both layouts, rounding and injection."""
    return {
        f"{name}[{layout}]": factory
        for layout in ("per_leaf", "packed")
        for name, factory in _cases(layout).items()
    }


def _cases(layout: str) -> dict[str, Callable[[], Any]]:
    lr = optax.piecewise_constant_schedule(0.05, {2: 0.5})
    mu = schedules.sutskever(0.95, steps_per_stage=2)
    return {
        "momentum": lambda: momentum_jax.momentum(0.05, 0.9, layout=layout),
        "momentum_sr": lambda: momentum_jax.momentum(0.05, 0.9, layout=layout, **_SR),
        "nesterov": lambda: momentum_jax.nesterov(lr, mu, weight_decay=0.01, layout=layout),
        "scale_by_momentum": lambda: optax.chain(
            momentum_jax.scale_by_momentum(0.9, dampening=0.1, layout=layout),
            optax.scale_by_learning_rate(lr),
        ),
        "torch_sgd": lambda: compat.torch_sgd(
            0.05, 0.9, weight_decay=0.01, nesterov=True, layout=layout
        ),
        "keras_sgd": lambda: compat.keras_sgd(0.05, 0.9, weight_decay=0.01, layout=layout),
        "tf1_momentum": lambda: compat.tf1_momentum(0.05, 0.9, layout=layout),
        "qhm": lambda: momentum_jax.qhm(0.05, 0.9, 0.7, layout=layout, **_SR),
        "aggmo": lambda: momentum_jax.aggmo(0.05, (0.0, 0.9, 0.99), layout=layout),
        "injected": lambda: optax.inject_hyperparams(momentum_jax.momentum)(
            learning_rate=0.05, momentum=0.9, layout=layout
        ),
        "round_params": lambda: optax.chain(
            momentum_jax.momentum(0.05, 0.9, layout=layout, **_SR),
            momentum_jax.stochastic_round_params(seed=3),
        ),
    }


def params(case: str) -> dict[str, Any]:
    dtype = jnp.bfloat16 if case.startswith("round_params") else jnp.float32
    w = jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32).reshape(3, 4)
    return {"w": w.astype(dtype), "b": jnp.arange(4, dtype=jnp.float32).astype(dtype)}


def grads(p: Any, step: int) -> Any:
    """Gradients that change every step: of 0.5 * sum(p**2 * (1 + step)) + sin(step) terms."""
    return jax.tree.map(lambda x: (x * (1.0 + step) + jnp.sin(step + x)).astype(x.dtype), p)


def run(tx: Any, p: Any, state: Any, steps: range) -> tuple[Any, Any]:
    for step in steps:
        updates, state = tx.update(grads(p, step), state, p)
        p = optax.apply_updates(p, updates)
    return p, state


def main() -> None:
    leaves: dict[str, np.ndarray] = {}
    whole: dict[str, Any] = {}
    for case, factory in cases().items():
        tx = factory()
        p = params(case)
        _, state = run(tx, p, tx.init(p), range(STEPS))
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
            leaves[f"{case}|{jax.tree_util.keystr(path)}"] = np.asarray(
                jnp.asarray(leaf).astype(jnp.float32)
                if jnp.result_type(leaf) == jnp.bfloat16
                else leaf
            )
        whole[case] = jax.tree.map(lambda x: np.asarray(x, np.float64).tolist(), state)
    np.savez(NPZ, **leaves)
    PKL.write_bytes(pickle.dumps(whole, protocol=4))
    print(f"wrote {len(leaves)} leaves of {len(whole)} states to {NPZ.name} and {PKL.name}")


if __name__ == "__main__":
    main()
