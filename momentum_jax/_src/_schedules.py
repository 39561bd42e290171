"""Momentum schedules: functions ``count -> momentum`` for the ``momentum`` argument."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from momentum_jax._src._checks import public


@public("momentum_jax.schedules.sutskever")
def sutskever(
    max_momentum: float | jax.Array, steps_per_stage: int | jax.Array = 250
) -> optax.Schedule:
    r"""The staged momentum schedule of Sutskever et al. (2013).

    .. math::

      \mu(t) = \min\left(1 - 2^{-1 - \log_2(\lfloor t / s \rfloor + 1)},\
      \mu_{\max}\right),

    where :math:`s` is ``steps_per_stage``. The momentum starts at 0.5 and
    rises at every stage boundary, through 0.75, 0.833, 0.875, 0.9, ... (the
    ``k``-th stage has :math:`1 - 1/(2k + 2)`), until it reaches
    :math:`\mu_{\max}`. Slow early steps let the iterate leave the region where
    the initial gradients point, then large momentum speeds up the long, low
    curvature directions.

    Args:
      max_momentum: the cap :math:`\mu_{\max}` in ``[0, 1)``; the paper tries
        0.9, 0.99, 0.995 and 0.999.
      steps_per_stage: :math:`s`, a positive integer: how many updates each
        stage lasts (250 in the paper). An integer array works too (traced, as
        in a sweep under ``jax.vmap``).

    Returns:
      A schedule ``count -> momentum`` returning a float32 scalar; pass it as
      the ``momentum`` of any momentum_jax transform. A count below 0 reads as
      0. Its values are NaN when a traced argument is out of range, which makes
      the update NaN.

    Example:
      >>> import jax.numpy as jnp
      >>> from momentum_jax import schedules
      >>> schedule = schedules.sutskever(0.9)
      >>> print(jnp.stack([schedule(t) for t in (0, 250, 500, 750, 1000, 5000)]))
      [0.5      0.75     0.8333   0.875    0.9      0.9     ]

    References:
      Sutskever, Martens, Dahl and Hinton, `On the importance of initialization
      and momentum in deep learning <https://proceedings.mlr.press/v28/sutskever13.html>`_,
      ICML 2013.
    """

    def schedule(count: Any) -> jax.Array:
        stage = jnp.maximum(jnp.floor_divide(jnp.asarray(count), steps_per_stage), 0)
        # 2^(-1 - log2(n)) is exactly 1 / (2n); this form avoids the float32
        # rounding of log2 and exp2, so stage values come out exact.
        rising = 1.0 - 0.5 / (stage.astype(jnp.float32) + 1.0)
        value = jnp.minimum(rising, jnp.asarray(max_momentum, jnp.float32))
        return _nan_unless_valid(value, max_momentum, steps_per_stage)

    return schedule


@public("momentum_jax.schedules.demon")
def demon(init_momentum: float | jax.Array, total_steps: int | jax.Array) -> optax.Schedule:
    r"""Decaying momentum (Demon): momentum that decays to zero over training.

    .. math::

      \mu(t) = \frac{\beta_0 (1 - t/T)}{(1 - \beta_0) + \beta_0 (1 - t/T)}
      \quad (t < T), \qquad \mu(t) = 0 \quad (t \ge T).

    The factor :math:`\mu/(1 - \mu)`, the total weight that momentum gives to
    one gradient over all future steps, falls linearly from
    :math:`\beta_0/(1 - \beta_0)` to zero. Set :math:`T` to the total number of
    updates in training.

    Args:
      init_momentum: :math:`\beta_0` in ``[0, 1)``, the momentum at ``t = 0``
        (0.9 in the paper).
      total_steps: :math:`T`, a positive integer; the momentum is 0 from this
        update count on. An integer array works too (traced, as in a sweep
        under ``jax.vmap``).

    Returns:
      The function ``count -> momentum`` (a float32 scalar), for the
      ``momentum`` argument of any transform here. A count below 0 reads as 0.
      Its values are NaN when a traced argument is out of range, which makes
      the update NaN.

    Example:
      >>> from momentum_jax import schedules
      >>> import jax.numpy as jnp
      >>> schedule = schedules.demon(0.9, total_steps=100)
      >>> print(jnp.stack([schedule(t) for t in (0, 25, 50, 75, 100, 150)]))
      [0.9      0.871    0.8182   0.6923   0.       0.      ]

    References:
      Chen, Wolfe, Li and Kyrillidis, `Demon: improved neural network training with
      momentum decay <https://arxiv.org/abs/1910.04952>`_, ICASSP 2022.
    """

    def schedule(count: Any) -> jax.Array:
        # Multiplying through by T gives beta0 (T - t) / (T - beta0 t): one
        # division, which is exactly 1 at t = 0 (so mu = beta0 exactly) and
        # exactly 0 at t = T. Clipping the count gives 0 from t = T on (and
        # treats t < 0 as t = 0). T - t is taken in integers: in float32 it would
        # be wrong near the end for T > 2**24.
        done = jnp.clip(jnp.asarray(count), 0, total_steps)
        left = (total_steps - done).astype(jnp.float32)
        beta = jnp.asarray(init_momentum, jnp.float32)
        value = beta * (left / (total_steps - beta * done.astype(jnp.float32)))
        return _nan_unless_valid(value, init_momentum, total_steps)

    return schedule


def _nan_unless_valid(value: jax.Array, momentum: Any, steps: Any) -> jax.Array:
    """``value`` (float32), or NaN where a traced argument, which no check saw when the
    schedule was built, is out of range: a momentum outside ``[0, 1)``, steps below 1."""
    mu = jnp.asarray(momentum, jnp.float32)
    valid = (mu >= 0) & (mu < 1) & (jnp.asarray(steps) >= 1)
    return jnp.where(valid, value, jnp.nan).astype(jnp.float32)
