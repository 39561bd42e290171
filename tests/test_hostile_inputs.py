"""Issue 10's contract fixes D1-D8: each test failed on 0.1.0."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import momentum_jax
from momentum_jax import compat, schedules
from tests import _jax_compat, _problems

# --------------------------------------------------------------------------
# D1: chain structure never depends on hyperparameter values.
# --------------------------------------------------------------------------

INJECTED: list[tuple[Callable[..., Any], dict[str, Any], bool]] = [
    # (factory, numeric kwargs, is a learning-rate-free block)
    (momentum_jax.momentum, {"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 0.01}, False),
    (momentum_jax.momentum, {"learning_rate": 0.1, "momentum": 0.0, "weight_decay": 0.0}, False),
    (momentum_jax.nesterov, {"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 0.01}, False),
    (momentum_jax.nesterov, {"learning_rate": 0.0, "momentum": 0.0, "weight_decay": 0.0}, False),
    (momentum_jax.scale_by_momentum, {"momentum": 0.9, "dampening": 0.1}, True),
    (momentum_jax.scale_by_momentum, {"momentum": 0.0, "dampening": 0.0}, True),
    (compat.torch_sgd, {"lr": 0.1, "momentum": 0.9}, False),
    (compat.torch_sgd, {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}, False),
    (compat.torch_sgd, {"lr": 0.1, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0}, False),
    # PyTorch ignores dampening when momentum is 0, injected or not.
    (compat.torch_sgd, {"lr": 0.1, "momentum": 0.0, "dampening": 0.5}, False),
    (compat.keras_sgd, {"learning_rate": 0.1}, False),
    (compat.keras_sgd, {"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 0.01}, False),
    (compat.keras_sgd, {"learning_rate": 0.1, "momentum": 0.0, "weight_decay": 0.0}, False),
    (compat.tf1_momentum, {"learning_rate": 0.1, "momentum": 0.9}, False),
    (compat.tf1_momentum, {"learning_rate": 0.1, "momentum": 0.0}, False),
    (momentum_jax.qhm, {"learning_rate": 0.1, "momentum": 0.9, "nu": 0.7}, False),
    (momentum_jax.qhm, {"learning_rate": 0.1, "momentum": 0.0, "nu": 0.0}, False),
    (momentum_jax.aggmo, {"learning_rate": 0.1}, False),
    (momentum_jax.scale_by_qhm, {"momentum": 0.9, "nu": 1.0}, True),
    (momentum_jax.scale_by_aggmo, {}, True),
]


def _jitted_trajectory(tx: optax.GradientTransformation, steps: int) -> list[Any]:
    params = _problems.initial_params()
    state = tx.init(params)  # eager: inject_hyperparams sees concrete arrays

    @jax.jit
    def step(params: Any, state: Any) -> tuple[Any, Any]:
        grads = jax.grad(_problems.loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    out = []
    for _ in range(steps):
        params, state = step(params, state)
        out.append(jax.tree.map(np.asarray, params))
    return out


@pytest.mark.parametrize(
    ("factory", "kwargs", "block"),
    INJECTED,
    ids=[f"{f.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for f, kw, _ in INJECTED],
)
def test_every_numeric_hyperparameter_injected_matches_the_plain_transform(
    factory: Callable[..., Any], kwargs: dict[str, Any], block: bool
) -> None:
    def build(make: Callable[..., Any]) -> optax.GradientTransformation:
        tx = make(**kwargs)
        return optax.chain(tx, optax.scale_by_learning_rate(0.05)) if block else tx

    injected = build(optax.inject_hyperparams(factory))
    plain = build(factory)
    _problems.assert_trajectories_close(
        _jitted_trajectory(injected, 8), _problems.trajectory(plain, 8), rtol=1e-6, atol=1e-7
    )


def test_inject_hyperparams_torch_sgd_as_issue_10_wrote_it() -> None:
    tx = optax.inject_hyperparams(compat.torch_sgd)(lr=0.1, momentum=0.9)
    p, g = jnp.ones(3), jnp.full(3, 0.5)
    updates, _ = jax.jit(tx.update)(g, tx.init(p), p)
    expected, _ = compat.torch_sgd(0.1, 0.9).update(g, compat.torch_sgd(0.1, 0.9).init(p), p)
    np.testing.assert_allclose(updates, expected, rtol=1e-7)


# --------------------------------------------------------------------------
# D2: bfloat16 / float16 scalar hyperparameters.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_scalar_hyperparameters_are_accepted(dtype: Any) -> None:
    tx = momentum_jax.momentum(jnp.asarray(0.1, dtype), jnp.asarray(0.9, dtype))
    params = jnp.ones(3, dtype)
    updates, _ = tx.update(jnp.ones(3, dtype), tx.init(params), params)
    assert updates.dtype == dtype
    injected = optax.inject_hyperparams(momentum_jax.nesterov)(0.1, 0.9)
    state = injected.init(params)
    updates, _ = jax.jit(injected.update)(jnp.ones(3, dtype), state, params)
    assert updates.dtype == dtype
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        momentum_jax.momentum(0.1, jnp.asarray(1.5, dtype))


# --------------------------------------------------------------------------
# D3: params are checked against the state.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: momentum_jax.momentum(0.1, 0.9, weight_decay=0.1),
        lambda: compat.torch_sgd(0.1, 0.9, weight_decay=0.1),
        lambda: compat.keras_sgd(0.1, 0.9, weight_decay=0.1),
    ],
    ids=["momentum", "torch_sgd", "keras_sgd"],
)
def test_params_of_another_shape_do_not_broadcast_into_the_state(make: Callable[[], Any]) -> None:
    tx = make()
    state = tx.init(jnp.zeros(3))
    with pytest.raises(
        ValueError, match=r"at <root> has shape \((2, 3|3,)\), but .* shape \((3,|2, 3)\)"
    ):
        tx.update(jnp.ones(3), state, jnp.zeros((2, 3)))


# --------------------------------------------------------------------------
# D4 and api.md "Leaves that do not train": integer and bool leaves.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("leaf", [3, True, jnp.asarray(3), jnp.zeros(2, jnp.bool_)])
def test_integer_leaves_get_no_buffer_and_a_none_update(leaf: Any) -> None:
    tx = momentum_jax.momentum(0.1, 0.9)
    params = {"w": jnp.ones(2), "n": leaf}
    state = tx.init(params)
    assert state.velocity["n"] is None
    for _ in range(2):
        updates, state = tx.update({"w": jnp.ones(2), "n": None}, state, params)
        assert updates["n"] is None
    np.testing.assert_allclose(updates["w"], -0.19, rtol=1e-6)
    with pytest.raises(TypeError, match=r"gradient arrived for the param at \['n'\].*float"):
        tx.update({"w": jnp.ones(2), "n": jnp.ones_like(leaf, jnp.float32)}, state, params)


def test_integer_leaves_under_jit_and_in_every_preset() -> None:
    params = {"w": jnp.ones(2), "step": jnp.zeros((), jnp.int32)}
    grads = {"w": jnp.ones(2), "step": None}
    for tx in (
        compat.torch_sgd(0.1, 0.9, weight_decay=0.1, maximize=True),
        compat.torch_sgd(0.1),
        compat.keras_sgd(0.1, weight_decay=0.1),
        compat.tf1_momentum(0.1, 0.9),
        momentum_jax.qhm(0.1),
        momentum_jax.aggmo(0.1),
    ):
        updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
        assert updates["step"] is None
        assert updates["w"].shape == (2,)


# --------------------------------------------------------------------------
# D5: complex gradients never lose their imaginary part.
# --------------------------------------------------------------------------


def test_complex_gradient_into_a_real_state_is_refused() -> None:
    tx = momentum_jax.momentum(0.1, 0.9)
    state = tx.init(jnp.zeros(2))
    with pytest.raises(TypeError, match=r"gradient at <root> is complex.*imaginary"):
        tx.update(jnp.ones(2, jnp.complex64), state)


def test_real_accumulator_for_complex_params_is_refused() -> None:
    tx = momentum_jax.scale_by_momentum(0.9, accumulator_dtype=jnp.float32)
    with pytest.raises(TypeError, match=r"param at \['z'\] is complex.*accumulator_dtype"):
        tx.init({"z": jnp.zeros(2, jnp.complex64)})


def test_complex_params_train_with_a_complex_state() -> None:
    tx = momentum_jax.momentum(0.1, 0.9)
    state = tx.init(jnp.zeros(2, jnp.complex64))
    updates, state = tx.update(jnp.full(2, 1 + 2j, jnp.complex64), state)
    np.testing.assert_allclose(updates, -0.1 * (1 + 2j), rtol=1e-6)


# --------------------------------------------------------------------------
# D6: callables where a number is needed, and what schedules return.
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "error", "pattern"),
    [
        (
            lambda: momentum_jax.momentum(0.1, weight_decay=lambda c: 0.1),
            TypeError,
            r"weight_decay must be a number or a scalar array, got the callable",
        ),
        (
            lambda: momentum_jax.scale_by_momentum(0.9, dampening=lambda c: 0.1),
            TypeError,
            r"dampening does not accept a schedule",
        ),
        (
            lambda: schedules.sutskever(lambda c: 0.9),
            TypeError,
            r"max_momentum must be a number or a scalar array, got the callable",
        ),
        (
            lambda: schedules.demon(0.9, 2**40),
            ValueError,
            r"total_steps must be a positive integer no larger than 2147483647.*2\*\*40|"
            r"total_steps must be a positive integer no larger than 2147483647.*1099511627776",
        ),
        (
            lambda: schedules.sutskever(0.9, steps_per_stage=2**31),
            ValueError,
            r"steps_per_stage must be a positive integer no larger than 2147483647",
        ),
    ],
    ids=["weight_decay", "dampening", "sutskever", "demon", "sutskever-stage"],
)
def test_bad_callables_and_counts_are_refused_at_build_time(
    build: Callable[[], Any], error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        build()


@pytest.mark.parametrize(
    "value", ["0.1", None, True, jnp.asarray(True), 0.1 + 0j, jnp.asarray(0.1 + 0j)]
)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_schedule_returning_a_non_real_scalar_is_refused(value: Any, jit: bool) -> None:
    for tx, arg in (
        (momentum_jax.momentum(lambda c: value), "learning_rate"),
        (momentum_jax.nesterov(0.1, lambda c: value), "momentum"),
        (momentum_jax.qhm(0.1, nu=lambda c: value), "nu"),
        (compat.torch_sgd(lambda c: value, 0.9), "lr"),
        (compat.tf1_momentum(lambda c: value, 0.9), "learning_rate"),
    ):
        update = jax.jit(tx.update) if jit else tx.update
        with pytest.raises(TypeError, match=rf"the {arg} schedule .* returned .*real scalar"):
            update(jnp.ones(2), tx.init(jnp.zeros(2)), jnp.zeros(2))


# --------------------------------------------------------------------------
# D7: another optimizer's state, swapped arguments.
# --------------------------------------------------------------------------


def test_another_optimizers_state_is_named() -> None:
    tx = momentum_jax.momentum(0.1)
    params = jnp.zeros(2)
    with pytest.raises(TypeError, match=r"expected .* a MomentumState, but got tuple"):
        tx.update(jnp.ones(2), optax.sgd(0.1, 0.9).init(params), params)
    qhm = momentum_jax.qhm(0.1)
    with pytest.raises(TypeError, match=r"momentum_jax.qhm: .* a QHMState, but got MomentumState"):
        qhm.update(jnp.ones(2), (tx.init(params), optax.EmptyState()), params)


def test_swapped_update_arguments_are_named() -> None:
    tx = momentum_jax.momentum(0.1)
    state = tx.init(jnp.zeros(2))
    with pytest.raises(TypeError, match=r"but got ArrayImpl. The gradients argument holds"):
        tx.update(state, jnp.ones(2))


# --------------------------------------------------------------------------
# D8: values checked in the dtype the arithmetic uses; messages.
# --------------------------------------------------------------------------


def test_momentum_that_rounds_to_one_in_float32_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"momentum=0\.9999999999, which is 1\.0 in float32.*grow without bound"
    ):
        momentum_jax.momentum(0.1, 0.9999999999)


def test_learning_rate_that_overflows_float32_is_refused() -> None:
    with pytest.raises(
        ValueError,
        match=r"learning_rate must be in \[0, inf\), got learning_rate=1e\+39, which is inf",
    ):
        momentum_jax.momentum(1e39)
    with pytest.raises(ValueError, match=r"lr must be in \[0, inf\), got lr=inf"):
        compat.torch_sgd(float("inf"))


def test_growth_hint_only_for_momentum_of_one_or_more() -> None:
    with pytest.raises(ValueError, match=r"momentum=-0\.5\.$"):
        momentum_jax.momentum(0.1, -0.5)
    with pytest.raises(ValueError, match=r"momentum=1\.5\. Values of 1 or more"):
        momentum_jax.momentum(0.1, 1.5)


def test_x64_checks_in_float64() -> None:
    with _jax_compat.enable_x64(True):
        momentum_jax.momentum(0.1, 0.9999999999)
