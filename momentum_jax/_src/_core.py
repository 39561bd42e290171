"""Heavy-ball and Nesterov momentum as optax gradient transformations."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from momentum_jax._src import _kernels, _layout, _rounding, _tree
from momentum_jax._src import _validation as _check
from momentum_jax._src._validation import ScalarOrSchedule


class MomentumState(NamedTuple):
    """State of :func:`momentum_jax.momentum` and :func:`scale_by_momentum`.

    Attributes:
      count: number of updates done so far. ``shape=(), dtype=int32``; it
        saturates at ``2**31 - 1`` instead of overflowing.
      velocity: the momentum buffer, a pytree shaped like the params. Its
        dtype is the ``accumulator_dtype`` given to the transform, or each
        param's own dtype when that is ``None``; it never changes between
        steps. Integer and boolean params have ``None`` here.
    """

    count: jax.Array  # type: ignore[assignment]  # shape=(), dtype=int32
    velocity: Any  # pytree shaped like params


def momentum(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule = 0.9,
    *,
    nesterov: bool = False,
    weight_decay: float | jax.Array = 0.0,
    accumulator_dtype: Any | None = None,
    stochastic_rounding: bool = False,
    seed: int | jax.Array = 0,
    layout: str = "per_leaf",
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

    Under ``optax.inject_hyperparams`` the momentum is one number per step, so
    Nesterov's look-ahead uses :math:`\mu_t` where a momentum schedule gives
    :math:`\mu_{t+1}`: with a scheduled momentum the trajectories differ. To
    keep the exact look-ahead, pass the schedule itself as ``momentum`` (and
    inject only the learning rate, e.g. with
    ``optax.inject_hyperparams(momentum_jax.nesterov, static_args=("momentum",))``).

    Integer and boolean leaves do not train (see :mod:`momentum_jax`).

    Args:
      learning_rate: the step size :math:`\alpha_t` (``>= 0``), or a schedule.
      momentum: the decay :math:`\mu_t` of the velocity, in ``[0, 1)``, or a
        schedule such as :func:`momentum_jax.schedules.sutskever`.
      nesterov: use the Nesterov look-ahead update instead of the heavy ball.
      weight_decay: coupled L2 coefficient :math:`\lambda \ge 0`. Unless it is
        a Python ``0``, ``params`` must be passed to ``update`` (an array, even
        a zero one, keeps the decay term, so that ``optax.inject_hyperparams``
        traces the same computation it initialised).
      accumulator_dtype: dtype of the velocity; ``None`` keeps each param's
        dtype. ``jnp.float32`` keeps an exact buffer for bfloat16 params.
      stochastic_rounding: with a bfloat16 or float16 velocity, compute the
        new velocity in float32 and round it stochastically into the buffer
        (unbiased: small contributions survive on average); no effect on
        other dtypes. See "Low-precision training" in the production guide.
      seed: the integer in ``[0, 2**31 - 1]`` that, with the update count and
        each element's position, determines the rounding's random bits.
      layout: ``"per_leaf"`` (the default, on every backend) keeps one
        buffer per param; ``"packed"`` keeps the buffers of all small arrays
        in one flat array per dtype (:class:`momentum_jax.PackedState`), an
        option for GPUs and models with many small arrays. Both give the same
        numbers.

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
    return heavy_ball(
        "momentum_jax.momentum",
        learning_rate,
        momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        accumulator_dtype=accumulator_dtype,
        stochastic_rounding=stochastic_rounding,
        seed=seed,
        layout=layout,
    )


def heavy_ball(
    name: str,
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule,
    *,
    nesterov: bool,
    weight_decay: float | jax.Array,
    accumulator_dtype: Any | None,
    stochastic_rounding: bool = False,
    seed: int | jax.Array = 0,
    layout: str,
) -> optax.GradientTransformationExtraArgs:
    """:func:`momentum`, with ``name`` (the function the user called) in its errors."""
    _check.check_learning_rate(name, learning_rate)
    _check.check_momentum(name, momentum)
    nesterov = _check.check_bool(name, "nesterov", nesterov)
    _check.check_weight_decay(name, weight_decay)
    dtype = _check.check_dtype(name, "accumulator_dtype", accumulator_dtype)
    rounding = _rounding.rounding(name, stochastic_rounding, seed)
    layout = _layout.check_layout(name, layout)
    # Only a Python zero removes the decay term: an array (which is what
    # optax.inject_hyperparams passes, concrete at init and traced under jit)
    # keeps it, so the computation never depends on a hyperparameter's value.
    use_decay = not (isinstance(weight_decay, int | float) and weight_decay == 0)

    def step(updates: Any, state: MomentumState, params: Any, store: Any) -> tuple[Any, Any]:
        if use_decay:
            if params is None:
                raise _check.needs_params_error(name, "weight_decay", weight_decay)
            updates = _kernels.coupled_weight_decay(updates, params, weight_decay)
        lr = _kernels.Scalar(_check.evaluate(name, "learning_rate", learning_rate, state.count))
        mu = _kernels.Scalar(_check.evaluate(name, "momentum", momentum, state.count))
        # The learning rate multiplies only the new gradient, so a schedule never
        # rescales the history already in the velocity (Sutskever et al., 2013).
        if nesterov:
            mu_next = (
                _check.evaluate(name, "momentum", momentum, _tree.safe_increment(state.count))
                if callable(momentum)
                else mu.value
            )
            # lr * g is computed once per array and shared by the velocity and the
            # look-ahead; -mu_next once per step. Fewer operations per array is
            # less for XLA to compile in models with thousands of arrays.
            terms = _tree.map_buffers(
                lambda g, v: _kernels.scaled(g, v, lr), updates, state.velocity
            )
            velocity = store(
                _tree.map_buffers(
                    lambda t, v: _kernels.decay_add_term(t, v, mu), terms, state.velocity
                )
            )
            neg_mu_next = _kernels.Scalar(-mu_next)
            out = _tree.map_buffers(
                lambda g, t, v: _kernels.negated_look_ahead(t, v, neg_mu_next, g.dtype),
                updates,
                terms,
                velocity,
            )
        else:
            velocity = store(
                _tree.map_buffers(
                    lambda g, v: _kernels.decay_add(g, v, mu, lr), updates, state.velocity
                )
            )
            minus_one = _kernels.Scalar(-1.0)
            out = _tree.map_buffers(
                lambda g, v: _kernels.negate(v, g.dtype, minus_one), updates, velocity
            )
        return out, velocity

    return _tree.buffer_block(
        name, MomentumState, step, dtype=dtype, layout=layout, rounding=rounding
    )


def nesterov(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule = 0.9,
    *,
    weight_decay: float | jax.Array = 0.0,
    accumulator_dtype: Any | None = None,
    stochastic_rounding: bool = False,
    seed: int | jax.Array = 0,
    layout: str = "per_leaf",
) -> optax.GradientTransformationExtraArgs:
    r"""Nesterov momentum: :func:`momentum` with ``nesterov=True``.

    .. math::

      v_t = \mu_t v_{t-1} + \alpha_t g_t, \qquad u_t = -(\mu_{t+1} v_t + \alpha_t g_t)

    :math:`\mu_{t+1}` is a momentum schedule evaluated one step ahead. Under
    ``optax.inject_hyperparams`` an injected momentum is one number per step,
    so the look-ahead uses :math:`\mu_t` instead and a scheduled momentum gives
    another trajectory; pass the schedule as ``momentum`` and keep it static
    (``static_args=("momentum",)``) to keep the exact form.

    Args:
      learning_rate: the step size :math:`\alpha_t`, or a schedule.
      momentum: the decay :math:`\mu_t` in ``[0, 1)``, or a schedule.
      weight_decay: coupled L2 coefficient, as in :func:`momentum`.
      accumulator_dtype: dtype of the velocity, as in :func:`momentum`.
      stochastic_rounding: round the new velocity stochastically, as in
        :func:`momentum`.
      seed: the rounding's seed, as in :func:`momentum`.
      layout: the state layout, as in :func:`momentum`.

    Returns:
      ``momentum(learning_rate, momentum, nesterov=True, ...)``.

    Example:
      >>> import optax
      >>> import jax.numpy as jnp
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
    return heavy_ball(
        "momentum_jax.nesterov",
        learning_rate,
        momentum,
        nesterov=True,
        weight_decay=weight_decay,
        accumulator_dtype=accumulator_dtype,
        stochastic_rounding=stochastic_rounding,
        seed=seed,
        layout=layout,
    )


def scale_by_momentum(
    momentum: ScalarOrSchedule = 0.9,
    *,
    nesterov: bool = False,
    dampening: float | jax.Array = 0.0,
    accumulator_dtype: Any | None = None,
    stochastic_rounding: bool = False,
    seed: int | jax.Array = 0,
    layout: str = "per_leaf",
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

    Integer and boolean leaves do not train (see :mod:`momentum_jax`).

    Args:
      momentum: the decay :math:`\mu_t` in ``[0, 1)``, or a schedule.
      nesterov: return :math:`g_t + \mu_t b_t` instead of :math:`b_t`. Requires
        ``dampening=0``.
      dampening: :math:`\tau \in [0, 1)`, the fraction of each new gradient
        held back from the buffer (from the second step on).
      accumulator_dtype: dtype of the buffer; ``None`` keeps each param's dtype.
      stochastic_rounding: round the new buffer stochastically, as in
        :func:`momentum`.
      seed: the rounding's seed, as in :func:`momentum`.
      layout: the state layout, as in :func:`momentum`.

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
        stochastic_rounding=stochastic_rounding,
        seed=seed,
        layout=layout,
    )


def gradient_buffer(
    name: str,
    momentum: ScalarOrSchedule,
    *,
    nesterov: bool,
    dampening: float | jax.Array,
    accumulator_dtype: Any | None,
    stochastic_rounding: bool = False,
    seed: int | jax.Array = 0,
    layout: str,
) -> optax.GradientTransformationExtraArgs:
    """:func:`scale_by_momentum`, with ``name`` (the function the user called) in its errors."""
    _check.check_momentum(name, momentum)
    nesterov = _check.check_bool(name, "nesterov", nesterov)
    tau = _check.check_dampening(name, dampening)
    _check.check_nesterov_dampening(name, nesterov, tau, dampening)
    dtype = _check.check_dtype(name, "accumulator_dtype", accumulator_dtype)
    rounding = _rounding.rounding(name, stochastic_rounding, seed)
    layout = _layout.check_layout(name, layout)
    # With no dampening, b_1 = mu*0 + g_1 = g_1 already; only a possibly
    # non-zero dampening (any array, even a zero one) needs the first-step rule.
    needs_first_step_rule = not (isinstance(dampening, int | float) and dampening == 0)

    def step(updates: Any, state: MomentumState, params: Any, store: Any) -> tuple[Any, Any]:
        del params
        mu = _kernels.Scalar(_check.evaluate(name, "momentum", momentum, state.count))
        damping: Any = None
        if needs_first_step_rule:
            # On the first step mu*b is mu*0, so a damping of 1 gives b_1 = g_1.
            damping = _kernels.Scalar(
                jnp.where(state.count == 0, 1.0, 1.0 - jnp.asarray(dampening))
            )
        buffer = store(
            _tree.map_buffers(
                lambda g, b: _kernels.decay_add(g, b, mu, damping), updates, state.velocity
            )
        )
        if nesterov:
            out = _tree.map_buffers(
                lambda g, b: _kernels.decay_add(g, b, mu, dtype=g.dtype), updates, buffer
            )
        else:
            out = _tree.map_buffers(lambda g, b: _kernels.cast(b, g.dtype), updates, buffer)
        return out, buffer

    return _tree.buffer_block(
        name, MomentumState, step, dtype=dtype, layout=layout, rounding=rounding
    )
