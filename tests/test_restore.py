"""``restore_state``: every field of every stage carried, or an error naming the field.

Every distinct state of the contract table's rows, alone and under
``inject_hyperparams``, and every public transform under every other optax
wrapper that holds state of its own, moves between the two layouts in both
directions, from the state itself and from its nested-dicts form (a checkpoint
read without a target); every leaf must arrive unchanged, read through the
public ``PackedState`` fields. Real orbax checkpoints read without a
target move for dict, tuple, NamedTuple, Equinox and Flax NNX params.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import momentum_jax
from momentum_jax import compat
from tests._problems import apply, layout_grads, layout_params, per_array, plain
from tests._table import LAYOUT_ROWS, TRANSFORMS, Row, rows_named

pytestmark = pytest.mark.slow  # every state structure under every wrapper, both layouts

LAYOUTS = ("per_leaf", "packed")
STEPS = 3


def _not_vectors(params: Any) -> Any:
    return jax.tree.map(lambda x: x.ndim != 1, params)


def _labels(params: Any) -> Any:
    return jax.tree.map(lambda x: "ours" if x.ndim != 1 else "adam", params)


WRAPPERS: dict[str, Callable[[optax.GradientTransformation], Any]] = {
    "plain": lambda tx: tx,
    "multisteps": lambda tx: optax.MultiSteps(tx, every_k_schedule=2).gradient_transformation(),
    "apply_if_finite": lambda tx: optax.apply_if_finite(tx, max_consecutive_errors=2),
    "masked": lambda tx: optax.masked(tx, _not_vectors),
    "multi_transform": lambda tx: optax.multi_transform(
        {"ours": tx, "adam": optax.adam(1e-2)}, _labels
    ),
}
if hasattr(optax, "partition"):  # optax 0.2.5+
    WRAPPERS["partition"] = lambda tx: optax.partition(
        {"ours": tx, "adam": optax.adam(1e-2)}, _labels
    )


def _build(row: Row, layout: str, wrapper: str) -> optax.GradientTransformation:
    if wrapper == "inject":
        inject = optax.inject_hyperparams(row.factory, static_args=(*row.static, "layout"))
        return inject(**row.hyper, **row.static, layout=layout)
    return WRAPPERS[wrapper](row.build(layout=layout))


def _trained(tx: optax.GradientTransformation, params: Any, jit: bool = False) -> Any:
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    for k in range(STEPS):
        updates, state = update(layout_grads(params, k), state, params)
        params = apply(params, updates)
    return state


def _assert_moved(moved: Any, old: Any, tx: optax.GradientTransformation, params: Any) -> None:
    fresh = jax.eval_shape(tx.init, params)
    chex.assert_trees_all_equal_structs(moved, fresh)
    chex.assert_trees_all_equal_shapes_and_dtypes(moved, fresh)
    # Nothing reset: every leaf, read in the per-array layout, is the old one.
    chex.assert_trees_all_equal(per_array(moved), per_array(old))


def _params(row: Row, wrapper: str) -> dict[str, Any]:
    # inject_hyperparams casts the hyperparameters to the params' dtype, and MultiSteps
    # casts its complex accumulator to a real dtype: real params only there.
    complex_params = row.complex_params and wrapper not in ("inject", "multisteps")
    params = {
        k: v for k, v in layout_params(complex_params).items() if k not in ("steps", "frozen")
    }
    if wrapper == "inject":  # (and float32 hyperparameters would lift bfloat16 arithmetic)
        del params["half"]
    return params


def _distinct_states(wrapper: str, rows: list[Row] = LAYOUT_ROWS) -> list[Row]:
    """The first row of each distinct state (tree, shapes, dtypes in both layouts) under ``wrapper``.

    What restore_state does depends on the states' structure alone; rows that
    differ only in their numbers (momentum and nesterov, say) are one case.
    """
    seen: dict[Any, Row] = {}
    for row in rows:
        params = _params(row, wrapper)
        shapes = [jax.eval_shape(_build(row, layout, wrapper).init, params) for layout in LAYOUTS]
        key = str(
            [
                (jax.tree.structure(s), [(x.shape, x.dtype) for x in jax.tree.leaves(s)])
                for s in shapes
            ]
        )
        seen.setdefault(key, row)
    return list(seen.values())


# Every distinct state alone and under inject_hyperparams; one row per public
# transform under each other wrapper (they hold the inner state as it is, whatever the row).
CASES = [(row, w) for w in ("plain", "inject") for row in _distinct_states(w)] + [
    (row, w) for w in WRAPPERS if w != "plain" for row in _distinct_states(w, TRANSFORMS)
]


@pytest.mark.parametrize(("row", "wrapper"), CASES, ids=[f"{r.id}-{w}" for r, w in CASES])
def test_every_state_moves_between_layouts_under_every_wrapper(row: Row, wrapper: str) -> None:
    params = _params(row, wrapper)
    # Eagerly, branches (lax.cond) and stochastic rounding compile op by op at every call.
    jit = wrapper in ("multisteps", "apply_if_finite") or "stochastic" in row.id
    states = {layout: _trained(_build(row, layout, wrapper), params, jit) for layout in LAYOUTS}
    for old_layout, new_layout in (LAYOUTS, LAYOUTS[::-1]):
        old, tx = states[old_layout], _build(row, new_layout, wrapper)
        _assert_moved(momentum_jax.restore_state(old, tx, params), old, tx, params)
        _assert_moved(momentum_jax.restore_state(plain(old), tx, params), old, tx, params)
        # And into its own layout: the state itself.
        same = momentum_jax.restore_state(old, _build(row, old_layout, wrapper), params)
        chex.assert_trees_all_equal(same, old)


class Pair(NamedTuple):
    kernel: Any
    bias: Any


def _param_kinds() -> dict[str, Any]:
    rng = np.random.default_rng(1)
    kernel = jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)
    bias = jnp.asarray(rng.standard_normal(4), jnp.float32)
    kinds = {
        "dict": {"kernel": kernel, "bias": bias},
        "tuple": (kernel, bias, jnp.arange(3)),
        "namedtuple": Pair(kernel, bias),
    }
    eqx = pytest.importorskip("equinox")
    kinds["equinox"] = eqx.filter(eqx.nn.MLP(3, 2, 4, 1, key=jax.random.PRNGKey(0)), eqx.is_array)
    nnx = pytest.importorskip("flax.nnx")
    kinds["flax_nnx"] = nnx.state(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.Param)
    return kinds


def _orbax_round_trip(state: Any, path: Any) -> Any:
    ocp = pytest.importorskip("orbax.checkpoint")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, state)
    checkpointer.wait_until_finished()
    return checkpointer.restore(path)  # no target: nested dicts and lists


# A state of each kind: MomentumState, a chain with QHMState, AggMo's buffers, a preset's chain.
ORBAX_ROWS = rows_named("nesterov", "qhm", "aggmo", "torch_sgd_dampening_weight_decay")


@pytest.mark.parametrize("kind", ["dict", "tuple", "namedtuple", "equinox", "flax_nnx"])
def test_orbax_checkpoints_without_a_target_move_for_every_kind_of_params(
    kind: str, tmp_path: Any
) -> None:
    params = _param_kinds()[kind]
    for row in ORBAX_ROWS:
        for old_layout, new_layout in (LAYOUTS, LAYOUTS[::-1]):
            old = _trained(row.build(layout=old_layout), params)
            raw = _orbax_round_trip(old, tmp_path / f"{row.id}_{old_layout}")
            tx = row.build(layout=new_layout)
            _assert_moved(momentum_jax.restore_state(raw, tx, params), old, tx, params)


def test_a_field_that_cannot_be_carried_is_named() -> None:
    params = {"w": jnp.ones(3)}
    adam = _trained(optax.adam(0.1), params)
    fix = r"; rebuild the transform as it was saved\.$"
    with pytest.raises(
        ValueError, match=r"field state\.velocity is missing from the old state" + fix
    ):
        momentum_jax.restore_state({"count": np.int32(3)}, momentum_jax.momentum(0.1), params)
    with pytest.raises(
        ValueError, match=r"field state\[0\]\.count has no place in the new state" + fix
    ):
        momentum_jax.restore_state(adam, optax.sgd(0.1, 0.9), params)
    with pytest.raises(
        ValueError, match=r"field state\.velocity\.w has shape \(3,\), expected \(2,\)" + fix
    ):
        momentum_jax.restore_state(
            _trained(momentum_jax.momentum(0.1), params),
            momentum_jax.momentum(0.1),
            {"w": jnp.ones(2)},
        )
    # A field the new transform does not keep is not dropped silently: PyTorch's start of the
    # buffer, kept only where the momentum may be 0 at some steps (a schedule).
    scheduled = compat.torch_sgd(0.1, optax.constant_schedule(0.9), dampening=0.1)
    with pytest.raises(
        ValueError, match=r"field state\[0\]\.started has no place in the new state" + fix
    ):
        momentum_jax.restore_state(
            _trained(scheduled, params), compat.torch_sgd(0.1, 0.9, dampening=0.1), params
        )
    packed = _trained(momentum_jax.momentum(0.1, layout="packed"), params)
    with pytest.raises(
        ValueError,
        match=r"field state was packed for other params \(shapes, names or dtypes\); restore it "
        r"with the params it was written for\.$",
    ):
        momentum_jax.restore_state(plain(packed), momentum_jax.momentum(0.1), {"w": jnp.ones(2)})


def test_a_hyperparameter_injected_now_but_static_then_takes_the_built_value() -> None:
    """0.3.0 had no ``seed``; inject_hyperparams injects it now, with the value it is built with."""
    params = {"w": jnp.linspace(-1.0, 1.0, 4)}
    then = optax.inject_hyperparams(momentum_jax.momentum, static_args=("seed",))(0.1, 0.9)
    now = optax.inject_hyperparams(momentum_jax.momentum)(0.1, 0.9, seed=4)
    old = _trained(then, params)
    moved = momentum_jax.restore_state(plain(old), now, params)
    assert int(moved.hyperparams["seed"]) == 4
    chex.assert_trees_all_equal(moved.inner_state, old.inner_state)
    chex.assert_trees_all_equal(
        moved.hyperparams["learning_rate"], old.hyperparams["learning_rate"]
    )
    # Any other missing field is still an error.
    raw = plain(old)
    del raw["inner_state"]["velocity"]
    with pytest.raises(ValueError, match=r"state.inner_state.velocity is missing"):
        momentum_jax.restore_state(raw, now, params)


def test_optax_stages_keep_every_field_and_their_own_counts() -> None:
    params = {"w": jnp.linspace(-1.0, 1.0, 4)}
    tx = optax.chain(
        optax.MultiSteps(optax.adam(0.1), every_k_schedule=3).gradient_transformation(),
        optax.apply_if_finite(momentum_jax.nesterov(0.1, 0.9, layout="packed"), 2),
    )
    old = _trained(tx, params)
    assert int(old[0].mini_step) == STEPS % 3
    moved = momentum_jax.restore_state(plain(old), tx, params)
    chex.assert_trees_all_equal(moved, old)
