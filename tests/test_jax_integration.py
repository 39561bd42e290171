"""The transforms inside real JAX programs: jit, scan, cond, optax wrappers."""

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
from tests import _problems


def _decay(count: Any) -> Any:
    return 0.05 / (1.0 + 0.1 * count)


def _rising(count: Any) -> Any:
    return jnp.minimum(0.5 + 0.05 * count, 0.95)


FACTORIES: dict[str, Callable[[], optax.GradientTransformation]] = {
    "momentum": lambda: momentum_jax.momentum(_decay, 0.9),
    "momentum_wd": lambda: momentum_jax.momentum(0.05, _rising, weight_decay=0.01),
    "nesterov": lambda: momentum_jax.nesterov(_decay, _rising),
    "scale_by_momentum": lambda: optax.chain(
        momentum_jax.scale_by_momentum(0.9, dampening=0.1), optax.scale_by_learning_rate(_decay)
    ),
    "scale_by_momentum_nesterov": lambda: optax.chain(
        momentum_jax.scale_by_momentum(_rising, nesterov=True), optax.scale_by_learning_rate(0.05)
    ),
    "torch_sgd": lambda: compat.torch_sgd(_decay, 0.9, dampening=0.1, weight_decay=0.01),
    "keras_sgd": lambda: compat.keras_sgd(_decay, 0.9, nesterov=True, weight_decay=0.01),
    "tf1_momentum": lambda: compat.tf1_momentum(_decay, 0.9, use_nesterov=True),
}

factory_params = pytest.mark.parametrize("factory", list(FACTORIES.values()), ids=list(FACTORIES))


def _step(tx: optax.GradientTransformation) -> Callable[[Any, Any], tuple[Any, Any]]:
    def step(params: Any, state: Any) -> tuple[Any, Any]:
        grads = jax.grad(_problems.loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def _signature(tree: Any) -> Any:
    return jax.tree.structure(tree), [
        (jnp.shape(x), jnp.result_type(x)) for x in jax.tree.leaves(tree)
    ]


@factory_params
def test_jit_equals_eager(factory: Callable[[], optax.GradientTransformation]) -> None:
    tx = factory()
    eager = _problems.trajectory(tx, 12)
    step = jax.jit(_step(tx))
    params = _problems.initial_params()
    state = tx.init(params)
    for expected in eager:
        params, state = step(params, state)
        for key in expected:
            np.testing.assert_allclose(params[key], expected[key], rtol=1e-5, atol=1e-7)
    assert np.linalg.norm(eager[-1]["w"] - eager[0]["w"]) > 1e-2


@factory_params
def test_second_jitted_step_does_not_retrace(
    factory: Callable[[], optax.GradientTransformation],
) -> None:
    tx = factory()
    traces = []

    def step(params: Any, state: Any) -> tuple[Any, Any]:
        traces.append(1)
        return _step(tx)(params, state)

    jitted = jax.jit(step, donate_argnums=(0, 1))
    params = _problems.initial_params()
    state = tx.init(params)
    for _ in range(4):
        params, state = jitted(params, state)
    assert len(traces) == 1


@factory_params
def test_state_is_a_stable_scan_and_cond_carry(
    factory: Callable[[], optax.GradientTransformation],
) -> None:
    tx = factory()
    params = _problems.initial_params()
    state = tx.init(params)
    before = _signature(state)

    def body(carry: Any, _: Any) -> tuple[Any, jax.Array]:
        params, state = carry
        new_params, new_state = _step(tx)(params, state)
        # lax.cond demands identical structure, shapes and dtypes on both branches.
        take = _problems.loss(new_params) < _problems.loss(params) + 10.0
        params, state = jax.lax.cond(take, lambda: (new_params, new_state), lambda: (params, state))
        return (params, state), _problems.loss(params)

    (params, state), losses = jax.lax.scan(body, (params, state), length=25)
    assert _signature(state) == before
    assert float(losses[-1]) < float(losses[0])
    # The scan gives the same iterates as the eager loop.
    eager = _problems.trajectory(tx, 25)
    np.testing.assert_allclose(params["w"], eager[-1]["w"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nesterov", [False, True])
def test_inject_hyperparams_gives_the_same_trajectory(nesterov: bool) -> None:
    direct = momentum_jax.momentum(_decay, 0.9, nesterov=nesterov)
    injected = optax.inject_hyperparams(momentum_jax.momentum)(
        learning_rate=_decay, momentum=0.9, nesterov=nesterov
    )
    expected = _problems.trajectory(direct, 20)
    step = jax.jit(_step(injected))
    params = _problems.initial_params()
    state = injected.init(params)
    for target in expected:
        params, state = step(params, state)
        np.testing.assert_allclose(params["w"], target["w"], rtol=1e-5, atol=1e-6)
    # The injected learning rate is visible and editable in the state.
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(_decay(19), rel=1e-6)


def test_inject_hyperparams_on_the_nesterov_alias() -> None:
    injected = optax.inject_hyperparams(momentum_jax.nesterov)(learning_rate=_decay, momentum=0.9)
    expected = _problems.trajectory(momentum_jax.nesterov(_decay, 0.9), 15)
    got = _problems.trajectory(injected, 15)
    _problems.assert_trajectories_close(got, expected, rtol=1e-5, atol=1e-6)
    assert set(got[-1]) == {"w", "b"}


def test_inject_hyperparams_without_params_needs_static_weight_decay() -> None:
    injected = optax.inject_hyperparams(momentum_jax.momentum)(learning_rate=0.1)
    grads = jnp.ones(3)
    state = injected.init(grads)
    with pytest.raises(ValueError, match=r"weight_decay=.*needs the params.*static_args"):
        jax.jit(injected.update)(grads, state)
    static = optax.inject_hyperparams(momentum_jax.momentum, static_args=("weight_decay",))(
        learning_rate=0.1
    )
    updates, _ = jax.jit(static.update)(grads, static.init(grads))
    np.testing.assert_allclose(updates, -0.1 * np.ones(3), rtol=1e-6)


def test_inside_chain_with_clipping() -> None:
    tx = optax.chain(optax.clip_by_global_norm(0.5), momentum_jax.momentum(0.1, 0.9))
    grads = [np.array([3.0, 4.0], np.float32), np.array([0.3, 0.0], np.float32)]
    state = tx.init(jnp.zeros(2))
    u1, state = tx.update(jnp.asarray(grads[0]), state)
    u2, state = tx.update(jnp.asarray(grads[1]), state)
    v1 = 0.1 * grads[0] * (0.5 / 5.0)
    v2 = 0.9 * v1 + 0.1 * grads[1]
    np.testing.assert_allclose(u1, -v1, rtol=1e-6)
    np.testing.assert_allclose(u2, -v2, rtol=1e-6)


def test_inside_optax_masked() -> None:
    params = {"kernel": jnp.ones(2), "bias": jnp.ones(2)}
    tx = optax.masked(momentum_jax.momentum(0.1, 0.9), {"kernel": True, "bias": False})
    state = tx.init(params)
    grads = [
        {"kernel": jnp.array([1.0, 2.0]), "bias": jnp.array([3.0, 4.0])},
        {"kernel": jnp.array([-1.0, 0.5]), "bias": jnp.array([5.0, 6.0])},
    ]
    _, state = tx.update(grads[0], state, params)
    u2, state = tx.update(grads[1], state, params)
    np.testing.assert_allclose(
        u2["kernel"], -(0.9 * 0.1 * np.array([1.0, 2.0]) + 0.1 * np.array([-1.0, 0.5])), rtol=1e-6
    )
    # Masked-out leaves pass through untouched.
    np.testing.assert_allclose(u2["bias"], [5.0, 6.0])


def test_inside_optax_multisteps() -> None:
    """Every second call applies momentum to the mean of two gradients."""
    tx = optax.MultiSteps(momentum_jax.momentum(0.1, 0.9), every_k_schedule=2)
    params = jnp.zeros(2)
    state = tx.init(params)
    grads = [np.array(g, np.float32) for g in ([1.0, 2.0], [3.0, 0.0], [-1.0, 1.0], [1.0, 1.0])]
    applied = []
    for g in grads:
        u, state = tx.update(jnp.asarray(g), state, params)
        applied.append(np.asarray(u))
    v1 = 0.1 * (grads[0] + grads[1]) / 2
    v2 = 0.9 * v1 + 0.1 * (grads[2] + grads[3]) / 2
    np.testing.assert_allclose(applied[0], 0.0)
    np.testing.assert_allclose(applied[1], -v1, rtol=1e-6)
    np.testing.assert_allclose(applied[3], -v2, rtol=1e-6)


@pytest.mark.parametrize(
    "factory",
    [
        lambda: momentum_jax.momentum(0.1, 0.9, weight_decay=0.1),
        lambda: momentum_jax.scale_by_momentum(0.9, dampening=0.2),
        lambda: compat.keras_sgd(0.1, 0.9, weight_decay=0.1),
    ],
    ids=["momentum", "scale_by_momentum", "keras_sgd"],
)
def test_none_leaves_are_left_alone(factory: Callable[[], optax.GradientTransformation]) -> None:
    tx = factory()
    params = {"a": jnp.ones(2), "frozen": None}
    state = tx.init(params)
    for g in ([1.0, -1.0], [0.5, 2.0]):
        updates, state = tx.update({"a": jnp.array(g), "frozen": None}, state, params)
        assert updates["frozen"] is None
        params = optax.apply_updates(params, updates)
    assert params["frozen"] is None
    assert np.all(np.asarray(params["a"]) != 1.0)


@pytest.mark.parametrize("nesterov", [False, True])
def test_bfloat16_params_with_float32_accumulator(nesterov: bool) -> None:
    tx = momentum_jax.momentum(0.01, 0.99, nesterov=nesterov, accumulator_dtype=jnp.float32)
    params = jnp.ones(4, jnp.bfloat16)
    state = tx.init(params)
    assert state.velocity.dtype == jnp.float32
    step = jax.jit(lambda p, s, g: tx.update(g, s, p))
    velocity = np.zeros(4, np.float64)
    for k in range(20):
        grads = (jnp.arange(4, dtype=jnp.float32) * 1e-3 + k * 1e-4).astype(jnp.bfloat16)
        updates, state = step(params, state, grads)
        assert updates.dtype == jnp.bfloat16
        assert state.velocity.dtype == jnp.float32
        params = optax.apply_updates(params, updates)
        assert params.dtype == jnp.bfloat16
        velocity = 0.99 * velocity + 0.01 * np.asarray(grads, np.float64)
    # The float32 buffer keeps increments far below bfloat16's resolution.
    np.testing.assert_allclose(state.velocity, velocity, rtol=1e-5)


def test_bfloat16_params_default_accumulator_stays_bfloat16() -> None:
    tx = momentum_jax.momentum(jnp.asarray(0.1, jnp.float32), 0.9)
    params = jnp.ones(3, jnp.bfloat16)
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update(jnp.full(3, 0.5, jnp.bfloat16), state, params)
        assert state.velocity.dtype == jnp.bfloat16
        assert updates.dtype == jnp.bfloat16


def test_state_is_a_documented_namedtuple() -> None:
    state = momentum_jax.momentum(0.1).init({"w": jnp.zeros((2, 3))})
    assert isinstance(state, momentum_jax.MomentumState)
    assert state._fields[:2] == ("count", "velocity")
    assert state.count.dtype == jnp.int32
    assert state.count.shape == ()
    assert state.velocity["w"].shape == (2, 3)
    assert momentum_jax.MomentumState.__doc__


def test_counter_saturates_instead_of_overflowing() -> None:
    tx = momentum_jax.momentum(0.1, 0.9)
    params = jnp.zeros(2)
    state = tx.init(params)._replace(count=jnp.asarray(np.iinfo(np.int32).max - 1, jnp.int32))
    for _ in range(3):
        _, state = tx.update(jnp.ones(2), state, params)
    assert int(state.count) == np.iinfo(np.int32).max


def test_injected_weight_decay_keeps_bfloat16_updates() -> None:
    """A float32 weight decay from inject_hyperparams must not widen bf16 updates."""
    tx = optax.inject_hyperparams(momentum_jax.momentum, hyperparam_dtype=jnp.float32)(
        learning_rate=0.1, momentum=0.9, weight_decay=0.01
    )
    params = jnp.ones(3, jnp.bfloat16)
    state = tx.init(params)
    for _ in range(2):
        updates, state = tx.update(jnp.full(3, 0.5, jnp.bfloat16), state, params)
        assert updates.dtype == jnp.bfloat16
        assert state.inner_state.velocity.dtype == jnp.bfloat16
    expected = -(0.9 * 0.1 * 0.51 + 0.1 * 0.51)
    np.testing.assert_allclose(np.asarray(updates, np.float32), expected, rtol=2e-2)
