"""The packed state layout (``layout="packed"``, ``pack_small_leaves``).

Every row of the contract table is run in both layouts on params that mix
packed arrays (small, several dtypes) with arrays that keep their own buffer
(large, integer, ``None``), and the two must agree to within the rounding of
a fused multiply-add per step; the state must be a stable ``scan`` carry,
``eval_shape`` must give its true structure, and states must move between the
layouts, also through an orbax checkpoint read without a target.
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
from momentum_jax._src import _layout
from tests import _subprocess
from tests.test_contract import ROWS, Row

rows = pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
# The structural properties need one row per public transform (the contract
# table runs all of them on its packed rows); the numbers are checked on all rows.
_FIRST = {row.factory: row for row in reversed(ROWS)}
one_row_per_transform = pytest.mark.parametrize(
    "row", list(_FIRST.values()), ids=[row.id for row in _FIRST.values()]
)
STEPS = 6
# A small max_size keeps the "large" arrays of these tests small.
BIG = (20, 20)


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


def _packed(row: Row) -> optax.GradientTransformation:
    return momentum_jax.pack_small_leaves(row.build(layout="per_leaf"), max_size=100)


@rows
def test_packed_layout_matches_the_per_array_layout(row: Row) -> None:
    params = _params(row.complex_params)
    per_leaf, per_state = _run(row.build(layout="per_leaf"), params)
    packed, packed_state = _run(_packed(row), params)
    assert isinstance(packed_state, momentum_jax.PackedState)
    assert packed_state.layout.num_packed == 5 + row.complex_params  # all small float arrays
    # The params moved, and both layouts moved them the same way: XLA may fuse
    # a multiply and an add into one rounding in either layout's loop and not
    # in the other's, one ulp per step at most.
    assert not np.array_equal(np.asarray(per_leaf["bias"]), np.asarray(params["bias"]))
    assert _ulps(packed, per_leaf) <= STEPS, row.id
    # The packed state holds the per-array state's numbers.
    moved = momentum_jax.restore_state(packed_state, row.build(layout="per_leaf"), params)
    chex.assert_trees_all_equal_structs(moved, per_state)
    assert _ulps(moved, per_state) <= STEPS, row.id


@one_row_per_transform
def test_packed_state_is_a_stable_scan_carry_and_eval_shape_is_exact(row: Row) -> None:
    tx = _packed(row)
    params = _params(row.complex_params)
    state = tx.init(params)
    abstract = jax.eval_shape(tx.init, params)
    chex.assert_trees_all_equal_structs(abstract, state)
    chex.assert_trees_all_equal_shapes_and_dtypes(abstract, state)
    grads = [_grads(params, k) for k in range(3)]
    stacked = jax.tree.map(lambda *g: jnp.stack(g), *grads)

    def body(carry: Any, g: Any) -> tuple[Any, None]:
        params, state = carry
        updates, state = tx.update(g, state, params)
        return (_apply(params, updates), state), None

    (params_n, state_n), _ = jax.jit(lambda c, gs: jax.lax.scan(body, c, gs))(
        (params, state), stacked
    )
    chex.assert_trees_all_equal_structs(state_n, state)
    chex.assert_trees_all_equal_shapes_and_dtypes(state_n, state)
    chex.assert_trees_all_equal_shapes_and_dtypes(params_n, params)


@one_row_per_transform
def test_inject_hyperparams_in_the_packed_layout_equals_plain(row: Row) -> None:
    # inject_hyperparams makes the hyperparameters float32 arrays, which would
    # lift bfloat16 arithmetic to float32 (as they do per array): no bfloat16
    # or complex params here.
    params = _params(complex_params=False)
    del params["half"]
    inject = optax.inject_hyperparams(row.factory, static_args=(*row.static, "layout"))
    injected = inject(**{**row.hyper, **row.static, "layout": "packed"})
    plain, _ = _run(row.build(layout="packed"), params, steps=3)
    got, state = _run(injected, params, steps=3)
    nodes = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, momentum_jax.PackedState))
    assert any(isinstance(node, momentum_jax.PackedState) for node in nodes), row.id
    assert _ulps(got, plain) <= 3, row.id


def test_auto_packs_on_gpu_only_unless_the_environment_says(monkeypatch: Any) -> None:
    params = _params()
    monkeypatch.delenv(_layout.LAYOUT_ENV, raising=False)
    for backend, packs in [("gpu", True), ("cpu", False), ("tpu", False)]:
        monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
        state = momentum_jax.momentum(0.1).init(params)
        assert isinstance(state, momentum_jax.PackedState) is packs, backend
        assert isinstance(
            momentum_jax.momentum(0.1, layout="packed").init(params), momentum_jax.PackedState
        )
        assert isinstance(
            momentum_jax.momentum(0.1, layout="per_leaf").init(params), momentum_jax.MomentumState
        )
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setenv(_layout.LAYOUT_ENV, "per_leaf")
    assert isinstance(momentum_jax.momentum(0.1).init(params), momentum_jax.MomentumState)
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    monkeypatch.setenv(_layout.LAYOUT_ENV, "packed")
    assert isinstance(momentum_jax.qhm(0.1).init(params), momentum_jax.PackedState)
    monkeypatch.setenv(_layout.LAYOUT_ENV, "fused")
    with pytest.raises(ValueError, match=r"MOMENTUM_JAX_LAYOUT='fused'.*'per_leaf'"):
        momentum_jax.momentum(0.1).init(params)


def test_default_threshold_packs_biases_but_not_kernels() -> None:
    params = {"kernel": jnp.zeros((768, 768)), "bias": jnp.zeros(768), "norm": jnp.zeros(3072)}
    layout = momentum_jax.momentum(0.1, layout="packed").init(params).layout
    assert layout.max_size == _layout.DEFAULT_MAX_PACKED_SIZE == 2**16
    assert layout.groups == (("float32", 768 + 3072),)
    assert [slot is None for slot in layout.slots] == [False, True, False]  # bias, kernel, norm


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"layout": "fused"},
            ValueError,
            "layout must be one of 'auto', 'per_leaf', 'packed', got 'fused'",
        ),
        ({"layout": None}, ValueError, "layout must be one of"),
        ({"max_size": -1}, ValueError, "max_size must be >= 0, got -1"),
        ({"max_size": 1.5}, TypeError, "max_size must be a Python int.*float 1.5"),
        ({"max_size": True}, TypeError, "max_size must be a Python int"),
    ],
)
def test_bad_layout_arguments_fail_when_built(
    kwargs: dict[str, Any], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        momentum_jax.pack_small_leaves(optax.sgd(0.1), **kwargs)
    if "layout" in kwargs:
        for build in (momentum_jax.momentum, momentum_jax.qhm, momentum_jax.compat.torch_sgd):
            with pytest.raises(error, match=match):
                build(0.1, layout=kwargs["layout"])


def test_pack_small_leaves_refuses_what_is_not_a_transform() -> None:
    with pytest.raises(TypeError, match=r"inner must be an optax GradientTransformation.*function"):
        momentum_jax.pack_small_leaves(optax.sgd)  # the factory, not a transform


def test_gradients_that_do_not_fit_the_packed_state_are_named() -> None:
    tx = momentum_jax.momentum(0.1, layout="packed")
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    state = tx.init(params)
    with pytest.raises(
        ValueError,
        match=r"gradient at \['b'\] is a bfloat16 array.*float32 array of shape \(2, 2\)"
        r".*layout='per_leaf'",
    ):
        tx.update({"a": jnp.ones(3), "b": jnp.ones((2, 2), jnp.bfloat16)}, state)
    with pytest.raises(ValueError, match=r"gradient at \['a'\] is a float32 array of shape \(4,\)"):
        tx.update({"a": jnp.ones(4), "b": jnp.ones((2, 2))}, state)
    with pytest.raises(
        ValueError, match=r"it has 1 leaves, but the state was packed for params with 2"
    ):
        tx.update({"a": jnp.ones(3)}, state)
    # Leaves pair up by position; a swapped pair is caught by its shapes.
    with pytest.raises(
        ValueError, match=r"gradient at \['a'\] is a float32 array of shape \(2, 2\)"
    ):
        tx.update({"a": jnp.ones((2, 2)), "c": jnp.ones(3)}, state)
    with pytest.raises(ValueError, match=r"gradient at \['a'\] is None"):
        tx.update({"a": None, "b": jnp.ones((2, 2))}, state)


@pytest.mark.parametrize(
    "inner",
    [
        optax.sgd(0.1, momentum=0.9, nesterov=True),
        optax.adam(1e-2),
        optax.adamw(1e-2, weight_decay=0.1),
    ],
    ids=["sgd_nesterov", "adam", "adamw"],
)
def test_pack_small_leaves_wraps_elementwise_optax_transforms(inner: Any) -> None:
    params = _params(complex_params=False)
    trained = {k: v for k, v in params.items() if k not in ("steps", "frozen")}
    expected, _ = _run(inner, trained)
    got, state = _run(momentum_jax.pack_small_leaves(inner, max_size=100), trained)
    assert state.layout.num_packed == 5
    assert _ulps(got, expected) <= 2 * STEPS


def test_checkpoints_move_between_layouts(tmp_path: Any) -> None:
    ocp = pytest.importorskip("orbax.checkpoint")
    params = _params(complex_params=False)
    packed_tx = momentum_jax.aggmo(0.1, (0.0, 0.9), layout="packed")
    per_leaf_tx = momentum_jax.aggmo(0.1, (0.0, 0.9), layout="per_leaf")
    _, state = _run(packed_tx, params, steps=3)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "packed", state)
    checkpointer.wait_until_finished()
    # With a target of the same layout: the same state, layout included.
    same = checkpointer.restore(tmp_path / "packed", packed_tx.init(params))
    assert same.layout == state.layout
    chex.assert_trees_all_equal(same, state)
    # Without a target (another layout, another machine): restore_state moves it.
    raw = checkpointer.restore(tmp_path / "packed")
    moved = momentum_jax.restore_state(raw, per_leaf_tx, params)
    chex.assert_trees_all_equal_structs(moved, per_leaf_tx.init(params))
    back = momentum_jax.restore_state(moved, packed_tx, params)
    chex.assert_trees_all_equal(back, state)
    # pickle keeps the layout too.
    pickled = pickle.loads(pickle.dumps(jax.device_get(state)))
    assert pickled.layout == state.layout
    chex.assert_trees_all_equal(pickled, state)
    # Training goes on from either copy the same way.
    grads = _grads(params, 7)
    packed_updates, _ = packed_tx.update(grads, state, params)
    per_leaf_updates, _ = per_leaf_tx.update(grads, moved, params)
    assert _ulps(packed_updates, per_leaf_updates) <= 1


def test_large_and_explicitly_sharded_arrays_keep_their_sharding() -> None:
    report = _subprocess.run_json(
        ["tests/_layout_worker.py"], devices=8, what="layout sharding worker"
    )
    assert report["devices"] == 8
    # Explicit mesh axes are checked wherever this JAX has them.
    if hasattr(jax.sharding, "AxisType") and hasattr(jax, "set_mesh"):
        assert "explicit_update" in report["cases"]
    for phase, problems in report["cases"].items():
        assert problems == [], f"{phase}: {problems}"


def test_a_packed_state_reads_like_the_per_array_state() -> None:
    params = _params(complex_params=False)
    for build in (momentum_jax.momentum, momentum_jax.scale_by_qhm, momentum_jax.scale_by_aggmo):
        packed = (
            build(0.5, layout="packed")
            if build is momentum_jax.momentum
            else build(layout="packed")
        )
        per_leaf = (
            build(0.5, layout="per_leaf")
            if build is momentum_jax.momentum
            else build(layout="per_leaf")
        )
        _, packed_state = _run(packed, params, steps=2)
        _, per_leaf_state = _run(per_leaf, params, steps=2)
        for field in per_leaf_state._fields:
            got, expected = getattr(packed_state, field), getattr(per_leaf_state, field)
            chex.assert_trees_all_equal_structs(got, expected)
            assert _ulps(got, expected) <= 2
    with pytest.raises(AttributeError):
        _ = packed_state.hyperparams


def test_layout_is_static_and_hashable() -> None:
    params = _params()
    a = _layout.Layout.of(params, 100)
    b = _layout.Layout.of(jax.tree.map(jnp.zeros_like, params), 100)
    assert a == b
    assert hash(a) == hash(b)
    assert a is not b
    assert jax.tree.leaves(a) == []
    assert a != _layout.Layout.of(params, 10)
    # bias (7), scale (6), scalar (1) and the empty array share the float32 pack.
    assert dict(a.groups) == {"float32": 7 + 6 + 1, "bfloat16": 5, "complex64": 3}
    assert "6 of 9 arrays packed" in repr(a)
