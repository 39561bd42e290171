"""Bad input, argument by argument, and what the transforms do with it.

Hyperparameters are checked when the transform is built (for concrete values):
a ``ValueError`` or ``TypeError`` names the function the user called, the
argument, the value and the valid range, in the precision the arithmetic uses.
Traced values are never branched on. Then what ``update`` refuses or carries:
schedules' return values, gradients (tree, shape, dtype, NaN/Inf), params and
the state. Every public transform is exercised, presets included.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import momentum_jax
from momentum_jax import aggmo, compat, qhm, schedules
from tests import _jax_compat, _problems
from tests._problems import (
    assert_trees_equal,
    counts,
    fixed_grads,
    jitted_step,
    small_params,
    with_bad_value,
)
from tests._table import BUFFER_TRANSFORMS, STATEFUL, STATELESS, TRANSFORMS, Row, ids, rows_named

# Rows of the contract table: STATEFUL keep a buffer, STATELESS are the presets
# at momentum=0, which keep none (as PyTorch and Keras do).
EVERY = STATEFUL + STATELESS
# The hyperparameters that accept a schedule.
SCHEDULABLE = ("learning_rate", "lr", "momentum", "nu")


# --- hyperparameters, when the transform is built ----------------------------


BAD_VALUES = [
    # (factory, kwargs, exception, message pattern naming argument, value and range)
    (
        momentum_jax.momentum,
        {"learning_rate": 0.1, "momentum": 1.0},
        ValueError,
        r"momentum must be in \[0, 1\), got momentum=1\.0",
    ),
    (
        momentum_jax.momentum,
        {"learning_rate": 0.1, "momentum": -0.1},
        ValueError,
        r"momentum must be in \[0, 1\), got momentum=-0\.1",
    ),
    (
        momentum_jax.momentum,
        {"learning_rate": 0.1, "momentum": float("nan")},
        ValueError,
        r"momentum must be in \[0, 1\), got momentum=nan",
    ),
    (
        momentum_jax.momentum,
        {"learning_rate": -0.1},
        ValueError,
        r"learning_rate must be in \[0, inf\), got learning_rate=-0\.1",
    ),
    (
        momentum_jax.momentum,
        {"learning_rate": jnp.asarray(-1.0)},
        ValueError,
        r"learning_rate must be in \[0, inf\), got learning_rate=Array\(-1",
    ),
    (
        momentum_jax.momentum,
        {"learning_rate": 0.1, "weight_decay": -1e-4},
        ValueError,
        r"weight_decay must be in \[0, inf\), got weight_decay=-0\.0001",
    ),
    (
        momentum_jax.nesterov,
        {"learning_rate": 0.1, "momentum": 1.5},
        ValueError,
        r"momentum_jax.nesterov: momentum must be in \[0, 1\), got momentum=1\.5",
    ),
    # NumPy float64 values are checked in float32 (the arithmetic's dtype without x64).
    (
        momentum_jax.momentum,
        {"learning_rate": 0.1, "momentum": np.float64(1 - 1e-10)},
        ValueError,
        r"momentum must be in \[0, 1\), got momentum=(np.float64\()?0.9999999999\)?\.",
    ),
    (
        momentum_jax.momentum,
        {"learning_rate": np.float64(1e39)},
        ValueError,
        r"learning_rate must be in \[0, inf\), got learning_rate=(np\.float64\()?1e\+39\)?\.",
    ),
    (
        momentum_jax.scale_by_momentum,
        {"momentum": 0.9, "dampening": 1.0},
        ValueError,
        r"dampening must be in \[0, 1\), got dampening=1\.0",
    ),
    (
        momentum_jax.scale_by_momentum,
        {"momentum": 0.9, "dampening": -0.5},
        ValueError,
        r"dampening must be in \[0, 1\), got dampening=-0\.5",
    ),
    (
        momentum_jax.scale_by_momentum,
        {"momentum": 0.9, "nesterov": True, "dampening": 0.1},
        ValueError,
        r"nesterov=True needs dampening=0, got 0\.1\.",
    ),
    (
        momentum_jax.scale_by_momentum,
        {"momentum": 2.0},
        ValueError,
        r"momentum must be in \[0, 1\), got momentum=2\.0",
    ),
    (compat.torch_sgd, {"lr": -0.01}, ValueError, r"lr must be in \[0, inf\), got lr=-0\.01"),
    (
        compat.torch_sgd,
        {"lr": 0.1, "momentum": 0.0, "nesterov": True},
        ValueError,
        r"nesterov=True needs momentum > 0 and dampening=0, got momentum=0\.0, dampening=0\.0\.",
    ),
    (
        compat.torch_sgd,
        {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True},
        ValueError,
        r"nesterov=True needs momentum > 0 and dampening=0, got momentum=0\.9, dampening=0\.1\.",
    ),
    (
        compat.torch_sgd,
        {"lr": 0.1, "weight_decay": -1.0},
        ValueError,
        r"weight_decay must be in \[0, inf\), got weight_decay=-1\.0",
    ),
    (
        compat.keras_sgd,
        {"learning_rate": 0.1, "momentum": 1.2},
        ValueError,
        r"momentum must be in \[0, 1\), got momentum=1\.2",
    ),
    (
        compat.keras_sgd,
        {"learning_rate": 0.1, "weight_decay": -0.1},
        ValueError,
        r"weight_decay must be in \[0, inf\), got weight_decay=-0\.1",
    ),
    (
        compat.tf1_momentum,
        {"learning_rate": 0.1, "momentum": -0.9},
        ValueError,
        r"momentum must be in \[0, 1\), got momentum=-0\.9",
    ),
    (
        momentum_jax.momentum,
        {"learning_rate": "0.1"},
        TypeError,
        r"learning_rate must be a real number or a schedule, got '0\.1'\.",
    ),
    (
        momentum_jax.momentum,
        {"learning_rate": 0.1, "momentum": True},
        TypeError,
        r"momentum must be a real number or a schedule, got True\.",
    ),
    (
        momentum_jax.momentum,
        {"learning_rate": jnp.ones(3)},
        ValueError,
        r"learning_rate must be a scalar, got shape \(3,\)\.",
    ),
    (
        momentum_jax.momentum,
        {"learning_rate": 0.1, "nesterov": "yes"},
        TypeError,
        r"nesterov must be True or False, got 'yes'\.",
    ),
    (
        momentum_jax.momentum,
        {"learning_rate": 0.1, "accumulator_dtype": jnp.int32},
        TypeError,
        r"accumulator_dtype must be None, a float dtype or jnp\.int8, got <class 'jax\.numpy\.int32'>\.",
    ),
    (
        compat.tf1_momentum,
        {"learning_rate": 0.1, "momentum": 0.9, "use_nesterov": 1},
        TypeError,
        r"use_nesterov must be True or False",
    ),
    (
        momentum_jax.momentum,
        {"learning_rate": 0.1, "momentum": 0.9999999999},
        ValueError,
        r"momentum must be in \[0, 1\), got momentum=0\.9999999999\.",
    ),
    (
        momentum_jax.momentum,
        {"learning_rate": 1e39},
        ValueError,
        r"learning_rate must be in \[0, inf\), got learning_rate=1e\+39\.",
    ),
    (compat.torch_sgd, {"lr": float("inf")}, ValueError, r"lr must be in \[0, inf\), got lr=inf"),
]


@pytest.mark.parametrize(
    ("factory", "kwargs", "error", "pattern"),
    BAD_VALUES,
    ids=[f"{f.__name__}-{'-'.join(map(str, k))}-{i}" for i, (f, k, _, _) in enumerate(BAD_VALUES)],
)
def test_bad_hyperparameters_raise_at_build_time(
    factory: Callable[..., Any], kwargs: dict[str, Any], error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        factory(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"momentum": 1.0}, ValueError, r"momentum must be in \[0, 1\), got momentum=1\.0"),
        ({"momentum": -0.1}, ValueError, r"momentum must be in \[0, 1\), got momentum=-0\.1"),
        ({"learning_rate": -0.1}, ValueError, r"learning_rate must be in \[0, inf\).*=-0\.1"),
        ({"nu": 1.5}, ValueError, r"nu must be in \[0, 1\], got nu=1\.5"),
        ({"nu": -0.2}, ValueError, r"nu must be in \[0, 1\], got nu=-0\.2"),
        ({"nu": jnp.float32(2.0)}, ValueError, r"nu must be in \[0, 1\], got nu=.*2\."),
        ({"nu": True}, TypeError, r"nu must be a real number or a schedule, got True\.$"),
        (
            {"momentum": "0.9"},
            TypeError,
            r"momentum must be a real number or a schedule, got '0\.9'",
        ),
        ({"accumulator_dtype": jnp.int32}, TypeError, r"accumulator_dtype.*int32"),
    ],
)
def test_bad_qhm_hyperparameters_raise_at_build_time(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    arguments = {"learning_rate": 0.1, **kwargs}
    with pytest.raises(error, match=r"momentum_jax\.qhm: " + match):
        qhm(**arguments)


@pytest.mark.parametrize(
    ("momenta", "error", "match"),
    [
        ((), ValueError, r"momenta must hold at least one momentum, got momenta=\(\)\.$"),
        ([], ValueError, r"momenta must hold at least one momentum, got momenta=\[\]\.$"),
        (jnp.zeros(0), ValueError, r"momenta must hold at least one momentum"),
        ((0.9, 1.0), ValueError, r"momenta\[1\] must be in \[0, 1\), got momenta\[1\]=1\.0"),
        ((-0.5,), ValueError, r"momenta\[0\] must be in \[0, 1\), got momenta\[0\]=-0\.5"),
        (
            jnp.array([0.5, 0.0, 1.5]),
            ValueError,
            r"momenta\[2\] must be in \[0, 1\), got momenta\[2\]=Array\(1\.5",
        ),
        (0.9, TypeError, r"momenta must be a non-empty tuple of numbers, got 0\.9\.$"),
        ("0.9", TypeError, r"momenta must be a non-empty tuple of numbers, got '0\.9'\.$"),
        ({0.9}, TypeError, r"momenta must be a non-empty tuple of numbers, got \{0\.9\}\.$"),
        ((0.9, None), TypeError, r"momenta\[1\] must be a real number, got None\.$"),
        ((0.9, "x"), TypeError, r"momenta\[1\] must be a real number, got 'x'\.$"),
        ((True,), TypeError, r"momenta\[0\] must be a real number, got True\.$"),
        ((lambda count: 0.9,), TypeError, r"momenta\[0\] must be a real number, got <function"),
        (jnp.zeros((2, 2)), TypeError, r"momenta must be a non-empty tuple of numbers, got Array"),
    ],
)
def test_bad_aggmo_momenta_raise_at_build_time(
    momenta: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=r"momentum_jax\.aggmo: " + match):
        aggmo(0.1, momenta)


def test_bad_aggmo_learning_rate_and_dtype_raise_at_build_time() -> None:
    with pytest.raises(ValueError, match=r"aggmo: learning_rate must be in \[0, inf\).*=-1"):
        aggmo(-1)
    with pytest.raises(TypeError, match=r"aggmo: accumulator_dtype.*bool"):
        aggmo(0.1, accumulator_dtype=jnp.bool_)


@pytest.mark.parametrize(
    ("build", "error", "pattern"),
    [
        (
            lambda: momentum_jax.momentum(0.1, weight_decay=lambda c: 0.1),
            TypeError,
            r"momentum: weight_decay must be a real number, got <function <lambda>",
        ),
        (
            lambda: momentum_jax.scale_by_momentum(0.9, dampening=lambda c: 0.1),
            TypeError,
            r"scale_by_momentum: dampening must be a real number, got <function <lambda>",
        ),
        (
            lambda: schedules.sutskever(lambda c: 0.9),
            TypeError,
            r"sutskever: max_momentum must be a real number, got <function <lambda>",
        ),
        (
            lambda: schedules.demon(0.9, 2**40),
            ValueError,
            r"demon: total_steps must be in \[1, 2147483647\], got total_steps=1099511627776\.$",
        ),
        (
            lambda: schedules.sutskever(0.9, steps_per_stage=2**31),
            ValueError,
            r"steps_per_stage must be in \[1, 2147483647\], got steps_per_stage=2147483648\.",
        ),
    ],
    ids=["weight_decay", "dampening", "sutskever", "demon", "sutskever-stage"],
)
def test_bad_callables_and_counts_are_refused_at_build_time(
    build: Callable[[], Any], error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        build()


def test_growth_hint_only_for_momentum_of_one_or_more() -> None:
    with pytest.raises(ValueError, match=r"momentum=-0\.5\.$"):
        momentum_jax.momentum(0.1, -0.5)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got momentum=1\.5\."):
        momentum_jax.momentum(0.1, 1.5)


def test_x64_checks_in_float64() -> None:
    with _jax_compat.enable_x64(True):
        momentum_jax.momentum(0.1, 0.9999999999)


def test_nesterov_alias_refuses_a_nesterov_argument() -> None:
    with pytest.raises(TypeError, match="nesterov"):
        momentum_jax.nesterov(0.1, nesterov=False)  # type: ignore[call-arg]


def test_edges_of_the_valid_ranges_are_accepted() -> None:
    g = jnp.array([1.0, -2.0])
    # (transform, its first update for gradient g), each at an edge of a valid range.
    cases = [
        (momentum_jax.momentum(0.0, 0.0), 0.0 * g),
        (momentum_jax.momentum(1.0, 0.999999, weight_decay=0.0), -g),
        (momentum_jax.scale_by_momentum(0.0, dampening=0.999), g),  # b_1 = g_1, undamped
        (compat.torch_sgd(0.1, momentum=0.5, nesterov=True), -0.1 * (g + 0.5 * g)),
        (compat.keras_sgd(weight_decay=None), -0.01 * g),
    ]
    for tx, expected in cases:
        updates, _ = tx.update(g, tx.init(jnp.zeros(2)), jnp.zeros(2))
        np.testing.assert_allclose(updates, expected, rtol=1e-6)


def test_optax_schedule_objects_are_accepted() -> None:
    tx = momentum_jax.momentum(optax.linear_schedule(0.1, 0.0, 10), optax.constant_schedule(0.5))
    updates, _ = tx.update(jnp.ones(1), tx.init(jnp.zeros(1)))
    np.testing.assert_allclose(updates, [-0.1])


def test_traced_hyperparameters_are_not_checked_in_python() -> None:
    """Inside jit the values are abstract: building must not branch on them."""

    @jax.jit
    def run(lr: jax.Array, mu: jax.Array, nu: jax.Array) -> jax.Array:
        params, g = jnp.zeros(2), jnp.array([1.0, -1.0])
        total = jnp.zeros(2)
        for tx in (momentum_jax.momentum(lr, mu), qhm(lr, mu, nu), aggmo(lr, (mu, 0.5))):
            updates, _ = tx.update(g, tx.init(params))
            total = total + updates
        return total

    # Step 1: momentum -0.1 g; QHM -0.1 (0.5 g + 0.5 * 0.2 g) = -0.06 g; AggMo -0.1 g.
    np.testing.assert_allclose(run(0.1, 0.8, 0.5), [-0.26, 0.26], rtol=1e-6)


# The structure of the chain never depends on the hyperparameters' values: each
# edge value, injected (traced), gives the plain transform's trajectory. Zeros
# where a Python 0 may take another branch than a traced one (the contract
# table's rows inject their own values, the presets' zero defaults included).
INJECTED: list[tuple[Row, dict[str, float]]] = [
    (row, edge)
    for row_id, edge in [
        ("momentum", {"momentum": 0.0, "weight_decay": 0.0}),
        ("nesterov", {"learning_rate": 0.0, "momentum": 0.0, "weight_decay": 0.0}),
        ("scale_by_momentum", {"momentum": 0.0, "dampening": 0.0}),
        # PyTorch ignores dampening when momentum is 0, injected or not.
        ("torch_sgd", {"momentum": 0.0, "dampening": 0.5}),
        ("keras_sgd", {"momentum": 0.0, "weight_decay": 0.0}),
        ("tf1_momentum", {"momentum": 0.0}),
        ("qhm", {"momentum": 0.0, "nu": 0.0}),
        ("scale_by_qhm", {"momentum": 0.9, "nu": 1.0}),
    ]
    for row in rows_named(row_id)
]


@pytest.mark.parametrize(
    ("row", "edge"),
    INJECTED,
    ids=[f"{row.id}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for row, kw in INJECTED],
)
def test_edge_values_injected_match_the_plain_transform(row: Row, edge: dict[str, float]) -> None:
    injected = row.injected(**edge)
    expected = _problems.trajectory(row.build(**edge), 4)
    params = _problems.initial_params()
    state = injected.init(params)  # eager: inject_hyperparams sees concrete arrays
    assert set(edge) <= set(state.hyperparams)
    step = jax.jit(_problems.step_fn(injected))
    got = []
    for _ in range(4):
        params, state = step(params, state)
        got.append(jax.tree.map(np.asarray, params))
    _problems.assert_trajectories_close(got, expected, rtol=1e-6, atol=1e-7)


# --- what schedules return -------------------------------------------------------


def _vector_schedule(count: Any) -> jax.Array:
    return jnp.full((3,), 0.05) + 0.0 * count


# Each argument that takes a schedule, of each public transform (the presets at
# momentum=0 too): its own argument, not the learning rate a test-side chain adds.
SCHEDULED_ARGS = [
    (row, name)
    for row in TRANSFORMS + STATELESS
    for name in SCHEDULABLE
    if name in {**row.hyper, **row.static} and name in inspect.signature(row.public).parameters
]


@pytest.mark.parametrize(
    ("row", "arg"), SCHEDULED_ARGS, ids=[f"{r.id}-{a}" for r, a in SCHEDULED_ARGS]
)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_schedule_returning_an_array_is_refused(row: Row, arg: str, jit: bool) -> None:
    tx = row.build(**{arg: _vector_schedule})
    params = jnp.zeros(3)
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    message = rf": the {arg} schedule returned an array of shape \(3,\), not a scalar\."
    with pytest.raises(ValueError, match=message):
        update(jnp.ones(3), state, params)


NON_REAL_CASES = [
    (row, arg)
    for row, arg in SCHEDULED_ARGS
    if (row.id, arg)
    in {
        ("momentum", "learning_rate"),
        ("nesterov", "momentum"),
        ("qhm", "nu"),
        ("torch_sgd", "lr"),
        ("tf1_momentum", "learning_rate"),
    }
]


@pytest.mark.parametrize(
    "value", ["0.1", None, True, jnp.asarray(True), 0.1 + 0j, jnp.asarray(0.1 + 0j)]
)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_schedule_returning_a_non_real_scalar_is_refused(value: Any, jit: bool) -> None:
    for row, arg in NON_REAL_CASES:
        tx = row.build(**{arg: lambda c: value})
        update = jax.jit(tx.update) if jit else tx.update
        with pytest.raises(
            TypeError, match=rf": the {arg} schedule returned .*, not a real number\."
        ):
            update(jnp.ones(2), tx.init(jnp.zeros(2)), jnp.zeros(2))


# --- gradients --------------------------------------------------------------------


@pytest.mark.parametrize("row", STATEFUL, ids=ids(STATEFUL))
def test_a_none_gradient_for_a_param_that_trains_is_named_by_its_path(row: Row) -> None:
    tx = row.build()
    params = small_params()
    grads = {**jax.tree.map(jnp.ones_like, params), "b": None}
    with pytest.raises(ValueError, match=r"the gradient at \['b'\] is None, not an array\.$"):
        tx.update(grads, tx.init(params), params)


@pytest.mark.parametrize("row", STATEFUL, ids=ids(STATEFUL))
@pytest.mark.parametrize(
    "grads",
    [{"w": jnp.ones(3)}, {"w": jnp.ones(3), "b": jnp.ones((1, 2)), "extra": jnp.ones(1)}],
    ids=["missing-leaf", "extra-leaf"],
)
def test_gradient_tree_that_does_not_match_the_state_names_both(
    row: Row, grads: dict[str, jax.Array]
) -> None:
    tx = row.build()
    params = small_params()
    state = tx.init(params)
    with pytest.raises(
        ValueError,
        match=r"the gradients do not match the state's params",
    ) as info:
        tx.update(grads, state, params)
    message = str(info.value)
    assert str(jax.tree.structure(grads)) in message
    assert str(jax.tree.structure(params)) in message


@pytest.mark.parametrize("row", STATEFUL, ids=ids(STATEFUL))
@pytest.mark.parametrize("shape", [(1,), (5,)], ids=["broadcastable", "incompatible"])
def test_gradient_leaf_of_the_wrong_shape_is_refused_by_name(
    row: Row, shape: tuple[int, ...]
) -> None:
    tx = row.build()
    params = small_params()
    state = tx.init(params)
    grads = {**fixed_grads(0), "w": jnp.ones(shape)}
    # A (1,) gradient would broadcast against the (3,) buffer and reshape the
    # state; it must be refused, naming the leaf and both shapes.
    with pytest.raises(ValueError, match=rf"\['w'\].*{re.escape(str(shape))}.*\(3,\)"):
        tx.update(grads, state, params)


@pytest.mark.parametrize("row", EVERY, ids=ids(EVERY))
def test_integer_gradients_are_refused(row: Row) -> None:
    tx = row.build()
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    with pytest.raises(TypeError, match=r"gradient.*\['w'\].*int32"):
        tx.update({"w": jnp.ones(3, jnp.int32)}, state, params)


@pytest.mark.parametrize("row", STATELESS, ids=ids(STATELESS))
def test_integer_gradients_without_params_are_refused(row: Row) -> None:
    # Without params no buffer names the leaves that train: the gradient's own dtype does.
    tx = row.build(weight_decay=0)
    state = tx.init({"w": jnp.zeros(3), "n": jnp.zeros((), jnp.int32)})
    with pytest.raises(TypeError, match=r"the param at \['n'\] does not train"):
        tx.update({"w": jnp.ones(3), "n": jnp.ones((), jnp.int32)}, state)
    updates, _ = tx.update({"w": jnp.ones(3), "n": None}, state)
    assert updates["n"] is None


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_maximize_checks_the_gradients_before_negating_them(momentum: float) -> None:
    # Negated first, an integer gradient would be a float one and a float0 one a NumPy error.
    tx = compat.torch_sgd(0.1, momentum, maximize=True)
    params = {"w": jnp.zeros(2), "n": jnp.zeros((), jnp.int32)}
    state = tx.init(params)
    with pytest.raises(TypeError, match=r"the gradient at \['w'\] is int32, not floating point"):
        tx.update({"w": jnp.ones(2, jnp.int32), "n": None}, state, params)
    float0 = np.zeros((), jax.dtypes.float0)  # jax.grad(..., allow_int=True) of an integer
    with pytest.raises(TypeError, match=r"the param at \['n'\] does not train"):
        tx.update({"w": jnp.ones(2), "n": float0}, state, params)


@pytest.mark.parametrize(
    "factory",
    [momentum_jax.momentum, momentum_jax.nesterov, compat.torch_sgd, momentum_jax.lion],
    ids=lambda f: f.__name__,
)
def test_weight_decay_none_is_refused_where_it_is_not_the_default(factory: Any) -> None:
    with pytest.raises(TypeError, match=r"weight_decay must be a real number, got None\."):
        factory(0.1, weight_decay=None)
    compat.keras_sgd(0.1, weight_decay=None)  # Keras' default: no decay


def test_complex_gradient_into_a_real_state_is_refused() -> None:
    tx = momentum_jax.momentum(0.1, 0.9)
    state = tx.init(jnp.zeros(2))
    with pytest.raises(
        TypeError,
        match=r"the gradient at <root> is complex but its buffer is float32; init with complex params and accumulator_dtype None or complex\.",
    ):
        tx.update(jnp.ones(2, jnp.complex64), state)


@pytest.mark.parametrize("row", EVERY, ids=ids(EVERY))
def test_apply_if_finite_skips_bad_steps_without_touching_anything(row: Row) -> None:
    guarded = optax.apply_if_finite(row.build(), max_consecutive_errors=5)
    step = jitted_step(guarded)
    params = small_params()
    state = guarded.init(params)
    reference_params, reference_state = params, state
    for k in range(3):
        params, state = step(params, state, fixed_grads(k))
        reference_params, reference_state = step(reference_params, reference_state, fixed_grads(k))
    counts_before = counts(state.inner_state)
    for bad in (np.nan, np.inf, -np.inf):
        new_params, new_state = step(params, state, with_bad_value(fixed_grads(3), bad))
        assert_trees_equal(new_params, params, f"params after a {bad} gradient")
        assert_trees_equal(new_state.inner_state, state.inner_state, f"state after {bad}")
        params, state = new_params, new_state
    assert counts(state.inner_state) == counts_before
    assert int(state.notfinite_count) == 3
    assert int(state.total_notfinite) == 3
    # The run then goes on exactly as if the bad steps never happened.
    for k in range(3, 6):
        params, state = step(params, state, fixed_grads(k))
        reference_params, reference_state = step(reference_params, reference_state, fixed_grads(k))
    assert_trees_equal(params, reference_params, "params after recovering")
    assert_trees_equal(state.inner_state, reference_state.inner_state, "state after recovering")
    assert int(state.notfinite_count) == 0
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params))


def test_apply_if_finite_gives_up_after_max_consecutive_errors() -> None:
    """optax's guard applies the bad update once the limit is exceeded: pick the limit with care."""
    guarded = optax.apply_if_finite(momentum_jax.momentum(0.05, 0.9), max_consecutive_errors=2)
    step = jitted_step(guarded)
    params = small_params()
    state = guarded.init(params)
    params, state = step(params, state, fixed_grads(0))
    for _ in range(2):
        params, state = step(params, state, with_bad_value(fixed_grads(1), np.nan))
        assert np.all(np.isfinite(params["w"]))
    params, state = step(params, state, with_bad_value(fixed_grads(1), np.nan))
    assert np.isnan(params["w"][1])
    assert np.isnan(state.inner_state.velocity["w"][1])


@pytest.mark.parametrize("row", STATEFUL, ids=ids(STATEFUL))
def test_without_a_guard_a_bad_gradient_poisons_the_velocity_for_good(row: Row) -> None:
    tx = row.build()
    step = jitted_step(tx)  # one compiled step for both bad values
    for bad in (np.nan, np.inf):
        params = small_params()
        state = tx.init(params)
        params, state = step(params, state, fixed_grads(0))
        params, state = step(params, state, with_bad_value(fixed_grads(1), bad))
        for k in range(2, 12):
            params, state = step(params, state, fixed_grads(k))
        # Momentum carries the bad value forever (mu * nan = nan, mu * inf = inf):
        # finite gradients never wash it out.
        assert not np.isfinite(params["w"][1]), bad
        buffers = [leaf for leaf in jax.tree.leaves(state) if np.shape(leaf) == (3,)]
        assert buffers
        assert all(not np.isfinite(buffer[1]) for buffer in buffers), bad
        # The update is elementwise, so the other coordinates are unharmed (a real
        # loss couples coordinates, and then the NaN spreads through the gradient).
        assert np.all(np.isfinite(np.delete(np.asarray(params["w"]), 1)))
        assert np.all(np.isfinite(params["b"]))
        # The counter does not notice: it advanced once per call.
        assert set(counts(state)) == {12}


@pytest.mark.parametrize("row", STATELESS, ids=ids(STATELESS))
def test_without_momentum_a_nan_stays_in_the_param(row: Row) -> None:
    tx = row.build()
    step = jitted_step(tx)
    params = small_params()
    state = tx.init(params)
    params, state = step(params, state, with_bad_value(fixed_grads(0), np.nan))
    for k in range(1, 5):
        params, state = step(params, state, fixed_grads(k))
    assert np.isnan(params["w"][1])
    assert np.all(np.isfinite(params["b"]))


# --- params -----------------------------------------------------------------------


WEIGHT_DECAY = rows_named(
    "momentum_weight_decay", "torch_sgd_dampening_weight_decay", "keras_sgd_nesterov_weight_decay"
)


@pytest.mark.parametrize("row", WEIGHT_DECAY, ids=ids(WEIGHT_DECAY))
def test_params_of_another_shape_do_not_broadcast_into_the_state(row: Row) -> None:
    tx = row.build()
    state = tx.init(jnp.zeros(3))
    with pytest.raises(
        ValueError,
        match=r"the (gradient|param) at <root> has shape \((3,|2, 3)\), expected \((2, 3|3,)\)\.",
    ):
        tx.update(jnp.ones(3), state, jnp.zeros((2, 3)))


def test_weight_decay_without_params_is_explained() -> None:
    tx = momentum_jax.momentum(0.1, weight_decay=1e-4)
    state = tx.init(jnp.zeros(2))
    with pytest.raises(
        ValueError,
        match=r"weight_decay needs the params: pass them to update\(\), or static_args=\('weight_decay',\) under inject_hyperparams if it is 0\.",
    ):
        tx.update(jnp.ones(2), state)
    keras_tx = compat.keras_sgd(0.1, 0.9, weight_decay=0.1)
    with pytest.raises(ValueError, match=r"weight_decay needs the params"):
        keras_tx.update(jnp.ones(2), keras_tx.init(jnp.zeros(2)))


@pytest.mark.parametrize("row", EVERY, ids=ids(EVERY))
@pytest.mark.parametrize(
    ("leaf", "dtype"),
    [(jnp.zeros((), jnp.int32), "int32"), (jnp.zeros(2, jnp.bool_), "bool")],
    ids=["int32", "bool"],
)
def test_integer_and_boolean_params_get_no_buffer_and_a_none_update(
    row: Row, leaf: jax.Array, dtype: str
) -> None:
    # Leaves that do not train, as optax treats them for eqx.filter(model, eqx.is_array).
    tx = row.build()
    params = {"w": jnp.zeros(3), "step": leaf}
    state = tx.init(params)
    assert len(jax.tree.leaves(state)) == len(jax.tree.leaves(tx.init({"w": jnp.zeros(3)})))
    updates, state = tx.update({"w": jnp.ones(3), "step": None}, state, params)
    assert updates["step"] is None
    assert np.all(np.asarray(updates["w"]) != 0)
    with pytest.raises(
        TypeError,
        match=r"the param at \['step'\] does not train \(integer or bool\); give it a None gradient\.",
    ):
        tx.update({"w": jnp.ones(3), "step": jnp.ones_like(leaf, jnp.float32)}, state, params)


@pytest.mark.parametrize("leaf", [3, True], ids=["int", "bool"])
def test_python_int_and_bool_leaves_get_no_buffer_and_a_none_update(leaf: Any) -> None:
    tx = momentum_jax.momentum(0.1, 0.9)
    params = {"w": jnp.ones(2), "n": leaf}
    state = tx.init(params)
    assert state.velocity["n"] is None
    for _ in range(2):
        updates, state = tx.update({"w": jnp.ones(2), "n": None}, state, params)
        assert updates["n"] is None
    np.testing.assert_allclose(updates["w"], -0.19, rtol=1e-6)
    with pytest.raises(
        TypeError,
        match=r"the param at \['n'\] does not train \(integer or bool\); give it a None gradient\.",
    ):
        tx.update({"w": jnp.ones(2), "n": jnp.ones_like(leaf, jnp.float32)}, state, params)


def test_real_accumulator_for_complex_params_is_refused() -> None:
    tx = momentum_jax.scale_by_momentum(0.9, accumulator_dtype=jnp.float32)
    with pytest.raises(
        TypeError,
        match=r"the param at \['z'\] is complex; accumulator_dtype=float32 drops its imaginary part\.",
    ):
        tx.init({"z": jnp.zeros(2, jnp.complex64)})


def test_python_number_gradients_for_scalar_params() -> None:
    tx = momentum_jax.momentum(0.1, 0.9, nesterov=np.False_)  # a NumPy bool is a flag too
    _, state = tx.update(1.0, tx.init(jnp.zeros(())))
    updates, _ = tx.update(2.0, state)
    np.testing.assert_allclose(updates, -(0.9 * 0.1 + 0.1 * 2.0), rtol=1e-6)
    updates, _ = tx.update(1 + 2j, tx.init(jnp.zeros((), jnp.complex64)))
    np.testing.assert_allclose(updates, -0.1 * (1 + 2j), rtol=1e-6)
    with pytest.raises(TypeError, match=r"the gradient at <root> is complex but its buffer is"):
        tx.update(1 + 2j, tx.init(jnp.zeros(())))


def test_complex_params_train_with_a_complex_state() -> None:
    # A complex accumulator_dtype is valid too: the one the error above names as the fix.
    for options in ({}, {"accumulator_dtype": jnp.complex64}):
        tx = momentum_jax.momentum(0.1, 0.9, **options)
        state = tx.init(jnp.zeros(2, jnp.complex64))
        for g in (1 + 2j, -3 + 1j):  # v = 0.1 g, then 0.9 v + 0.1 g
            updates, state = tx.update(jnp.full(2, g, jnp.complex64), state)
        assert state.velocity.dtype == jnp.complex64
        np.testing.assert_allclose(updates, -(0.09 * (1 + 2j) + 0.1 * (-3 + 1j)), rtol=1e-6)


# --- the state ----------------------------------------------------------------------


def test_another_optimizers_state_is_named() -> None:
    tx = momentum_jax.momentum(0.1)
    params = jnp.zeros(2)
    with pytest.raises(
        TypeError, match=r"expected a MomentumState from this transform's init, got tuple\."
    ):
        tx.update(jnp.ones(2), optax.sgd(0.1, 0.9).init(params), params)
    qhm = momentum_jax.qhm(0.1)
    with pytest.raises(
        TypeError, match=r"momentum_jax.qhm: expected a QHMState.*got MomentumState"
    ):
        qhm.update(jnp.ones(2), (tx.init(params), optax.EmptyState()), params)


def test_swapped_update_arguments_are_named() -> None:
    tx = momentum_jax.momentum(0.1)
    state = tx.init(jnp.zeros(2))
    with pytest.raises(
        TypeError,
        match=r"expected a MomentumState from this transform's init, got ArrayImpl; call update\(updates, state, params\)\.",
    ):
        tx.update(state, jnp.ones(2))


# --- stochastic_rounding and seed --------------------------------------------------

BAD_SEEDS = [
    (-1, ValueError, r"seed must be in \[0, 2147483647\], got seed=-1"),
    (2**31, ValueError, r"seed must be in \[0, 2147483647\], got seed=2147483648"),
    (1.5, TypeError, r"seed must be an integer, got 1\.5"),
    (True, TypeError, r"seed must be an integer, got True"),
    ("0", TypeError, r"seed must be an integer, got '0'"),
    (jnp.asarray(1.0), TypeError, r"seed must be an integer scalar, got Array"),
    (np.arange(2), TypeError, r"seed must be an integer scalar, got array"),
]


@pytest.mark.parametrize(
    "row", BUFFER_TRANSFORMS + STATELESS, ids=ids(BUFFER_TRANSFORMS + STATELESS)
)
def test_bad_stochastic_rounding_and_seed_raise_at_build_time(row: Row) -> None:
    # Without momentum the presets keep no buffer; the arguments are checked all the same.
    name, build = row.name, row.build
    with pytest.raises(TypeError, match=rf"^{name}: stochastic_rounding must be True or False"):
        build(stochastic_rounding=1)
    for seed, error, pattern in BAD_SEEDS:
        with pytest.raises(error, match=rf"^{name}: {pattern}"):
            build(stochastic_rounding=True, seed=seed)
    # Valid: the range's ends, a NumPy integer, an integer array; a NumPy bool.
    for seed in (0, 2**31 - 1, np.int64(5), jnp.asarray(7, jnp.uint32)):
        build(stochastic_rounding=True, seed=seed)
    build(stochastic_rounding=np.True_)


def test_bad_seed_for_the_params_stage() -> None:
    for seed, error, pattern in BAD_SEEDS:
        with pytest.raises(error, match=rf"^momentum_jax.stochastic_round_params: {pattern}"):
            momentum_jax.stochastic_round_params(seed)
    stage = momentum_jax.stochastic_round_params()
    params = {"w": jnp.zeros(2, jnp.bfloat16)}
    with pytest.raises(ValueError, match=r"needs the params"):
        stage.update({"w": jnp.ones(2, jnp.bfloat16)}, stage.init(params))
    with pytest.raises(ValueError, match=r"stochastic_round_params: the update at \['w'\]"):
        stage.update({"w": jnp.ones(3, jnp.bfloat16)}, stage.init(params), params)
    with pytest.raises(
        TypeError, match=r"stochastic_round_params: expected a StochasticRoundParamsState"
    ):
        stage.update({"w": jnp.ones(2, jnp.bfloat16)}, optax.EmptyState(), params)


# --- every error names the function the user called -------------------------------


# Each public transform with a momentum argument.
CALLED = [
    row for row in BUFFER_TRANSFORMS if "momentum" in inspect.signature(row.factory).parameters
]


@pytest.mark.parametrize("layout", ["per_leaf", "packed"])
@pytest.mark.parametrize("row", CALLED, ids=ids(CALLED))
def test_every_error_names_the_function_the_user_called(row: Row, layout: str) -> None:
    name, build = row.name, row.build
    with pytest.raises(ValueError, match=rf"^{name}: momentum must be in \[0, 1\)"):
        build(momentum=1.0, layout=layout)
    # Two layouts, no other (there is no automatic choice, and no wrapper for other transforms).
    for other in ("auto", "fused", None):
        with pytest.raises(
            ValueError, match=rf"^{name}: layout must be 'per_leaf' or 'packed', got"
        ):
            build(momentum=0.9, layout=other)
    tx = build(momentum=0.9, layout=layout)
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    with pytest.raises(ValueError, match=rf"^{name}: the gradient at \['w'\] has shape \(3,\)"):
        tx.update({"w": jnp.ones(3)}, state, params)
    # As many elements in another shape: refused too, never broadcast into the state.
    with pytest.raises(
        ValueError,
        match=rf"^{name}: the gradient at \['w'\] has shape \(2, 1\), expected \(2,\)\.$",
    ):
        tx.update({"w": jnp.ones((2, 1))}, state, params)
    with pytest.raises(
        TypeError, match=rf"^{name}: the gradient at \['w'\] is int32, not floating point\.$"
    ):
        tx.update({"w": jnp.ones(2, jnp.int32)}, state, params)


def test_a_misspelt_keyword_names_the_right_one() -> None:
    with pytest.raises(
        TypeError,
        match=r"torch_sgd: got an unexpected keyword argument "
        r"'learning_rate'\. Did you mean lr\?",
    ):
        compat.torch_sgd(learning_rate=0.1)
    with pytest.raises(TypeError, match=r"keras_sgd: .*'lr'\. Did you mean learning_rate\?"):
        compat.keras_sgd(lr=0.1)


def test_an_injected_accumulator_dtype_is_refused_with_static_args() -> None:
    """A dtype is callable: inject_hyperparams takes it for a schedule unless it is static,
    and JAX deprecates reading a dtype from the array that schedule gives."""
    inject = optax.inject_hyperparams(momentum_jax.momentum)
    tx = inject(learning_rate=0.1, momentum=0.9, accumulator_dtype=jnp.float32)
    with pytest.raises(
        TypeError,
        match=r"got Array\(0\.?, dtype=\w+\); under optax\.inject_hyperparams pass "
        r"static_args=\('accumulator_dtype',\)\.",
    ):
        tx.init(jnp.ones(3, jnp.bfloat16))
    static = optax.inject_hyperparams(momentum_jax.momentum, static_args=("accumulator_dtype",))
    state = static(learning_rate=0.1, momentum=0.9, accumulator_dtype=jnp.float32).init(
        jnp.ones(3, jnp.bfloat16)
    )
    assert state.inner_state.velocity.dtype == jnp.float32
