"""Hyperparameters that cannot be checked in Python: out of range is loud, never silent.

A value checked when the transform is built raises a ``ValueError`` there. One that
is traced (a jitted init under ``optax.inject_hyperparams``) or produced by a
schedule is checked by a scalar select in the update: out of its range, the update
is NaN, which ``optax.apply_if_finite`` skips and counts.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import momentum_jax
from momentum_jax import compat

PARAMS = {"w": jnp.linspace(-1, 1, 8, dtype=jnp.bfloat16)}


def _grads(t: int) -> dict[str, jax.Array]:
    return {"w": (jnp.linspace(1, 2, 8) * (1 + t)).astype(jnp.bfloat16)}


def test_a_momentum_rounded_to_one_by_bfloat16_is_refused_eagerly_with_the_fix() -> None:
    tx = optax.inject_hyperparams(momentum_jax.momentum)(learning_rate=1e-3, momentum=0.999)
    with pytest.raises(
        ValueError, match=r"momentum must be in \[0, 1\).*hyperparam_dtype=jnp.float32"
    ):
        tx.init(PARAMS)


def _run(tx: optax.GradientTransformation, steps: int = 3) -> tuple[list[bool], object]:
    state = jax.jit(tx.init)(PARAMS)
    update = jax.jit(tx.update)
    finite = []
    for t in range(steps):
        updates, state = update(_grads(t), state, PARAMS)
        finite.append(bool(jnp.all(jnp.isfinite(updates["w"].astype(jnp.float32)))))
    return finite, state


@pytest.mark.parametrize(
    ("make", "first"),
    [
        # 0.999 in bfloat16 is 1.0: the velocity would never decay.
        (
            lambda: optax.inject_hyperparams(momentum_jax.momentum)(
                learning_rate=1e-3, momentum=0.999
            ),
            0,
        ),
        (lambda: optax.inject_hyperparams(momentum_jax.nesterov)(learning_rate=-1e-3), 0),
        (lambda: optax.inject_hyperparams(momentum_jax.qhm)(learning_rate=0.1, nu=1.5), 0),
        # The first update is undamped, and Lion's sign reads the buffer before b2 decays it:
        # the value still shows at once.
        (
            lambda: optax.inject_hyperparams(compat.torch_sgd)(lr=0.1, momentum=0.9, dampening=1.0),
            0,
        ),
        (lambda: optax.inject_hyperparams(momentum_jax.scale_by_momentum)(dampening=1.5), 0),
        (lambda: optax.inject_hyperparams(momentum_jax.lion)(learning_rate=1e-3, b2=1.5), 0),
        (lambda: optax.inject_hyperparams(momentum_jax.lion)(learning_rate=1e-3, b2=-0.5), 0),
        (
            lambda: optax.inject_hyperparams(momentum_jax.momentum)(
                learning_rate=1e-3, momentum=0.9, weight_decay=-0.1
            ),
            0,
        ),
        # Schedules that leave the range at the second update.
        (lambda: momentum_jax.momentum(0.1, lambda count: jnp.where(count < 1, 0.9, 1.0)), 1),
        (lambda: momentum_jax.scale_by_momentum(lambda count: 0.5 + count * 0.5), 1),
        # A schedule may return a Python number, which no build-time check sees.
        (lambda: momentum_jax.momentum(0.1, optax.constant_schedule(1.5)), 0),
        (lambda: compat.torch_sgd(optax.constant_schedule(-0.1), momentum=0.9), 0),
        (lambda: momentum_jax.qhm(0.1, 0.9, optax.constant_schedule(2.0)), 0),
        # Lion's sign reads the old buffer: a b2 of 1.0 must show at once, as an array's does.
        (lambda: momentum_jax.lion(0.1, b2=lambda count: 1.0), 0),
        # Nesterov needs dampening 0 (PyTorch's rule): a traced 0.3 is as wrong as 1.5.
        (
            lambda: optax.inject_hyperparams(compat.torch_sgd, static_args=("nesterov",))(
                lr=0.1, momentum=0.9, dampening=0.3, nesterov=True
            ),
            0,
        ),
        (
            lambda: optax.inject_hyperparams(
                momentum_jax.scale_by_momentum, static_args=("nesterov",)
            )(dampening=0.3, nesterov=True),
            0,
        ),
        # Lion's b1 and decay, QHM's momentum, AggMo's momenta, the presets' weight decay.
        (lambda: optax.inject_hyperparams(momentum_jax.lion)(learning_rate=1e-3, b1=1.5), 0),
        (
            lambda: optax.inject_hyperparams(momentum_jax.lion)(
                learning_rate=1e-3, weight_decay=-0.5
            ),
            0,
        ),
        (lambda: optax.inject_hyperparams(momentum_jax.qhm)(learning_rate=0.1, momentum=1.5), 0),
        (
            lambda: optax.inject_hyperparams(momentum_jax.aggmo)(
                learning_rate=0.1, momenta=jnp.asarray([0.0, 1.5])
            ),
            0,
        ),
        (
            lambda: optax.inject_hyperparams(compat.torch_sgd)(
                lr=0.1, momentum=0.9, weight_decay=-0.5
            ),
            0,
        ),
        (
            lambda: optax.inject_hyperparams(compat.keras_sgd)(
                learning_rate=0.1, momentum=0.9, weight_decay=-0.5
            ),
            0,
        ),
        (lambda: momentum_jax.lion(0.1, b1=lambda count: 1.0), 0),
        (lambda: momentum_jax.qhm(0.1, lambda count: 1.0), 0),
        # Integers injected as int32 arrays, traced by the jitted init.
        (lambda: optax.inject_hyperparams(momentum_jax.momentum)(learning_rate=-1, momentum=0), 0),
        (lambda: optax.inject_hyperparams(momentum_jax.momentum)(learning_rate=0.1, momentum=2), 0),
    ],
    ids=[
        "bf16_momentum_one",
        "negative_lr",
        "nu",
        "torch_dampening",
        "block_dampening",
        "lion_b2",
        "lion_negative_b2",
        "weight_decay",
        "momentum_schedule",
        "block_schedule",
        "python_momentum_schedule",
        "python_lr_schedule",
        "python_nu_schedule",
        "python_lion_b2_schedule",
        "torch_nesterov_dampening",
        "block_nesterov_dampening",
        "lion_b1",
        "lion_weight_decay",
        "qhm_momentum",
        "aggmo_momenta",
        "torch_weight_decay",
        "keras_weight_decay",
        "python_lion_b1_schedule",
        "python_qhm_momentum_schedule",
        "int_lr",
        "int_momentum",
    ],
)
def test_out_of_range_traced_values_make_the_update_non_finite(make: Any, first: int) -> None:
    # From the first update that uses the value on, every update is non-finite.
    finite, _ = _run(make())
    assert finite == [True] * first + [False] * (3 - first)


def test_apply_if_finite_sees_such_updates_and_a_float32_hyperparam_dtype_trains() -> None:
    inject = optax.inject_hyperparams(momentum_jax.momentum)
    # apply_if_finite checks what it receives: put it after the transform.
    guarded = optax.chain(
        inject(learning_rate=1e-3, momentum=0.999), optax.apply_if_finite(optax.identity(), 10)
    )
    finite, state = _run(guarded)
    assert finite == [True, True, True]  # apply_if_finite returned zeros
    assert int(state[1].total_notfinite) == 3
    fixed = optax.inject_hyperparams(momentum_jax.momentum, hyperparam_dtype=jnp.float32)
    finite, state = _run(fixed(learning_rate=1e-3, momentum=0.999))
    assert finite == [True, True, True]
    np.testing.assert_allclose(float(state.hyperparams["momentum"]), 0.999, rtol=1e-7)
