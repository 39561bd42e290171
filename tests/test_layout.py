"""The packed state layout (``layout="packed"``), opt-in, against the default per-array one.

Every per-array row of the contract table whose rounding is deterministic runs
in both layouts on params that mix packed arrays (small, several dtypes) with
arrays that keep their own buffer (large, integer, ``None``): the numbers agree
(to the rounding of a fused multiply-add XLA may form in one layout's loop and
not the other's) and every field of the state reads the same. Then what the
layout is (static, hashable, which arrays it packs), masks and partitions,
``vmap``, NumPy inputs, ``optax.tree_utils`` and the errors naming the params'
own paths. The contract table runs every property on every row in the packed
layout too; sharding is in tests/test_sharding.py, serialization in
tests/test_checkpoint.py, moving states between the layouts in
tests/test_restore.py.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import momentum_jax
from tests._problems import apply, layout_grads, layout_params, packed_nodes
from tests._table import LAYOUT_ROWS, Row

pytestmark = pytest.mark.slow  # the fast tier runs the contract table's packed rows

# Stochastic rounding draws its bits by position in the pack, so the layouts agree in
# distribution only (tests/test_rounding.py checks the packed layout on its own).
EXACT_ROWS = [row for row in LAYOUT_ROWS if "stochastic" not in row.id]
STEPS = 4


def _run(tx: optax.GradientTransformation, params: Any, steps: int = STEPS) -> tuple[Any, Any]:
    state = tx.init(params)
    update = jax.jit(tx.update)
    for k in range(steps):
        updates, state = update(layout_grads(params, k), state, params)
        params = apply(params, updates)
    return params, state


def _ulps(a: Any, b: Any) -> int:
    """Largest difference between ``a`` and ``b``, in ulps of each leaf's largest magnitude.

    (Relative to each element, a param that crosses zero would make any
    rounding difference look huge.)
    """
    worst = 0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype
        assert x.shape == y.shape
        if x.size == 0 or not np.issubdtype(x.dtype, np.inexact):
            assert np.array_equal(x, y)
            continue
        if np.issubdtype(x.dtype, np.complexfloating):
            x, y = x.view(np.float32), y.view(np.float32)
        info = jnp.finfo(x.dtype)
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        magnitude = max(float(np.max(np.abs(y64))), float(info.tiny))
        ulp = 2.0 ** (np.floor(np.log2(magnitude)) - info.nmant)
        worst = max(worst, int(np.ceil(np.max(np.abs(x64 - y64) / ulp))))
    return worst


@pytest.mark.parametrize("row", EXACT_ROWS, ids=[row.id for row in EXACT_ROWS])
def test_packed_layout_matches_the_per_array_layout(row: Row) -> None:
    params = layout_params(row.complex_params)
    txs = {layout: row.build(layout=layout) for layout in ("per_leaf", "packed")}

    @jax.jit  # both layouts in one compiled program
    def step(params: Any, states: Any, grads: Any) -> tuple[Any, Any]:
        out = {key: tx.update(grads, states[key], params[key]) for key, tx in txs.items()}
        new_params = {key: apply(params[key], updates) for key, (updates, _) in out.items()}
        return new_params, {key: state for key, (_, state) in out.items()}

    trained = {key: params for key in txs}
    states = {key: tx.init(params) for key, tx in txs.items()}
    for k in range(STEPS):
        trained, states = step(trained, states, layout_grads(params, k))
    per_leaf, packed = trained["per_leaf"], trained["packed"]
    per_state, packed_state = states["per_leaf"], states["packed"]
    for node in packed_nodes(packed_state):  # none where no buffer is kept (momentum=0)
        assert [slot is None for slot in node.layout.slots] == [
            name in ("kernel", "steps", "frozen") for name in sorted(params)
        ]
    # The params moved, and both layouts moved them the same way: XLA may fuse
    # a multiply and an add into one rounding in either layout's loop and not
    # in the other's, one ulp per step at most.
    assert not np.array_equal(np.asarray(per_leaf["bias"]), np.asarray(params["bias"]))
    assert _ulps(packed, per_leaf) <= STEPS, row.id
    # Every field of every stage reads the same in both layouts.
    chain = not hasattr(per_state, "_fields")
    stages, per_stages = (packed_state, per_state) if chain else ((packed_state,), (per_state,))
    for stage, per_stage in zip(stages, per_stages, strict=True):
        for field in per_stage._fields:
            got, expected = getattr(stage, field), getattr(per_stage, field)
            chex.assert_trees_all_equal_structs(got, expected)
            assert _ulps(got, expected) <= STEPS, (row.id, field)


def test_masks_and_partitions_see_the_real_params() -> None:
    params = layout_params(complex_params=False)
    seen: list[int] = []

    def matrices(tree: Any) -> Any:
        seen.extend(x.ndim for x in jax.tree.leaves(tree))
        return jax.tree.map(lambda x: x.ndim > 1, tree)

    trained = {k: v for k, v in params.items() if k not in ("steps", "frozen")}
    labels = jax.tree.map(lambda x: "qhm" if x.ndim == 1 else "nesterov", trained)

    def wrapped(layout: str) -> optax.GradientTransformation:
        return optax.chain(
            optax.masked(
                momentum_jax.momentum(0.05, 0.9, weight_decay=0.1, layout=layout), matrices
            ),
            optax.multi_transform(
                {
                    "qhm": momentum_jax.qhm(0.05, 0.9, layout=layout),
                    "nesterov": momentum_jax.nesterov(0.05, 0.8, layout=layout),
                },
                labels,
            ),
        )

    per_leaf, _ = _run(wrapped("per_leaf"), trained)
    packed, state = _run(wrapped("packed"), trained)
    assert len(packed_nodes(state)) == 3
    assert 2 in seen  # the mask saw the (2, 3) and (257, 256) kernels as matrices
    assert _ulps(packed, per_leaf) <= 2 * STEPS


def test_default_threshold_packs_biases_but_not_kernels() -> None:
    params = {"kernel": jnp.zeros((768, 768)), "bias": jnp.zeros(768), "norm": jnp.zeros(3072)}
    params |= {"edge": jnp.zeros((256, 256)), "over": jnp.zeros(2**16 + 1)}  # 2**16: packed
    layout = momentum_jax.momentum(0.1, layout="packed").init(params).layout
    # bias, edge, kernel, norm, over
    assert [slot is None for slot in layout.slots] == [False, False, True, False, True]
    assert layout.groups == (("float32", 768 + 2**16 + 3072),)


def test_layout_is_static_hashable_and_a_plain_named_tuple() -> None:
    params = layout_params()
    state = momentum_jax.momentum(0.1, layout="packed").init(params)
    other = momentum_jax.momentum(0.1, layout="packed").init(jax.tree.map(jnp.zeros_like, params))
    assert state.layout == other.layout
    assert hash(state.layout) == hash(other.layout)
    assert jax.tree.leaves(state.layout) == []
    # bias (7), scale (6), scalar (1) and the empty array share the float32 pack.
    assert dict(state.layout.groups) == {"float32": 7 + 6 + 1, "bfloat16": 5, "complex64": 3}


def test_errors_in_the_packed_layout_name_the_params_own_path() -> None:
    tx = momentum_jax.momentum(0.1, layout="packed")
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    state = tx.init(params)
    with pytest.raises(
        TypeError,
        match=r"the gradient at \['b'\] is bfloat16, its param float32; cast it, or use layout='per_leaf'\.",
    ):
        tx.update({"a": jnp.ones(3), "b": jnp.ones((2, 2), jnp.bfloat16)}, state)
    with pytest.raises(
        ValueError, match=r"momentum_jax.momentum: the gradient at \['a'\] has shape \(4,\)"
    ):
        tx.update({"a": jnp.ones(4), "b": jnp.ones((2, 2))}, state)
    with pytest.raises(
        ValueError,
        match=r"the gradients do not match the state's params",
    ):
        tx.update({"a": jnp.ones(3)}, state)
    with pytest.raises(
        ValueError, match=r"momentum_jax.momentum: the gradient at \['a'\] is None, not an array\.$"
    ):
        tx.update({"a": None, "b": jnp.ones((2, 2))}, state)
    with pytest.raises(TypeError, match=r"nesterov: the gradient at \['b'\] is int32"):
        momentum_jax.nesterov(0.1, layout="packed").update(
            {"a": jnp.ones(3), "b": jnp.ones((2, 2), jnp.int32)}, state
        )
    with pytest.raises(TypeError, match=r"momentum_jax.qhm: the param at \['c'\] is complex"):
        momentum_jax.qhm(0.1, accumulator_dtype=jnp.float32, layout="packed").init(
            {"c": jnp.zeros(2, jnp.complex64)}
        )
    with pytest.raises(TypeError, match=r"expected a PackedState from this transform's init"):
        tx.update(jax.tree.map(jnp.ones_like, params), momentum_jax.momentum(0.1).init(params))


def test_a_vmapped_packed_state_reads_and_moves_outside_vmap() -> None:
    members = 3
    params = {"w": jnp.ones((members, 4)), "b": jnp.arange(members * 2.0).reshape(members, 2)}
    grads = jax.tree.map(lambda p: jnp.sin(p) + 1.0, params)
    for layout in ("packed", "per_leaf"):
        tx = momentum_jax.scale_by_aggmo((0.5, 0.9), layout=layout)
        state = jax.vmap(tx.init)(params)
        for _ in range(2):
            _, state = jax.vmap(tx.update)(grads, state, params)
        if layout == "packed":
            packed, packed_tx = state, tx
    chex.assert_trees_all_close(packed.buffers, state.buffers, rtol=1e-6)
    assert packed.buffers[1]["w"].shape == (members, 4)
    moved = jax.vmap(lambda s, p: momentum_jax.restore_state(s, tx, p))(packed, params)
    chex.assert_trees_all_equal(moved.buffers, packed.buffers)
    back = jax.vmap(lambda s, p: momentum_jax.restore_state(s, packed_tx, p))(moved, params)
    chex.assert_trees_all_equal(back, packed)


def test_numpy_float64_inputs_with_x64_off_work_in_both_layouts() -> None:
    params = {"w": np.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": np.zeros(3)}
    grads = [jax.tree.map(lambda p, k=k: np.cos(p + k), params) for k in range(3)]
    results = []
    for layout in ("per_leaf", "packed"):
        tx = momentum_jax.nesterov(0.1, 0.9, layout=layout)
        state = tx.init(params)
        out = []
        for g in grads:
            updates, state = tx.update(g, state, params)
            out.append(updates)
        results.append(out)
    assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(results[1]))
    chex.assert_trees_all_close(results[1], results[0], rtol=1e-6)


def test_tree_map_params_maps_per_array_states_and_names_the_fix_for_packed_ones() -> None:
    params = layout_params(complex_params=False)
    tx = momentum_jax.momentum(0.1)
    state = tx.init(params)
    doubled = optax.tree_utils.tree_map_params(tx, lambda v: v + 2.0, state)
    np.testing.assert_array_equal(doubled.velocity["bias"], np.full(7, 2.0))
    packed = momentum_jax.momentum(0.1, layout="packed")
    with pytest.raises(
        TypeError,
        match=r"tree_map_params cannot map a packed state; use layout='per_leaf'\.",
    ):
        optax.tree_utils.tree_map_params(packed, lambda v: v, packed.init(params))
    # tree_get finds the stored field: (rest, packs) in the packed layout.
    rest, packs = optax.tree_utils.tree_get(packed.init(params), "velocity")
    assert rest["bias"] is None
    assert set(packs) == {"float32", "bfloat16"}
