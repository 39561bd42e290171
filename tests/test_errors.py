"""Bad input is refused when the transform is built, with a message that helps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import momentum_jax
from momentum_jax import compat

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
        r"momentum must be in \[0, 1\), got momentum=(np.float64\()?0.9999999999\)?, which "
        r"is 1.0 in float32",
    ),
    (
        momentum_jax.momentum,
        {"learning_rate": np.float64(1e39)},
        ValueError,
        r"learning_rate must be in \[0, inf\), got .*1e\+39\)?, which is inf in float32",
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
        r"nesterov=True requires dampening=0, got dampening=0\.1",
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
        r"nesterov=True requires momentum > 0 and dampening = 0.*momentum=0\.0",
    ),
    (
        compat.torch_sgd,
        {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True},
        ValueError,
        r"nesterov=True requires momentum > 0 and dampening = 0.*dampening=0\.1",
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
        r"learning_rate must be a number, a scalar array or a schedule.*got str '0\.1'",
    ),
    (
        momentum_jax.momentum,
        {"learning_rate": 0.1, "momentum": True},
        TypeError,
        r"momentum must be a number.*got the boolean momentum=True",
    ),
    (
        momentum_jax.momentum,
        {"learning_rate": jnp.ones(3)},
        ValueError,
        r"learning_rate must be a scalar, got an array of shape \(3,\)",
    ),
    (
        momentum_jax.momentum,
        {"learning_rate": 0.1, "nesterov": "yes"},
        TypeError,
        r"nesterov must be True or False.*got str 'yes'",
    ),
    (
        momentum_jax.momentum,
        {"learning_rate": 0.1, "accumulator_dtype": jnp.int32},
        TypeError,
        r"accumulator_dtype must be None or a floating-point.*int32",
    ),
    (
        compat.tf1_momentum,
        {"learning_rate": 0.1, "momentum": 0.9, "use_nesterov": 1},
        TypeError,
        r"use_nesterov must be True or False",
    ),
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


def test_traced_hyperparameters_are_not_checked_in_python() -> None:
    @jax.jit
    def run(lr: jax.Array, mu: jax.Array) -> jax.Array:
        tx = momentum_jax.momentum(lr, mu)
        updates, _ = tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))
        return updates

    # Building inside jit with traced values works; the values are data.
    np.testing.assert_allclose(run(jnp.asarray(0.5), jnp.asarray(0.9)), [-0.5, -0.5])


def test_mismatched_gradient_tree_names_both_structures() -> None:
    tx = momentum_jax.momentum(0.1)
    state = tx.init({"w": jnp.zeros(2), "b": jnp.zeros(1)})
    with pytest.raises(
        ValueError, match=r"does not match.*'w'.*'b'|does not match.*'b'.*'w'"
    ) as info:
        tx.update({"w": jnp.zeros(2)}, state)
    message = str(info.value)
    assert "Gradients have structure PyTreeDef({'w': *})" in message
    assert "'b': *" in message


def test_mismatched_tree_in_scale_by_momentum() -> None:
    tx = momentum_jax.scale_by_momentum(0.9)
    state = tx.init((jnp.zeros(2), jnp.zeros(2)))
    with pytest.raises(ValueError, match=r"gradient tree does not match the optimizer state"):
        tx.update([jnp.zeros(2), jnp.zeros(2)], state)


def test_weight_decay_without_params_is_explained() -> None:
    tx = momentum_jax.momentum(0.1, weight_decay=1e-4)
    state = tx.init(jnp.zeros(2))
    with pytest.raises(ValueError, match=r"weight_decay=0\.0001 needs the params"):
        tx.update(jnp.ones(2), state)
    keras_tx = compat.keras_sgd(0.1, 0.9, weight_decay=0.1)
    with pytest.raises(ValueError, match=r"weight_decay=0\.1 needs the params"):
        keras_tx.update(jnp.ones(2), keras_tx.init(jnp.zeros(2)))


def test_gradient_for_an_integer_param_is_refused_with_its_path() -> None:
    tx = momentum_jax.momentum(0.1)
    params = {"w": jnp.zeros(2), "step": jnp.zeros((), jnp.int32)}
    state = tx.init(params)
    with pytest.raises(TypeError, match=r"gradient arrived for the param at \['step'\].*float"):
        tx.update({"w": jnp.ones(2), "step": jnp.ones(())}, state, params)


def test_schedule_returning_an_array_is_refused() -> None:
    tx = momentum_jax.momentum(lambda count: jnp.ones(2) * 0.1)
    state = tx.init(jnp.zeros(2))
    with pytest.raises(ValueError, match=r"learning_rate must evaluate to a scalar.*shape \(2,\)"):
        tx.update(jnp.ones(2), state)


def test_nesterov_alias_refuses_a_nesterov_argument() -> None:
    with pytest.raises(TypeError, match="nesterov"):
        momentum_jax.nesterov(0.1, nesterov=False)  # type: ignore[call-arg]


def test_optax_schedule_objects_are_accepted() -> None:
    tx = momentum_jax.momentum(optax.linear_schedule(0.1, 0.0, 10), optax.constant_schedule(0.5))
    updates, _ = tx.update(jnp.ones(1), tx.init(jnp.zeros(1)))
    np.testing.assert_allclose(updates, [-0.1])


def test_gradient_with_a_different_shape_names_the_leaf() -> None:
    tx = momentum_jax.momentum(0.1)
    state = tx.init({"w": jnp.zeros((2, 3))})
    with pytest.raises(ValueError, match=r"gradient at \['w'\] has shape \(3,\).*shape \(2, 3\)"):
        tx.update({"w": jnp.zeros(3)}, state)


# Each public factory with arguments that build it, and its name as errors spell it.
CALLED = [
    ("momentum_jax.momentum", lambda **kw: momentum_jax.momentum(0.1, **kw)),
    ("momentum_jax.nesterov", lambda **kw: momentum_jax.nesterov(0.1, **kw)),
    ("momentum_jax.scale_by_momentum", lambda **kw: momentum_jax.scale_by_momentum(**kw)),
    ("momentum_jax.qhm", lambda **kw: momentum_jax.qhm(0.1, **kw)),
    ("momentum_jax.scale_by_qhm", lambda **kw: momentum_jax.scale_by_qhm(**kw)),
    ("momentum_jax.compat.torch_sgd", lambda **kw: compat.torch_sgd(0.1, **kw)),
    ("momentum_jax.compat.keras_sgd", lambda **kw: compat.keras_sgd(0.1, **kw)),
    ("momentum_jax.compat.tf1_momentum", lambda **kw: compat.tf1_momentum(0.1, **kw)),
]


@pytest.mark.parametrize("layout", ["per_leaf", "packed"])
@pytest.mark.parametrize(("name", "build"), CALLED, ids=[name for name, _ in CALLED])
def test_every_error_names_the_function_the_user_called(
    name: str, build: Callable[..., Any], layout: str
) -> None:
    with pytest.raises(ValueError, match=rf"^{name}: momentum must be in \[0, 1\)"):
        build(momentum=1.0, layout=layout)
    with pytest.raises(ValueError, match=rf"^{name}: layout must be"):
        build(momentum=0.9, layout="auto")
    tx = build(momentum=0.9, layout=layout)
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    with pytest.raises(ValueError, match=rf"^{name}: the gradient at \['w'\] has shape \(3,\)"):
        tx.update({"w": jnp.ones(3)}, state, params)
    with pytest.raises(TypeError, match=rf"^{name}: the gradient at \['w'\] has dtype int32"):
        tx.update({"w": jnp.ones(2, jnp.int32)}, state, params)
