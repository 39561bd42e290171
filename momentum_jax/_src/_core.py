"""Heavy-ball and Nesterov momentum as optax gradient transformations."""

from __future__ import annotations

from typing import Any, cast

import jax
import jax.numpy as jnp
import optax

from momentum_jax._src import _base
from momentum_jax._src._base import MomentumState, ScalarOrSchedule


def _cast(x: jax.Array, dtype: Any) -> jax.Array:
    # A Python-level test on a static dtype: no cast traced when none is needed,
    # which keeps tracing cheap for models with thousands of arrays.
    return x if x.dtype == dtype else x.astype(dtype)


def _widen(g: jax.Array, buffer: jax.Array) -> jax.Array:
    # Arithmetic happens in the wider of the gradient and buffer dtypes, so a
    # float32 buffer for bfloat16 params really accumulates in float32.
    return g if g.dtype == buffer.dtype else g.astype(jnp.promote_types(g.dtype, buffer.dtype))


def _velocity_step(g: jax.Array, v: jax.Array, lr: Any, mu: Any) -> jax.Array:
    # The learning rate multiplies only the new gradient, so a schedule never
    # rescales the history already in the velocity (Sutskever et al., 2013).
    return _cast(mu * v + lr * _widen(g, v), v.dtype)


def _heavy_ball_update(g: jax.Array, v: jax.Array) -> jax.Array:
    # -v, written as a multiply by -1 (exact, bit-identical to a negation):
    # XLA:CPU keeps the multiply, and compiles the param update p + v*(-1)
    # that apply_updates then builds into a faster loop than p + (-v), about
    # 10% on a 10M-param step. See benchmarks/xla_cpu_probes.py.
    return _cast(v * -1.0, g.dtype)


def _look_ahead_update(g: jax.Array, v: jax.Array, lr: Any, mu_next: Any) -> jax.Array:
    return _cast(-(mu_next * v + lr * _widen(g, v)), g.dtype)


def _buffer_step(g: jax.Array, b: jax.Array, mu: Any, damping: Any) -> jax.Array:
    return _cast(mu * b + damping * _widen(g, b), b.dtype)


def _buffer_look_ahead(g: jax.Array, b: jax.Array, mu: Any) -> jax.Array:
    return _cast(_widen(g, b) + mu * b, g.dtype)


def momentum(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule = 0.9,
    *,
    nesterov: bool = False,
    weight_decay: float | jax.Array = 0.0,
    accumulator_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Momentum with the learning rate inside the velocity (heavy ball or Nesterov).

    The velocity accumulates learning-rate-scaled gradients and the params move
    against it, the formulation of Keras' ``SGD`` and of Sutskever et al.
    (2013). With ``g_t`` the gradient of the ``t``-th update:

    .. math::

      v_0 = 0, \qquad v_t = \mu_t v_{t-1} + \alpha_t g_t, \qquad
      u_t = -v_t \quad \text{(heavy ball)}, \qquad
      u_t = -(\mu_{t+1} v_t + \alpha_t g_t) \quad \text{(Nesterov)},

    and ``optax.apply_updates`` adds ``u_t`` to the params. When
    ``weight_decay`` is not zero the gradient is first replaced by
    :math:`g_t + \lambda \theta_t` (coupled L2 decay).

    Because :math:`\alpha_t` multiplies only the newest gradient, a learning-rate
    schedule changes the size of new contributions without rescaling the
    velocity already built up. Frameworks that apply the learning rate outside
    the buffer (PyTorch, optax, TF1) give different iterates under a schedule;
    :mod:`momentum_jax.compat` reproduces those exactly.

    The Nesterov form is the exact reparameterisation of Sutskever's look-ahead
    method: the params hold :math:`\theta + \mu v`, and the look-ahead
    coefficient :math:`\mu_{t+1}` is the momentum schedule evaluated one step
    ahead, so the equivalence also holds for a scheduled momentum.

    Hyperparameters may be numbers, scalar arrays or optax schedules; a schedule
    is evaluated at the number of updates already done (0 for the first).

    Args:
      learning_rate: the step size :math:`\alpha_t` (``>= 0``), or a schedule.
      momentum: the decay :math:`\mu_t` of the velocity, in ``[0, 1)``, or a
        schedule such as :func:`momentum_jax.schedules.sutskever`.
      nesterov: use the Nesterov look-ahead update instead of the heavy ball.
      weight_decay: coupled L2 coefficient :math:`\lambda \ge 0`. When it is
        not a concrete zero, ``params`` must be passed to ``update``.
      accumulator_dtype: dtype of the velocity; ``None`` keeps each param's
        dtype. ``jnp.float32`` keeps an exact buffer for bfloat16 params.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`momentum_jax.MomentumState`.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import momentum_jax
      >>> def loss(params):
      ...   return jnp.sum(jnp.array([1.0, 10.0]) * params ** 2)
      >>> optimizer = momentum_jax.momentum(learning_rate=0.02, momentum=0.9)
      >>> params = jnp.array([1.0, 1.0])
      >>> state = optimizer.init(params)
      >>> for _ in range(3):
      ...   grads = jax.grad(loss)(params)
      ...   updates, state = optimizer.update(grads, state, params)
      ...   params = optax.apply_updates(params, updates)
      >>> print(params)
      [ 0.7832 -0.5400]

    References:
      Polyak, `Some methods of speeding up the convergence of iteration methods
      <https://doi.org/10.1016/0041-5553(64)90137-5>`_, 1964.

      Sutskever, Martens, Dahl and Hinton, `On the importance of initialization
      and momentum in deep learning <https://proceedings.mlr.press/v28/sutskever13.html>`_,
      ICML 2013.
    """
    name = "momentum_jax.momentum"
    _base.check_learning_rate(name, learning_rate)
    _base.check_momentum(name, momentum)
    nesterov = _base.check_bool(name, "nesterov", nesterov)
    decay = _base.check_weight_decay(name, weight_decay)
    dtype = _base.check_dtype(name, "accumulator_dtype", accumulator_dtype)
    # A concrete zero removes the decay term from the program; anything else
    # (including a value traced by inject_hyperparams) keeps it.
    use_decay = decay != 0.0

    def init_fn(params: optax.Params) -> MomentumState:
        return MomentumState(_base.zero_count(), _base.init_buffer(name, params, dtype))

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, MomentumState]:
        state = cast(MomentumState, state)
        del extra_args
        _base.check_same_structure(name, updates, state.velocity)
        if use_decay:
            if params is None:
                raise ValueError(
                    f"{name}: weight_decay={weight_decay!r} needs the params, but "
                    "update() was called with params=None. Pass params to update(); "
                    "under optax.inject_hyperparams with no weight decay, use "
                    "static_args=('weight_decay',) to keep it a Python zero."
                )
            # Coupled L2 in the gradient's own dtype, as torch's grad.add(param, alpha=wd).
            updates = jax.tree.map(
                lambda g, p: _cast(g + weight_decay * p, g.dtype), updates, params
            )
        lr = _base.evaluate(name, "learning_rate", learning_rate, state.count)
        mu = _base.evaluate(name, "momentum", momentum, state.count)
        velocity = jax.tree.map(lambda g, v: _velocity_step(g, v, lr, mu), updates, state.velocity)
        if nesterov:
            mu_next = (
                _base.evaluate(name, "momentum", momentum, _base.safe_increment(state.count))
                if callable(momentum)
                else mu
            )
            new_updates = jax.tree.map(
                lambda g, v: _look_ahead_update(g, v, lr, mu_next), updates, velocity
            )
        else:
            new_updates = jax.tree.map(_heavy_ball_update, updates, velocity)
        return new_updates, MomentumState(_base.safe_increment(state.count), velocity)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ``nesterov`` takes an argument named ``momentum`` that shadows the function.
_momentum = momentum


def nesterov(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule = 0.9,
    *,
    weight_decay: float | jax.Array = 0.0,
    accumulator_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Nesterov momentum: :func:`momentum` with ``nesterov=True``.

    .. math::

      v_t = \mu_t v_{t-1} + \alpha_t g_t, \qquad u_t = -(\mu_{t+1} v_t + \alpha_t g_t)

    Args:
      learning_rate: the step size :math:`\alpha_t`, or a schedule.
      momentum: the decay :math:`\mu_t` in ``[0, 1)``, or a schedule.
      weight_decay: coupled L2 coefficient, as in :func:`momentum`.
      accumulator_dtype: dtype of the velocity, as in :func:`momentum`.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import momentum_jax
      >>> optimizer = optax.chain(
      ...     optax.clip_by_global_norm(1.0),
      ...     momentum_jax.nesterov(optax.cosine_decay_schedule(0.1, 1000), 0.9),
      ... )
      >>> state = optimizer.init(jnp.zeros(3))
      >>> updates, state = optimizer.update(jnp.array([0.5, -0.5, 1.0]), state)
      >>> print(updates)
      [-0.0776  0.0776 -0.1551]

    References:
      Nesterov, A method of solving a convex programming problem with
      convergence rate O(1/k^2), 1983.

      Sutskever, Martens, Dahl and Hinton, `On the importance of initialization
      and momentum in deep learning <https://proceedings.mlr.press/v28/sutskever13.html>`_,
      ICML 2013.
    """
    # Keyword arguments are spelled out (not **kwargs) so that
    # optax.inject_hyperparams can bind and inject them.
    return _momentum(
        learning_rate,
        momentum,
        nesterov=True,
        weight_decay=weight_decay,
        accumulator_dtype=accumulator_dtype,
    )


def scale_by_momentum(
    momentum: ScalarOrSchedule = 0.9,
    *,
    nesterov: bool = False,
    dampening: float | jax.Array = 0.0,
    accumulator_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""The learning-rate-free gradient buffer of PyTorch, TF1 and optax.

    .. math::

      b_1 = g_1, \qquad b_t = \mu_t b_{t-1} + (1 - \tau) g_t \quad (t \ge 2),
      \qquad o_t = b_t \quad\text{or}\quad o_t = g_t + \mu_t b_t \ \text{(Nesterov)}.

    The first step copies the gradient into the buffer without dampening, as
    ``torch.optim.SGD`` does. The output is neither negated nor scaled by a
    learning rate: chain it with ``optax.scale_by_learning_rate``. In that form
    a learning-rate schedule rescales the whole buffer at once, unlike
    :func:`momentum`.

    Args:
      momentum: the decay :math:`\mu_t` in ``[0, 1)``, or a schedule.
      nesterov: return :math:`g_t + \mu_t b_t` instead of :math:`b_t`. Requires
        ``dampening=0``.
      dampening: :math:`\tau \in [0, 1)`, the fraction of each new gradient
        held back from the buffer (from the second step on).
      accumulator_dtype: dtype of the buffer; ``None`` keeps each param's dtype.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`momentum_jax.MomentumState`.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import momentum_jax
      >>> optimizer = optax.chain(
      ...     momentum_jax.scale_by_momentum(0.9),
      ...     optax.scale_by_learning_rate(0.1),
      ... )
      >>> state = optimizer.init(jnp.zeros(2))
      >>> for grads in (jnp.array([1.0, 2.0]), jnp.array([1.0, -2.0])):
      ...   updates, state = optimizer.update(grads, state)
      >>> print(updates)
      [-0.19  0.02]

    References:
      Paszke et al., `PyTorch: an imperative style, high-performance deep
      learning library <https://arxiv.org/abs/1912.01703>`_, 2019
      (``torch.optim.SGD``).
    """
    return gradient_buffer(
        "momentum_jax.scale_by_momentum",
        momentum,
        nesterov=nesterov,
        dampening=dampening,
        accumulator_dtype=accumulator_dtype,
    )


def gradient_buffer(
    name: str,
    momentum: ScalarOrSchedule,
    *,
    nesterov: bool = False,
    dampening: float | jax.Array = 0.0,
    accumulator_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """:func:`scale_by_momentum`, reporting errors under the caller's ``name``."""
    _base.check_momentum(name, momentum)
    nesterov = _base.check_bool(name, "nesterov", nesterov)
    tau = _base.check_dampening(name, dampening)
    if nesterov and tau is not None and tau != 0.0:
        raise ValueError(
            f"{name}: nesterov=True requires dampening=0, got dampening={dampening!r}. "
            "The Nesterov correction g + mu*b assumes an undamped buffer."
        )
    dtype = _base.check_dtype(name, "accumulator_dtype", accumulator_dtype)
    # With no dampening, b_1 = mu*0 + g_1 = g_1 already; only a possibly
    # non-zero dampening needs the explicit first-step rule.
    needs_first_step_rule = tau != 0.0

    def init_fn(params: optax.Params) -> MomentumState:
        return MomentumState(_base.zero_count(), _base.init_buffer(name, params, dtype))

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, MomentumState]:
        state = cast(MomentumState, state)
        del params, extra_args
        _base.check_same_structure(name, updates, state.velocity)
        mu = _base.evaluate(name, "momentum", momentum, state.count)
        damping: Any
        if needs_first_step_rule:
            damping = jnp.where(state.count == 0, 1.0, 1.0 - jnp.asarray(dampening))
            # On the first step mu*b is mu*0, so a damping of 1 gives b_1 = g_1.
        else:
            damping = 1.0
        buffer = jax.tree.map(lambda g, b: _buffer_step(g, b, mu, damping), updates, state.velocity)
        if nesterov:
            out = jax.tree.map(lambda g, b: _buffer_look_ahead(g, b, mu), updates, buffer)
        else:
            out = jax.tree.map(lambda g, b: _cast(b, g.dtype), updates, buffer)
        return out, MomentumState(_base.safe_increment(state.count), buffer)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
