"""compat.keras_sgd and momentum_jax.momentum against the real Keras 3 SGD."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import momentum_jax
from momentum_jax import compat
from tests import _problems

keras = pytest.importorskip("keras")

STEPS = 30


def _keras_trajectory(
    options: dict[str, Any], schedule: bool, momenta: Any = None
) -> list[dict[str, np.ndarray]]:
    """Keras' SGD; with ``momenta``, its momentum set to ``momenta(t)`` before step ``t``, as a
    callback scheduling it does (Keras reads the attribute at every step)."""
    lr: Any = (
        keras.optimizers.schedules.ExponentialDecay(0.08, decay_steps=5, decay_rate=0.7)
        if schedule
        else 0.08
    )
    opt = keras.optimizers.SGD(learning_rate=lr, **options)
    variables = {"w": keras.Variable(_problems.W0), "b": keras.Variable(_problems.B0)}
    opt.build(list(variables.values()))  # with its momentum variables, even if momenta(0) == 0
    grad = _problems.gradient()
    out = []
    for t in range(STEPS):
        if momenta is not None:
            opt.momentum = float(momenta(t))
        values = {k: np.asarray(v.value) for k, v in variables.items()}
        grads = grad(values)
        opt.apply_gradients([(np.asarray(grads[k]), variables[k]) for k in ("w", "b")])
        out.append({k: np.asarray(v.value).copy() for k, v in variables.items()})
    return out


def _schedule(count: Any) -> Any:
    return 0.08 * 0.7 ** (count / 5)


OPTIONS = [
    pytest.param({"momentum": 0.9}, id="momentum"),
    pytest.param({"momentum": 0.9, "nesterov": True}, id="nesterov"),
    pytest.param({"momentum": 0.9, "weight_decay": 0.05}, id="weight_decay"),
    pytest.param({"momentum": 0.85, "nesterov": True, "weight_decay": 0.05}, id="nesterov_wd"),
    pytest.param({"momentum": 0.0, "weight_decay": 0.05}, id="plain_sgd"),
]


@pytest.mark.parametrize("schedule", [False, True], ids=["constant_lr", "exponential_decay"])
@pytest.mark.parametrize("options", OPTIONS)
def test_matches_keras_sgd(options: dict[str, Any], schedule: bool) -> None:
    reference = _keras_trajectory(options, schedule)
    tx = compat.keras_sgd(_schedule if schedule else 0.08, **options)
    ours = _problems.trajectory(tx, STEPS)
    _problems.assert_trajectories_close(ours, reference)
    assert np.linalg.norm(ours[-1]["w"] - _problems.W0) > 0.5


@pytest.mark.parametrize("nesterov", [False, True])
def test_core_momentum_is_keras_sgd(nesterov: bool) -> None:
    """The seed formula (learning rate inside the velocity) is Keras' SGD."""
    reference = _keras_trajectory({"momentum": 0.9, "nesterov": nesterov}, schedule=True)
    ours = _problems.trajectory(momentum_jax.momentum(_schedule, 0.9, nesterov=nesterov), STEPS)
    _problems.assert_trajectories_close(ours, reference)


def _momenta(count: Any) -> Any:
    return 0.5 + 0.45 * (count % 3) / 2  # 0.5, 0.725, 0.95, 0.5, ...


def _momenta_with_zeros(count: Any) -> Any:
    """A warm-up from 0 and momentum 0 at some later steps: 0, 0, 0.9, 0, 0.8, 0.95, ..."""
    return jnp.asarray([0.0, 0.0, 0.9, 0.0, 0.8, 0.95])[count % 6]


@pytest.mark.parametrize("momenta", [_momenta, _momenta_with_zeros], ids=["moving", "zeros"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_a_momentum_schedule_matches_keras_setting_its_momentum_every_step(
    nesterov: bool, momenta: Any
) -> None:
    """Keras' Nesterov step uses this step's momentum twice (momentum_jax.nesterov would look
    one step ahead, which Keras cannot express); at a step whose momentum is 0 Keras takes a
    plain SGD step and leaves its velocity as it is. So do the schedule and, set before each
    step, a momentum injected with optax.inject_hyperparams."""
    reference = _keras_trajectory({"momentum": 0.5, "nesterov": nesterov}, True, momenta)
    ours = _problems.trajectory(compat.keras_sgd(_schedule, momenta, nesterov), STEPS)
    _problems.assert_trajectories_close(ours, reference)
    injected = optax.inject_hyperparams(compat.keras_sgd, static_args=("nesterov",))
    tx = injected(learning_rate=_schedule, momentum=0.5, nesterov=nesterov)
    params, grad = _problems.initial_params(), _problems.gradient()
    state = tx.init(params)
    for t in range(STEPS):
        state.hyperparams["momentum"] = jnp.asarray(momenta(t), jnp.float32)
        updates, state = tx.update(grad(params), state, params)
        params = optax.apply_updates(params, updates)
    _problems.assert_trajectories_close([params], reference[-1:])


def test_accumulating_an_update_whose_momentum_is_0_is_nan() -> None:
    """Keras steps on the mean gradient there and keeps its velocity: no state keeps both."""
    tx = compat.keras_sgd(
        0.1, lambda n: jnp.asarray([0.9, 0.0])[n % 2], gradient_accumulation_steps=2
    )
    theta = jnp.ones(2)
    state, outs = tx.init(theta), []
    for g in (1.0, 2.0, 3.0, 4.0):
        updates, state = tx.update(jnp.full(2, g), state, theta)
        outs.append(np.asarray(updates))
    np.testing.assert_allclose(outs[1], -0.15, rtol=1e-6)  # -lr * mean(1, 2), mu = 0.9
    assert (outs[0] == 0).all()
    assert (outs[2] == 0).all()
    assert np.isnan(outs[3]).all()


@pytest.mark.parametrize("nesterov", [False, True])
def test_bfloat16_variables_with_float32_schedules_match_keras_bit_for_bit(
    nesterov: bool,
) -> None:
    # Keras casts its momentum and learning rate to the variable's dtype: a float32
    # schedule value must meet a bfloat16 velocity as bfloat16, as a Python number does.
    momenta = momentum_jax.schedules.sutskever(0.9, steps_per_stage=1)
    opt = keras.optimizers.SGD(0.5, momentum=0.5, nesterov=nesterov)
    variable = keras.Variable(np.linspace(-1, 1, 8, dtype=np.float32), dtype="bfloat16")
    tx = compat.keras_sgd(lambda n: jnp.float32(0.5), momenta, nesterov)
    params = jnp.linspace(-1, 1, 8, dtype=jnp.float32).astype(jnp.bfloat16)
    state = tx.init(params)
    for t in range(12):
        grad = jnp.cos(3.0 * params.astype(jnp.float32) + t).astype(jnp.bfloat16)
        opt.momentum = float(momenta(t))
        opt.apply([keras.ops.convert_to_tensor(grad)], [variable])
        updates, state = tx.update(grad, state, params)
        params = optax.apply_updates(params, updates)
        keras_params = np.asarray(keras.ops.cast(variable.value, "float32"))
        np.testing.assert_array_equal(np.asarray(params, np.float32), keras_params)


@pytest.mark.parametrize(
    ("keras_clip", "clip"),
    [
        ({"global_clipnorm": 1.0}, optax.clip_by_global_norm(1.0)),
        ({"clipvalue": 0.5}, optax.clip(0.5)),
    ],
    ids=["global_clipnorm", "clipvalue"],
)
def test_clipping_with_accumulation_is_multisteps_around_the_chain(
    keras_clip: dict[str, float], clip: optax.GradientTransformation
) -> None:
    """docs/porting.md: accumulating, Keras clips the mean gradient. MultiSteps around the
    chain does too (its schedule read at Keras' call count); a clip chained before
    keras_sgd(gradient_accumulation_steps=K) clips each gradient, which differs."""
    k, calls = 2, 8
    keras_lr = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=3, decay_rate=0.7)
    settings = {"momentum": 0.9, "weight_decay": 1e-2}
    opt = keras.optimizers.SGD(keras_lr, gradient_accumulation_steps=k, **settings, **keras_clip)
    variable = keras.Variable(_problems.W0)
    opt.build([variable])
    schedule = optax.exponential_decay(0.05, 3, 0.7)
    recipe = optax.MultiSteps(
        optax.chain(clip, compat.keras_sgd(lambda n: schedule(n * k + k - 1), **settings)), k
    )
    chained = optax.chain(
        clip, compat.keras_sgd(schedule, **settings, gradient_accumulation_steps=k)
    )

    def grad(theta: Any, t: int) -> Any:
        return _problems.gradient()({"w": theta, "b": _problems.B0})["w"] + 0.5 * np.sin(t + 1.0)

    thetas = {"recipe": jnp.asarray(_problems.W0), "chained": jnp.asarray(_problems.W0)}
    txs = {"recipe": recipe, "chained": chained}
    states = {key: tx.init(thetas[key]) for key, tx in txs.items()}
    for t in range(calls):
        opt.apply_gradients([(np.asarray(grad(np.asarray(variable.value), t)), variable)])
        for key, tx in txs.items():
            updates, states[key] = tx.update(grad(thetas[key], t), states[key], thetas[key])
            thetas[key] = optax.apply_updates(thetas[key], updates)
    expected = np.asarray(variable.value)
    np.testing.assert_allclose(thetas["recipe"], expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(thetas["chained"], expected, rtol=1e-4, atol=1e-5)
