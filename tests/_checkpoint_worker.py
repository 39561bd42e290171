"""Save mid-training, resume in a fresh process: the script behind test_checkpoint.py.

``python _checkpoint_worker.py save DIR FORMATS`` trains every case for
``TOTAL`` steps, saving params and optimizer state after ``SPLIT`` steps in
each format named in ``FORMATS`` (comma-separated: orbax, pickle, npz), and
writes the uninterrupted run to ``DIR/<case>-uninterrupted.npz``.

``python _checkpoint_worker.py resume DIR FORMATS`` runs in a new process:
it restores each checkpoint, trains the remaining steps and writes
``DIR/<case>-<format>.npz``. For orbax it also resumes once with the step
counter reset to zero, ``DIR/<case>-orbax-count-reset.npz``: the schedules
depend on the counter, so that run must differ.

Each ``.npz`` holds the params after every step (``step<k>/<leaf>``) and the
final optimizer state's leaves (``state/<i>``). The last line of stdout is a
JSON report: warnings seen, and whether each restored tree has exactly the
structure, shapes and dtypes of a fresh ``init``.
"""

from __future__ import annotations

import json
import pickle
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import momentum_jax
from momentum_jax import compat

TOTAL = 10
SPLIT = 4


def _rising(count: Any) -> Any:
    return jnp.minimum(0.5 + 0.07 * count, 0.95)


CASES: dict[str, tuple[Callable[[], optax.GradientTransformation], Any]] = {
    # Both schedules move at every step, so a wrong counter shows at once.
    "nesterov_scheduled": (
        lambda: momentum_jax.nesterov(optax.exponential_decay(0.05, 3, 0.5), _rising),
        jnp.float32,
    ),
    # A chain state: (EmptyState, MomentumState, ScaleByScheduleState).
    "torch_sgd": (
        lambda: compat.torch_sgd(
            optax.piecewise_constant_schedule(0.1, {5: 0.2}),
            0.9,
            dampening=0.1,
            weight_decay=1e-3,
        ),
        jnp.float32,
    ),
    # bfloat16 params with a float32 velocity: npz loses the bfloat16 dtype.
    "momentum_bfloat16": (
        lambda: momentum_jax.momentum(
            optax.linear_schedule(0.05, 0.01, 8), 0.9, accumulator_dtype=jnp.float32
        ),
        jnp.bfloat16,
    ),
}

_RNG = np.random.default_rng(0)
_X = _RNG.standard_normal((32, 4)).astype(np.float32)
_Y = (_X @ _RNG.standard_normal((4, 3)) + 0.1 * _RNG.standard_normal((32, 3))).astype(np.float32)


def initial_params(dtype: Any) -> dict[str, jax.Array]:
    return {
        "w": jnp.asarray(np.full((4, 3), 0.1), dtype),
        "b": jnp.asarray(np.zeros(3), dtype),
    }


def _loss(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    pred = x @ params["w"].astype(jnp.float32) + params["b"].astype(jnp.float32)
    return jnp.mean((pred - y) ** 2)


def make_step(tx: optax.GradientTransformation) -> Callable[..., Any]:
    @jax.jit
    def step(params: Any, state: Any, k: jax.Array) -> Any:
        # A different minibatch each step, so gradients change along the run.
        start = (k * 8) % 32
        x = jax.lax.dynamic_slice_in_dim(jnp.asarray(_X), start, 8)
        y = jax.lax.dynamic_slice_in_dim(jnp.asarray(_Y), start, 8)
        grads = jax.grad(_loss)(params, x, y)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def run(
    tx: optax.GradientTransformation, params: Any, state: Any, first: int, last: int
) -> tuple[Any, Any, list[Any]]:
    step = make_step(tx)
    trajectory = []
    for k in range(first, last):
        params, state = step(params, state, jnp.asarray(k, jnp.int32))
        trajectory.append(jax.tree.map(np.asarray, params))
    return params, state, trajectory


def write_run(path: Path, trajectory: list[Any], first: int, state: Any) -> None:
    arrays: dict[str, np.ndarray] = {}
    for offset, params in enumerate(trajectory):
        for key, value in params.items():
            # Stored as raw bits: npz cannot hold bfloat16.
            arrays[f"step{first + offset + 1}/{key}"] = np.asarray(value).reshape(-1).view(np.uint8)
    for i, leaf in enumerate(jax.tree.leaves(state)):
        arrays[f"state/{i}"] = np.asarray(leaf).reshape(-1).view(np.uint8)
    np.savez(path, **arrays)


def signature(tree: Any) -> Any:
    return str(jax.tree.structure(tree)), [
        (tuple(np.shape(x)), str(jnp.result_type(x))) for x in jax.tree.leaves(tree)
    ]


# --- the three checkpoint formats (the recipes of docs/production.md) ---------


def save_orbax(directory: Path, params: Any, state: Any) -> None:
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory.absolute(), {"params": params, "opt_state": state})


def restore_orbax(directory: Path, params_like: Any, state_like: Any) -> tuple[Any, Any]:
    import orbax.checkpoint as ocp

    # The target gives the tree structure (NamedTuples, chain tuples), shapes,
    # dtypes and shardings; orbax fills in the saved values.
    target = {"params": params_like, "opt_state": state_like}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(directory.absolute(), abstract)
    return restored["params"], restored["opt_state"]


def save_pickle(path: Path, params: Any, state: Any) -> None:
    with path.open("wb") as file:
        pickle.dump(jax.device_get((params, state)), file)


def restore_pickle(path: Path) -> tuple[Any, Any]:
    with path.open("rb") as file:
        params, state = pickle.load(file)
    return params, state


def save_npz(path: Path, params: Any, state: Any) -> None:
    leaves = jax.tree.leaves((params, state))
    np.savez(path, *[np.asarray(leaf) for leaf in leaves])


def restore_npz(path: Path, params_like: Any, state_like: Any) -> tuple[Any, Any]:
    # The tree structure is not in the file: rebuild it from a fresh init. The
    # dtypes come from there too (npz stores bfloat16 as raw 2-byte voids).
    like_leaves, treedef = jax.tree.flatten((params_like, state_like))
    with np.load(path) as data:
        stored = [data[f"arr_{i}"] for i in range(len(data.files))]
    leaves = [
        jnp.asarray(value.view(like.dtype)) for value, like in zip(stored, like_leaves, strict=True)
    ]
    params, state = jax.tree.unflatten(treedef, leaves)
    return params, state


def save(directory: Path, formats: list[str]) -> dict[str, Any]:
    for case, (factory, dtype) in CASES.items():
        tx = factory()
        params = initial_params(dtype)
        state = tx.init(params)
        params, state, first_part = run(tx, params, state, 0, SPLIT)
        if "orbax" in formats:
            save_orbax(directory / f"{case}-orbax", params, state)
        if "pickle" in formats:
            save_pickle(directory / f"{case}.pkl", params, state)
        if "npz" in formats:
            save_npz(directory / f"{case}-leaves.npz", params, state)
        _, state, second_part = run(tx, params, state, SPLIT, TOTAL)
        write_run(directory / f"{case}-uninterrupted.npz", first_part + second_part, 0, state)
    return {}


def resume(directory: Path, formats: list[str]) -> dict[str, Any]:
    report: dict[str, Any] = {"signature_matches": {}}
    for case, (factory, dtype) in CASES.items():
        tx = factory()
        params_like = initial_params(dtype)
        state_like = tx.init(params_like)
        restored: dict[str, tuple[Any, Any]] = {}
        if "orbax" in formats:
            restored["orbax"] = restore_orbax(directory / f"{case}-orbax", params_like, state_like)
        if "pickle" in formats:
            restored["pickle"] = restore_pickle(directory / f"{case}.pkl")
        if "npz" in formats:
            restored["npz"] = restore_npz(directory / f"{case}-leaves.npz", params_like, state_like)
        for fmt, (params, state) in restored.items():
            report["signature_matches"][f"{case}-{fmt}"] = signature((params, state)) == signature(
                (params_like, state_like)
            )
            _, final_state, trajectory = run(tx, params, state, SPLIT, TOTAL)
            write_run(directory / f"{case}-{fmt}.npz", trajectory, SPLIT, final_state)
        if "orbax" in restored:
            params, state = restored["orbax"]
            counters = [int(x) for x in jax.tree.leaves(state) if jnp.ndim(x) == 0]
            report.setdefault("restored_counters", {})[case] = counters
            reset = optax.tree_utils.tree_set(state, count=jnp.zeros([], jnp.int32))
            _, final_state, trajectory = run(tx, params, reset, SPLIT, TOTAL)
            write_run(directory / f"{case}-orbax-count-reset.npz", trajectory, SPLIT, final_state)
    return report


def main() -> None:
    command, directory, formats = sys.argv[1], Path(sys.argv[2]), sys.argv[3].split(",")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = {"save": save, "resume": resume}[command](directory, formats)
    report["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
