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


@pytest.mark.parametrize("nesterov", [False, True])
def test_a_momentum_schedule_matches_keras_setting_its_momentum_every_step(
    nesterov: bool,
) -> None:
    # Keras' Nesterov step uses this step's momentum twice; momentum_jax.nesterov would look
    # one step ahead (mu_{t+1}), which Keras cannot express.
    reference = _keras_trajectory({"momentum": 0.5, "nesterov": nesterov}, True, _momenta)
    ours = _problems.trajectory(compat.keras_sgd(_schedule, _momenta, nesterov), STEPS)
    _problems.assert_trajectories_close(ours, reference)


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
