"""State layouts: one default everywhere, and the opt-in packed layout.

The state's structure depends on the transform's arguments and the params
alone, never on the backend or the environment. Every row of the contract
table is run in both layouts on params that mix packed arrays (small, several
dtypes) with arrays that keep their own buffer (large, integer, ``None``): the
numbers agree (to the rounding of a fused multiply-add XLA may form in one
layout's loop and not the other's), the state reads the same, and it survives
``scan``, ``eval_shape``, ``vmap``, Flax serialization, pickle and orbax. Moving
states (``restore_state``) is tested in ``tests/test_restore.py``.
"""

from __future__ import annotations

import pickle
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import momentum_jax
from tests import _subprocess
from tests.test_contract import ROWS, Row

pytestmark = pytest.mark.slow  # the packed layout, with an 8-device subprocess

BASE_ROWS = [row for row in ROWS if "layout" not in row.static]
rows = pytest.mark.parametrize("row", BASE_ROWS, ids=[row.id for row in BASE_ROWS])
# Stochastic rounding draws its bits by position in the pack, so the layouts agree in
# distribution only (tests/test_rounding.py checks the packed layout on its own).
EXACT_ROWS = [row for row in BASE_ROWS if "stochastic" not in row.id]
exact_rows = pytest.mark.parametrize("row", EXACT_ROWS, ids=[row.id for row in EXACT_ROWS])
# The structural properties need one row per public transform (the contract
# table runs all of them on its packed rows); the numbers are checked on all rows.
_FIRST = {row.factory: row for row in reversed(BASE_ROWS)}
one_row_per_transform = pytest.mark.parametrize(
    "row", list(_FIRST.values()), ids=[row.id for row in _FIRST.values()]
)
STEPS = 6
# More than 2**16 elements: this array keeps its own buffer.
BIG = (257, 256)


def _params(complex_params: bool = True) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    params: dict[str, Any] = {
        "kernel": jnp.asarray(rng.standard_normal(BIG), jnp.float32),
        "bias": jnp.asarray(rng.standard_normal(7), jnp.float32),
        "scale": jnp.asarray(rng.standard_normal((2, 3)), jnp.float32),
        "scalar": jnp.asarray(0.5, jnp.float32),
        "half": jnp.asarray(rng.standard_normal(5), jnp.bfloat16),
        "empty": jnp.zeros((0, 3), jnp.float32),
        "steps": jnp.arange(4, dtype=jnp.int32),
        "frozen": None,
    }
    if complex_params:
        params["c64"] = jnp.asarray(
            rng.standard_normal(3) + 1j * rng.standard_normal(3), "complex64"
        )
    return params


def _grads(params: Any, k: int) -> Any:
    """A different, coordinate-dependent gradient at every step."""

    def one(p: Any) -> Any:
        if p is None or not jnp.issubdtype(p.dtype, jnp.inexact):
            return None
        ramp = jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape)
        return (jnp.sin(ramp * (k + 1.3)) + 0.1 * k).astype(p.dtype)

    return jax.tree.map(one, params, is_leaf=lambda x: x is None)


def _apply(params: Any, updates: Any) -> Any:
    return jax.tree.map(
        lambda p, u: p if u is None else (p + u).astype(p.dtype),
        params,
        updates,
        is_leaf=lambda x: x is None,
    )


def _run(tx: optax.GradientTransformation, params: Any, steps: int = STEPS) -> tuple[Any, Any]:
    state = tx.init(params)
    update = jax.jit(tx.update)
    for k in range(steps):
        updates, state = update(_grads(params, k), state, params)
        params = _apply(params, updates)
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


def _packed_nodes(state: Any) -> list[Any]:
    nodes = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, momentum_jax.PackedState))
    return [node for node in nodes if isinstance(node, momentum_jax.PackedState)]


@exact_rows
def test_packed_layout_matches_the_per_array_layout(row: Row) -> None:
    params = _params(row.complex_params)
    per_leaf, per_state = _run(row.build(layout="per_leaf"), params)
    packed, packed_state = _run(row.build(layout="packed"), params)
    for node in _packed_nodes(packed_state):  # none where no buffer is kept (momentum=0)
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


@pytest.mark.parametrize("backend", ["cpu", "gpu", "tpu"])
def test_the_default_state_structure_never_depends_on_backend_or_environment(
    backend: str, monkeypatch: Any
) -> None:
    params = _params(complex_params=False)
    expected = {row.id: jax.eval_shape(row.build().init, params) for row in _FIRST.values()}
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    monkeypatch.setenv("MOMENTUM_JAX_LAYOUT", "packed")
    for row in _FIRST.values():
        state = jax.eval_shape(row.build().init, params)
        chex.assert_trees_all_equal_structs(state, expected[row.id])
        chex.assert_trees_all_equal_shapes_and_dtypes(state, expected[row.id])
        assert not _packed_nodes(state), row.id


def test_there_is_no_wrapper_for_arbitrary_transforms() -> None:
    # Packing is offered only where the update is elementwise by construction.
    assert not hasattr(momentum_jax, "pack_small_leaves")
    for build in (momentum_jax.momentum, momentum_jax.qhm, momentum_jax.compat.torch_sgd):
        for layout in ("auto", "fused", None):
            with pytest.raises(ValueError, match=r"layout must be 'per_leaf' .* or 'packed'"):
                build(0.1, layout=layout)


def test_masks_and_partitions_see_the_real_params() -> None:
    params = _params(complex_params=False)
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
    assert len(_packed_nodes(state)) == 3
    assert 2 in seen  # the mask saw the (2, 3) and (257, 256) kernels as matrices
    assert _ulps(packed, per_leaf) <= 2 * STEPS


def test_packed_state_is_a_stable_scan_carry_and_eval_shape_is_exact() -> None:
    for row in _FIRST.values():
        tx = row.build(layout="packed")
        params = _params(row.complex_params)
        state = tx.init(params)
        abstract = jax.eval_shape(tx.init, params)
        chex.assert_trees_all_equal_structs(abstract, state)
        chex.assert_trees_all_equal_shapes_and_dtypes(abstract, state)
        grads = [_grads(params, k) for k in range(3)]
        stacked = jax.tree.map(lambda *g: jnp.stack(g), *grads)

        def body(carry: Any, g: Any, tx: Any = tx) -> tuple[Any, None]:
            params, state = carry
            updates, state = tx.update(g, state, params)
            return (_apply(params, updates), state), None

        (params_n, state_n), _ = jax.jit(lambda c, gs, body=body: jax.lax.scan(body, c, gs))(
            (params, state), stacked
        )
        chex.assert_trees_all_equal_structs(state_n, state)
        chex.assert_trees_all_equal_shapes_and_dtypes(state_n, state)
        chex.assert_trees_all_equal_shapes_and_dtypes(params_n, params)


def test_default_threshold_packs_biases_but_not_kernels() -> None:
    params = {"kernel": jnp.zeros((768, 768)), "bias": jnp.zeros(768), "norm": jnp.zeros(3072)}
    layout = momentum_jax.momentum(0.1, layout="packed").init(params).layout
    assert layout.groups == (("float32", 768 + 3072),)
    assert [slot is None for slot in layout.slots] == [False, True, False]  # bias, kernel, norm
    assert repr(layout) == "Layout(2 of 3 arrays packed into {float32: 3840})"


def test_layout_is_static_hashable_and_a_plain_named_tuple() -> None:
    params = _params()
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
    with pytest.raises(TypeError, match=r"gradient at \['b'\] has dtype bfloat16.*float32"):
        tx.update({"a": jnp.ones(3), "b": jnp.ones((2, 2), jnp.bfloat16)}, state)
    with pytest.raises(
        ValueError, match=r"momentum_jax.momentum: the gradient at \['a'\] has shape \(4,\)"
    ):
        tx.update({"a": jnp.ones(4), "b": jnp.ones((2, 2))}, state)
    with pytest.raises(ValueError, match=r"gradient tree does not match"):
        tx.update({"a": jnp.ones(3)}, state)
    with pytest.raises(ValueError, match=r"gradient tree does not match"):
        tx.update({"a": None, "b": jnp.ones((2, 2))}, state)
    with pytest.raises(TypeError, match=r"nesterov: the gradient at \['b'\] has dtype int32"):
        momentum_jax.nesterov(0.1, layout="packed").update(
            {"a": jnp.ones(3), "b": jnp.ones((2, 2), jnp.int32)}, state
        )
    with pytest.raises(TypeError, match=r"momentum_jax.qhm: the param at \['c'\] is complex"):
        momentum_jax.qhm(0.1, accumulator_dtype=jnp.float32, layout="packed").init(
            {"c": jnp.zeros(2, jnp.complex64)}
        )
    with pytest.raises(
        TypeError, match=r"expected the state returned by this transform's init, a PackedState"
    ):
        tx.update(jax.tree.map(jnp.ones_like, params), momentum_jax.momentum(0.1).init(params))


def test_flax_serialization_and_pickle_keep_a_packed_state() -> None:
    serialization = pytest.importorskip("flax.serialization")
    params = _params(complex_params=False)
    for row in _FIRST.values():
        tx = row.build(layout="packed")
        _, state = _run(tx, params, steps=2)
        restored = serialization.from_bytes(tx.init(params), serialization.to_bytes(state))
        chex.assert_trees_all_equal(restored, state)
        pickled = pickle.loads(pickle.dumps(jax.device_get(state)))
        chex.assert_trees_all_equal(pickled, state)
        for node, original in zip(_packed_nodes(pickled), _packed_nodes(state), strict=True):
            assert node.layout == original.layout


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
    params = _params(complex_params=False)
    tx = momentum_jax.momentum(0.1)
    state = tx.init(params)
    doubled = optax.tree_utils.tree_map_params(tx, lambda v: v + 2.0, state)
    np.testing.assert_array_equal(doubled.velocity["bias"], np.full(7, 2.0))
    packed = momentum_jax.momentum(0.1, layout="packed")
    with pytest.raises(
        TypeError,
        match=r"tree_map_params cannot map a state in the packed layout.*layout='per_leaf'",
    ):
        optax.tree_utils.tree_map_params(packed, lambda v: v, packed.init(params))
    # tree_get finds the stored field: (rest, packs) in the packed layout.
    rest, packs = optax.tree_utils.tree_get(packed.init(params), "velocity")
    assert rest["bias"] is None
    assert set(packs) == {"float32", "bfloat16"}


def test_large_and_explicitly_sharded_arrays_keep_their_sharding() -> None:
    report = _subprocess.run_json(
        ["tests/_layout_worker.py"], devices=8, what="layout sharding worker"
    )
    assert report["devices"] == 8
    # Explicit mesh axes are checked wherever this JAX has them.
    if hasattr(jax.sharding, "AxisType") and hasattr(jax, "set_mesh"):
        assert "explicit_update" in report["cases"]
        assert "explicit_checkpoint_on_host" in report["cases"]
    for phase in ("update", "no_collectives", "restored_per_leaf", "restored_packed"):
        assert phase in report["cases"]
    for phase, problems in report["cases"].items():
        assert problems == [], f"{phase}: {problems}"
