"""The contract table (tests/_table.py), crossed with every property of the contract.

Every property below runs over every row of the table, in both state layouts
(optax's optimizers-under-test pattern):

* jit equals eager over several steps of a quadratic with a non-diagonal
  Hessian (so the gradients change every step), and the jitted step is traced
  once; eager ``init`` and jitted ``update`` under ``optax.inject_hyperparams``
  follow the same trajectory, with all numeric hyperparameters injected at
  once and with each one injected alone (all in one compiled program, which
  donates its inputs: a later ``init`` returns no deleted array);
* where optax has a numerically equivalent optimizer, the row follows its
  trajectory; where the row is a composition of blocks (optax's or our own),
  it is bit-identical to that composition written out;
* the state's structure, shapes and dtypes survive ``lax.scan`` and ``lax.cond``
  carries for float16, bfloat16, float32, complex64 and weakly typed params, and
  float64 under x64 (checked while tracing; compiled and run for each public
  transform's first row, in both layouts); updates come back in the gradients' dtypes;
* ``jax.eval_shape(tx.init, params)`` matches ``tx.init(params)``;
* bfloat16 and float16 scalar hyperparameters are accepted, checked in the
  precision the arithmetic uses;
* ``None`` leaves pass through, and integer or boolean leaves whose gradient is
  ``None`` get no buffer and a ``None`` update (as Equinox models need).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import momentum_jax
from momentum_jax import compat
from tests import _jax_compat, _problems
from tests._table import COMPOSED, FAST, REFERENCED, ROWS, Row, over

STEPS = 4

rows = over(ROWS)


def test_the_table_covers_every_public_transform() -> None:
    """A new export must get a row (its id starts with the export's name)."""
    public = [
        name
        for name in momentum_jax.__all__
        if callable(fn := getattr(momentum_jax, name))
        and "GradientTransformation" in str(inspect.signature(fn).return_annotation)
    ]
    assert {"momentum", "nesterov", "scale_by_momentum", "qhm", "aggmo"} <= set(public)
    public += [name for name in compat.__all__ if not name[0].isupper()]  # not the state class
    for name in public:
        assert any(row.id == name or row.id.startswith(f"{name}_") for row in ROWS), name
    for row in ROWS:
        assert row.hyper, f"{row.id}: nothing for inject_hyperparams to inject"


def _run(
    init: Callable[[Any], Any], step: Callable[[Any, Any], tuple[Any, Any]], steps: int = STEPS
) -> list[Any]:
    params = _problems.initial_params()
    state = init(params)
    out = []
    for _ in range(steps):
        params, state = step(params, state)
        out.append(params)
    return out


@rows
def test_jit_and_inject_hyperparams_follow_the_eager_trajectory(row: Row) -> None:
    """The plain transform jitted; every numeric hyperparameter injected at once (init eager,
    update jitted: what NNX and Equinox users do); and each injected alone, one traced
    hyperparameter among concrete ones (zeros too): all follow the eager trajectory.

    One jitted program steps all of them, traced once: nothing recompiles on the second step.
    It donates params and states, which deletes the arrays it is given, so ``init`` must
    build new ones on every call, never hand out an array it keeps (a shared step counter).
    """
    tx = row.build()
    variants = {"jit": tx, "all injected": row.injected()}
    for name in row.hyper:
        others = tuple(p for p in inspect.signature(row.factory).parameters if p != name)
        inject = optax.inject_hyperparams(row.factory, static_args=others)
        variants[f"{name} injected alone"] = inject(**row.hyper, **row.static)
    params = {key: jax.tree.map(jnp.copy, _problems.initial_params()) for key in variants}
    states = {key: variant.init(params[key]) for key, variant in variants.items()}
    # Defaults that are numbers (weight_decay=0.0, say) are injected too.
    assert set(row.hyper) <= set(states["all injected"].hyperparams)
    for name in row.hyper:
        assert set(states[f"{name} injected alone"].hyperparams) == {name}
    steps = {key: _problems.step_fn(variant) for key, variant in variants.items()}
    traces = []

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params: Any, states: Any) -> tuple[Any, Any]:
        traces.append(None)
        out = {key: steps[key](params[key], states[key]) for key in steps}
        return {key: p for key, (p, _) in out.items()}, {key: s for key, (_, s) in out.items()}

    got: dict[str, list[Any]] = {key: [] for key in variants}
    for _ in range(STEPS):
        params, states = step(params, states)
        for key in variants:
            got[key].append(jax.device_get(params[key]))
    assert len(traces) == 1, f"{row.id}: the jitted step was traced {len(traces)} times"
    for key, variant in variants.items():
        deleted = [
            x for x in jax.tree.leaves(variant.init(_problems.initial_params())) if x.is_deleted()
        ]
        assert not deleted, f"{row.id}, {key}: init returned {len(deleted)} deleted arrays"
    eager = _run(tx.init, _problems.step_fn(tx))
    for key, trajectory in got.items():
        try:
            chex.assert_trees_all_close(trajectory, eager, rtol=1e-5, atol=1e-7)
        except AssertionError as error:
            raise AssertionError(f"{row.id}, {key}: {error}") from None
    # The run is long enough to move the params visibly.
    assert float(jnp.abs(eager[-1]["w"] - _problems.W0).max()) > 1e-2


@over(REFERENCED)
def test_follows_the_optax_equivalent(row: Row) -> None:
    assert row.reference is not None
    reference = row.reference()
    expected = _run(reference.init, _problems.step_fn(reference))
    tx = row.build()
    got = _run(tx.init, _problems.step_fn(tx))
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-7)


@over(COMPOSED)
def test_is_bit_identical_to_its_composition_of_blocks(row: Row) -> None:
    """Each reuse of a block is exact: the same bits over 8 steps of the quadratic."""
    assert row.blocks is not None
    expected = _problems.trajectory(row.blocks(), 8)
    got = _problems.trajectory(row.build(), 8)
    for step, (a, b) in enumerate(zip(got, expected, strict=True)):
        for key in b:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{key!r}, step {step + 1}")


def _mixed_params(row: Row, x64: bool) -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    params = {
        "f32": jnp.asarray(rng.standard_normal(3), jnp.float32),
        # A weakly typed scalar, as jnp.asarray(0.5) gives (float64 under x64).
        "weak": jnp.asarray(0.5),
        # More than 2**16 elements (kept apart in the packed layout), and empty.
        "big": jnp.asarray(rng.standard_normal(_problems.BIG), jnp.float32),
        "empty": jnp.zeros((0, 3), jnp.float32),
    }
    if x64:
        # Large enough for an int8 buffer, whose scales stay float32.
        params["f64"] = jnp.asarray(rng.standard_normal((64, 64)), jnp.float64)
        return params
    params["f16"] = jnp.asarray(rng.standard_normal(3), jnp.float16)
    params["bf16"] = jnp.asarray(rng.standard_normal((2, 2)), jnp.bfloat16)
    if row.complex_params:
        params["c64"] = jnp.asarray(
            rng.standard_normal(2) + 1j * rng.standard_normal(2), "complex64"
        )
    return params


def _gradient_sequence(params: Any, steps: int) -> Any:
    """``steps`` different gradients per leaf, stacked on a leading axis for scan."""
    rng = np.random.default_rng(1)

    def draw(p: jax.Array) -> jax.Array:
        g = rng.standard_normal((steps, *p.shape))
        if jnp.issubdtype(p.dtype, jnp.complexfloating):
            g = g + 1j * rng.standard_normal((steps, *p.shape))
        return jnp.asarray(g, p.dtype)

    return jax.tree.map(draw, params)


@rows
@pytest.mark.parametrize("x64", [False, True], ids=["x32", "x64"])
def test_state_is_a_stable_scan_and_cond_carry_for_every_dtype(row: Row, x64: bool) -> None:
    with _jax_compat.enable_x64(x64):
        tx = row.build()
        params = _mixed_params(row, x64)
        state = tx.init(params)
        grads = _gradient_sequence(params, STEPS)

        def body(carry: Any, g: Any) -> tuple[Any, None]:
            params, state = carry
            updates, new_state = tx.update(g, state, params)
            expected = _problems.updates_like(g, state, row.id)
            chex.assert_trees_all_equal_shapes_and_dtypes(updates, expected)
            new_params = optax.apply_updates(params, updates)
            chex.assert_trees_all_equal_shapes_and_dtypes(new_params, params)
            # lax.cond needs identical structure, shapes and dtypes on both branches.
            finite = jnp.all(jnp.asarray([jnp.isfinite(u).all() for u in jax.tree.leaves(updates)]))
            carry = jax.lax.cond(finite, lambda: (new_params, new_state), lambda: (params, state))
            return carry, None

        run = jax.jit(lambda c, gs: jax.lax.scan(body, c, gs))
        # scan and cond check their carries and branches while tracing, and so does the
        # body: under x64, only each public transform's first row (in both layouts) also
        # compiles and runs.
        compiled = not x64 or row.id.removesuffix("[packed]") in FAST
        (params_n, state_n), _ = (run if compiled else functools.partial(jax.eval_shape, run))(
            (params, state), grads
        )
        chex.assert_trees_all_equal_structs(state_n, state)
        chex.assert_trees_all_equal_shapes_and_dtypes(state_n, state)
        weak = [_jax_compat.is_weakly_typed(leaf) for leaf in jax.tree.leaves(state)]
        assert [_jax_compat.is_weakly_typed(leaf) for leaf in jax.tree.leaves(state_n)] == weak
        if compiled:
            chex.assert_tree_all_finite(params_n)
            assert not np.array_equal(np.asarray(params_n["f32"]), np.asarray(params["f32"]))


@rows
def test_eval_shape_of_init_matches_init(row: Row) -> None:
    tx = row.build()
    params = _mixed_params(row, x64=False)
    abstract = jax.eval_shape(tx.init, params)
    concrete = tx.init(params)
    chex.assert_trees_all_equal_structs(abstract, concrete)
    chex.assert_trees_all_equal_shapes_and_dtypes(abstract, concrete)


@rows
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
def test_low_precision_scalar_hyperparameters_are_accepted(row: Row, dtype: Any) -> None:
    """A bfloat16 scalar is a real number, although numpy's dtype kind for it is 'V'."""
    low = {name: jnp.asarray(value, dtype) for name, value in row.hyper.items()}
    rounded = {name: float(value) for name, value in low.items()}
    if rounded.get("momentum", 0.0) >= 1.0:
        # 0.999 is 1.0 in bfloat16: checked in the dtype the arithmetic uses.
        with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
            row.build(**low)
        return
    tx = row.build(**low)
    expected_tx = row.build(**rounded)
    got = _run(tx.init, _problems.step_fn(tx), steps=3)
    expected = _run(expected_tx.init, _problems.step_fn(expected_tx), steps=3)
    # Products of two hyperparameters (lr * weight_decay, 1 - dampening) may
    # round in the hyperparameters' own precision.
    eps = float(jnp.finfo(dtype).eps)
    chex.assert_trees_all_close(got, expected, rtol=eps, atol=eps * 1e-3)
    # inject_hyperparams casts every hyperparameter to the params' dtype.
    injected = row.injected()
    params = {"w": jnp.asarray([0.5, -1.0, 2.0], dtype)}
    state = injected.init(params)
    # Eager: the jitted update under injection is test_inject_hyperparams_*.
    update = injected.update
    for k in range(2):
        grads = {"w": jnp.asarray([1.0, -0.5 * k, 0.25 + k], dtype)}
        updates, new_state = update(grads, state, params)
        expected = _problems.updates_like(grads, state.inner_state, row.id)
        chex.assert_trees_all_equal_shapes_and_dtypes(updates, expected)
        chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
        params, state = optax.apply_updates(params, updates), new_state


@rows
def test_none_leaves_pass_through(row: Row) -> None:
    tx = row.build()
    trained = {"w": jnp.asarray([0.5, -1.0, 2.0])}
    params = {**trained, "frozen": None}
    state, reference_state = tx.init(params), tx.init(trained)
    for k in range(3):
        g = jnp.asarray([1.0, -0.5 * k, 0.25 + k])
        updates, state = tx.update({"w": g, "frozen": None}, state, params)
        expected, reference_state = tx.update({"w": g}, reference_state, trained)
        assert updates["frozen"] is None
        chex.assert_trees_all_close(updates["w"], expected["w"], rtol=1e-6)
        params = optax.apply_updates(params, updates)
        trained = optax.apply_updates(trained, expected)


@rows
def test_integer_and_boolean_leaves_without_gradients_get_no_buffer(row: Row) -> None:
    """As Equinox's ``eqx.filter(model, eqx.is_array)`` and ``filter_grad`` give them."""
    tx = row.build()
    trained = {"w": jnp.asarray([0.5, -1.0, 2.0])}
    params = {**trained, "steps": jnp.arange(5, dtype=jnp.int32), "flag": jnp.asarray(True)}
    state = tx.init(params)
    kinds = {(leaf.shape, leaf.dtype) for leaf in jax.tree.leaves(state)}
    assert ((5,), jnp.dtype(jnp.int32)) not in kinds, f"{row.id}: a buffer for the int leaf"
    assert not any(dtype == jnp.bool_ for _, dtype in kinds), f"{row.id}: a buffer for a bool"
    reference_state = tx.init(trained)
    update = jax.jit(tx.update)
    for k in range(3):
        g = jnp.asarray([1.0, -0.5 * k, 0.25 + k])
        updates, state = update({"w": g, "steps": None, "flag": None}, state, params)
        expected, reference_state = tx.update({"w": g}, reference_state, trained)
        assert updates["steps"] is None
        assert updates["flag"] is None
        chex.assert_trees_all_close(updates["w"], expected["w"], rtol=1e-6)
        # optax.apply_updates has no rule for a None update; Equinox's has.
        params = eqx.apply_updates(params, updates)
        trained = optax.apply_updates(trained, expected)
    chex.assert_trees_all_equal(params["steps"], jnp.arange(5, dtype=jnp.int32))
