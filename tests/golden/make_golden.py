"""Write ``trajectories_0.1.0.npz``: params after each step of every public transform.

Run from the repository root: ``python tests/golden/make_golden.py``; with
``--states`` it also writes ``states_0.1.0.npz``, the state of each transform
after ``STATE_STEP`` updates. Both committed fixtures were written by
momentum_jax 0.1.0 (commit 26c16e8; the states by this script run with
``PYTHONPATH`` on an export of that commit's ``momentum_jax``);
``tests/test_golden.py`` checks that later code reproduces them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import momentum_jax  # noqa: E402
from momentum_jax import compat, schedules  # noqa: E402
from tests import _problems  # noqa: E402
from tests._problems import plain  # noqa: E402

STEPS = 25
# The optimizer state after this many steps is saved too, as plain nested
# dicts and lists (what a checkpoint restored without a target looks like).
STATE_STEP = 20
FIXTURE = Path(__file__).with_name("trajectories_0.1.0.npz")
STATES = Path(__file__).with_name("states_0.1.0.npz")


def _lr_schedule() -> optax.Schedule:
    return optax.piecewise_constant_schedule(0.05, {5: 0.5, 15: 0.2})


def _mu_schedule() -> optax.Schedule:
    return optax.linear_schedule(0.5, 0.95, 20)


def cases() -> dict[str, Callable[[], Any]]:
    """Name -> factory of the transform; every public transform in several option sets."""
    scale = optax.scale_by_learning_rate
    return {
        "momentum": lambda: momentum_jax.momentum(0.05, 0.9),
        "momentum_lr_schedule": lambda: momentum_jax.momentum(_lr_schedule(), 0.9),
        "momentum_mu_schedule": lambda: momentum_jax.momentum(0.05, _mu_schedule()),
        "momentum_weight_decay": lambda: momentum_jax.momentum(0.05, 0.9, weight_decay=0.1),
        "momentum_bf16_acc": lambda: momentum_jax.momentum(0.05, 0.9, accumulator_dtype="bfloat16"),
        "momentum_sutskever": lambda: momentum_jax.momentum(
            0.05, schedules.sutskever(0.95, steps_per_stage=5)
        ),
        "momentum_demon": lambda: momentum_jax.momentum(0.05, schedules.demon(0.9, 20)),
        "nesterov": lambda: momentum_jax.nesterov(0.05, 0.9),
        "nesterov_schedules": lambda: momentum_jax.nesterov(_lr_schedule(), _mu_schedule()),
        "nesterov_weight_decay": lambda: momentum_jax.nesterov(0.05, 0.8, weight_decay=0.05),
        "nesterov_sutskever": lambda: momentum_jax.nesterov(
            0.05, schedules.sutskever(0.95, steps_per_stage=5)
        ),
        "scale_by_momentum": lambda: optax.chain(momentum_jax.scale_by_momentum(0.9), scale(0.05)),
        "scale_by_momentum_dampening": lambda: optax.chain(
            momentum_jax.scale_by_momentum(0.9, dampening=0.3), scale(_lr_schedule())
        ),
        "scale_by_momentum_nesterov": lambda: optax.chain(
            momentum_jax.scale_by_momentum(_mu_schedule(), nesterov=True), scale(0.05)
        ),
        "scale_by_momentum_demon": lambda: optax.chain(
            momentum_jax.scale_by_momentum(schedules.demon(0.9, 20)), scale(0.05)
        ),
        "torch_sgd_plain": lambda: compat.torch_sgd(0.05),
        "torch_sgd_momentum": lambda: compat.torch_sgd(0.05, momentum=0.9),
        "torch_sgd_all": lambda: compat.torch_sgd(
            _lr_schedule(), momentum=0.9, dampening=0.2, weight_decay=0.05
        ),
        "torch_sgd_nesterov": lambda: compat.torch_sgd(
            0.05, momentum=0.9, weight_decay=0.05, nesterov=True
        ),
        "torch_sgd_maximize": lambda: compat.torch_sgd(0.05, momentum=0.5, maximize=True),
        "keras_sgd_plain": lambda: compat.keras_sgd(0.05),
        "keras_sgd_momentum": lambda: compat.keras_sgd(_lr_schedule(), momentum=0.9),
        "keras_sgd_nesterov_decay": lambda: compat.keras_sgd(
            0.05, momentum=0.9, nesterov=True, weight_decay=0.1
        ),
        "keras_sgd_decay_no_momentum": lambda: compat.keras_sgd(0.05, weight_decay=0.1),
        "tf1_momentum": lambda: compat.tf1_momentum(0.05, 0.9),
        "tf1_momentum_nesterov": lambda: compat.tf1_momentum(
            _lr_schedule(), 0.9, use_nesterov=True
        ),
        "qhm": lambda: momentum_jax.qhm(0.1, 0.9, 0.7),
        "qhm_schedules": lambda: momentum_jax.qhm(_lr_schedule(), schedules.demon(0.95, 20), 0.6),
        "qhm_defaults": lambda: momentum_jax.qhm(0.5),
        "aggmo": lambda: momentum_jax.aggmo(0.05),
        "aggmo_schedule": lambda: momentum_jax.aggmo(_lr_schedule(), (0.5, 0.9)),
        "aggmo_one": lambda: momentum_jax.aggmo(0.05, (0.9,)),
    }


def run(name: str) -> list[Any]:
    return _problems.trajectory(cases()[name](), STEPS)


def save_states(states: dict[str, Any], path: Path) -> None:
    """Write plain states (dicts, lists, arrays) as an .npz: arrays by number, the nesting as JSON.

    No pickle, so the file loads with any numpy version.
    """
    arrays: dict[str, np.ndarray] = {}

    def encode(value: Any) -> Any:
        if isinstance(value, dict):
            return {"dict": {key: encode(item) for key, item in value.items()}}
        if isinstance(value, list):
            return {"list": [encode(item) for item in value]}
        if value is None:
            return None
        array = np.asarray(value)
        key = f"a{len(arrays)}"
        # .npz keeps only numpy's own dtypes: bfloat16 travels as its raw bits.
        arrays[key] = array.view(f"u{array.itemsize}") if array.dtype.kind == "V" else array
        return {"array": key, "dtype": array.dtype.name}

    layout = json.dumps({name: encode(state) for name, state in states.items()})
    np.savez(path, layout=np.asarray(layout), **arrays)


def load_states(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}

    def decode(node: Any) -> Any:
        if node is None:
            return None
        if "dict" in node:
            return {key: decode(item) for key, item in node["dict"].items()}
        if "list" in node:
            return [decode(item) for item in node["list"]]
        return arrays[node["array"]].view(jnp.dtype(node["dtype"]))

    layout: dict[str, Any] = json.loads(str(arrays.pop("layout")))
    return {name: decode(node) for name, node in layout.items()}


def state_after(name: str, steps: int) -> Any:
    tx = cases()[name]()
    params = _problems.initial_params()
    state = tx.init(params)
    for _ in range(steps):
        grads = _problems.gradient()(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return state


def main() -> None:
    arrays: dict[str, np.ndarray] = {}
    for name in cases():
        steps = run(name)
        for key in steps[0]:
            arrays[f"{name}/{key}"] = np.stack([step[key] for step in steps])
    np.savez(FIXTURE, **arrays)
    if "--states" in sys.argv:
        states = {name: plain(state_after(name, STATE_STEP)) for name in cases()}
        save_states(states, STATES)
    print(f"wrote {len(arrays)} arrays for {len(cases())} transforms to {FIXTURE}")


if __name__ == "__main__":
    main()
