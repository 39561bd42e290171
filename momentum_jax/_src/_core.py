"""Heavy-ball and Nesterov momentum: the update rules, in the equations of their docstrings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from momentum_jax._src import _checks
from momentum_jax._src._checks import AccumulatingOptions, public
from momentum_jax._src._layout import with_layout
from momentum_jax._src._skeleton import accumulation, buffer_transform, hyper

if TYPE_CHECKING:
    from momentum_jax._src._checks import Unpack


class MomentumState(NamedTuple):
    """State of :func:`momentum_jax.momentum` and :func:`scale_by_momentum`.

    Attributes:
      count: number of updates done so far. ``shape=(), dtype=int32``; it
        saturates at ``2**31 - 1`` instead of overflowing.
      velocity: the momentum buffer, a pytree shaped like the params. Its
        dtype is the ``accumulator_dtype`` given to the transform, or each
        param's own dtype when that is ``None``; it never changes between
        steps. With ``jnp.int8``, a large array's buffer is a
        :class:`momentum_jax.Int8Buffer` (read it with
        :func:`momentum_jax.dequantize`). Integer and boolean params have
        ``None`` here.
    """

    count: jax.Array  # type: ignore[assignment]  # shape=(), dtype=int32
    velocity: Any  # pytree shaped like params


class TorchMomentumState(NamedTuple):
    """State of the buffer of :func:`momentum_jax.compat.torch_sgd` when its momentum
    may be 0 at some steps (a schedule, or an injected value) and its dampening is not
    a Python 0, or it accumulates gradients: PyTorch starts its buffer, undamped, at the
    first step whose momentum is not 0, which ``started`` records.

    Attributes:
      count: number of updates done so far. ``shape=(), dtype=int32``.
      velocity: the momentum buffer, as in :class:`momentum_jax.MomentumState`.
      started: whether any update so far had a momentum other than 0. ``shape=(), dtype=bool``.
    """

    count: jax.Array  # type: ignore[assignment]  # shape=(), dtype=int32
    velocity: Any  # pytree shaped like params
    started: jax.Array  # shape=(), dtype=bool


@public("momentum_jax.momentum", AccumulatingOptions)
def momentum(
    learning_rate: optax.ScalarOrSchedule,
    momentum: optax.ScalarOrSchedule = 0.9,
    *,
    nesterov: bool = False,
    weight_decay: float | jax.Array = 0.0,
    **options: Unpack[AccumulatingOptions],
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

    Integer and boolean leaves do not train (see :mod:`momentum_jax`). A
    hyperparameter that cannot be checked when the transform is built (a
    traced array, a schedule's value) and lies outside its range makes the
    update NaN, which ``optax.apply_if_finite`` chained after the transform
    skips (it checks what it receives).

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
        dtype. ``jnp.float32`` keeps an exact buffer for bfloat16 params;
        ``jnp.int8`` int8 codes: each array of 4096 elements or more an
        :class:`momentum_jax.Int8Buffer` (int8 codes and a float32 scale per
        block of at most 256 consecutive elements, at least 128 but for a
        row's last block: 1.016 to 1.031 bytes per param), the other arrays
        float32.
      stochastic_rounding: with a bfloat16, float16 or int8 velocity, compute
        the new velocity in float32 and round (quantize) it stochastically into
        the buffer (unbiased: small contributions survive on average); no
        effect on float32 buffers. See "Low-precision training" and
        "Eight-bit state" in the production guide.
      seed: the integer in ``[0, 2**31 - 1]`` that, with the update count and
        each element's position, determines the rounding's random bits.
      layout: ``"per_leaf"`` (the default, on every backend) keeps one
        buffer per param; ``"packed"`` keeps the buffers of all small arrays
        in one flat array per dtype (:class:`momentum_jax.PackedState`), an
        option for GPUs and models with many small arrays. Both give the same
        numbers, but for the bits that stochastic rounding draws.
      gradient_accumulation_steps: ``K``, the number of calls whose mean
        gradient makes one update; ``None`` (the default: optax.inject_hyperparams
        leaves it static) or 1 for none. With
        ``K >= 2`` the first call of an update decays the velocity and adds
        :math:`\alpha_t g / K`, each later call adds :math:`\alpha_t g / K`,
        and the update is :math:`-v_t` on the ``K``-th call and 0 on the others:
        ``optax.MultiSteps(momentum(...), K)``'s trajectory, with no
        param-sized accumulator (the state is a
        :class:`momentum_jax.AccumulationState`). Schedules see completed
        updates (one that ``optax.inject_hyperparams`` evaluates sees its call
        count: see the production guide). It refuses ``nesterov=True`` and
        ``layout="packed"``. The default is ``None``, not 1:
        ``optax.inject_hyperparams`` injects every numeric default, which would
        change the state of existing checkpoints.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`momentum_jax.MomentumState` (an
      :class:`momentum_jax.AccumulationState` around it with
      ``gradient_accumulation_steps >= 2``).

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

    accumulation(options[_checks.ACCUMULATION], nesterov, options["layout"])
    return heavy_ball(learning_rate, momentum, nesterov, weight_decay, options)


def heavy_ball(
    learning_rate: Any,
    momentum: Any,
    nesterov: bool,
    weight_decay: Any,
    options: AccumulatingOptions,
    keras: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """The rule of :func:`momentum`; Nesterov's look-ahead reads a momentum schedule at the
    next count. As ``keras`` (whose momentum is one number per step) it reads it at this one,
    and the hyperparameters are cast to each buffer's dtype, as Keras casts them to the
    variable's (a float32 schedule value meets a bfloat16 buffer as a Python number does).
    At a step whose momentum is 0, Keras leaves its velocity alone (``v = 1 * v + 0 * g``)
    and steps ``-lr * g``; accumulating, that step needs the mean gradient, which no state
    keeps: it is NaN."""
    idles = keras and type(momentum) not in (int, float)  # a schedule or an array may be 0
    steps = int(options.get(_checks.ACCUMULATION) or 1)

    def coefficients(state: MomentumState) -> tuple[Any, Any, Any]:
        mu = hyper("momentum", momentum, state.count, 1.0)
        # Nesterov looks one step ahead: mu_{t+1} is the schedule at the next count.
        next_count = _checks.safe_increment(state.count)
        ahead = mu
        if callable(momentum) and not keras:
            ahead = hyper("momentum", momentum, next_count, 1.0)
        return hyper("learning_rate", learning_rate, state.count), mu, ahead

    def cast(c: Any, v: jax.Array) -> Any:
        return tuple(jnp.asarray(x, v.dtype) for x in c) if keras else c

    def velocity(c: Any, g: jax.Array, v: jax.Array) -> jax.Array:
        lr, mu, _ = cast(c, v)
        if idles:
            mu, lr = jnp.where(c[1] == 0, 1, mu), jnp.where(c[1] == 0, 0, lr)
        return mu * v + lr * g

    def update(c: Any, g: jax.Array, v: jax.Array) -> jax.Array:
        lr, _, mu_next = cast(c, v)
        # -1 * v rather than -v: XLA:CPU then runs apply_updates' add as a faster loop
        # (benchmarks/xla_cpu_probes.py forms).
        out = -mu_next * v - lr * g if nesterov else -1 * v
        return jnp.where(c[1] == 0, -lr * g if steps == 1 else jnp.nan, out) if idles else out

    block = buffer_transform(
        MomentumState, coefficients, velocity, update, options, weight_decay=weight_decay
    )
    return with_layout(block, options["layout"])


_momentum = momentum


@public("momentum_jax.nesterov", AccumulatingOptions)
def nesterov(
    learning_rate: optax.ScalarOrSchedule,
    momentum: optax.ScalarOrSchedule = 0.9,
    *,
    weight_decay: float | jax.Array = 0.0,
    **options: Unpack[AccumulatingOptions],
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
      gradient_accumulation_steps: ``None`` (the default) or 1, as :func:`momentum`
        takes it; ``K >= 2`` raises a ``ValueError``: the Nesterov step needs
        the mean gradient, which no buffer keeps (use ``optax.MultiSteps``).

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
    return _momentum(learning_rate, momentum, nesterov=True, weight_decay=weight_decay, **options)


@public("momentum_jax.scale_by_momentum", AccumulatingOptions)
def scale_by_momentum(
    momentum: optax.ScalarOrSchedule = 0.9,
    *,
    nesterov: bool = False,
    dampening: float | jax.Array = 0.0,
    **options: Unpack[AccumulatingOptions],
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
      gradient_accumulation_steps: ``K``, the number of calls whose mean
        gradient makes one update (``None``, the default, or 1: none). With
        ``K >= 2`` the first call of an update gives :math:`\mu_t b + (1 - \tau)
        g / K`, each later call adds :math:`(1 - \tau) g / K` (the first update
        undamped), and the output is :math:`b_t` on the ``K``-th call and 0 on
        the others, as in :func:`momentum`. A learning-rate stage chained after it counts
        calls: give its schedule ``lambda count: schedule(count // K)``. It
        refuses ``nesterov=True`` and ``layout="packed"``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`momentum_jax.MomentumState` (in an
      :class:`momentum_jax.AccumulationState` with ``K >= 2``).

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
    if nesterov and _checks.concrete(dampening) not in (None, 0.0):
        raise _checks.error(ValueError, f"nesterov=True needs dampening=0, got {dampening!r}.")
    return gradient_buffer(momentum, nesterov, dampening, options)


def gradient_buffer(
    momentum: Any,
    nesterov: bool,
    dampening: Any,
    options: AccumulatingOptions,
    torch_rule: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """:func:`scale_by_momentum`'s rule (``options``: the state options); with ``torch_rule``,
    PyTorch's at momentum 0.

    ``torch.optim.SGD`` leaves its buffer alone at a step whose momentum is 0
    (the output is then the gradient) and starts it, undamped, at the first
    step whose momentum is not 0. Accumulating gradients, the buffer holds the
    mean gradient of such an update until it starts; after that, such an
    update's output (the mean gradient) is in no state: it is NaN.
    """
    steps = accumulation(options.get(_checks.ACCUMULATION), nesterov, options["layout"])
    # b_1 = g_1: the first step (with torch's rule, the first with momentum) is undamped.
    damped = not _checks.is_python_zero(dampening)
    started = torch_rule and (damped or steps > 1)

    def coefficients(state: Any) -> tuple[Any, ...]:
        mu = hyper("momentum", momentum, state.count, 1.0)
        scale: Any = None
        if damped:
            fresh = (state.count == 0) | (~state.started if started else False)
            tau = jnp.asarray(hyper("dampening", dampening, state.count, 1.0))
            if nesterov:  # a traced dampening (not checked when built) must be 0 there
                tau = jnp.where(tau == 0, tau, jnp.nan)
            # 1 + 0 * tau: a dampening out of range (NaN) makes the undamped first update NaN too.
            scale = jnp.where(fresh, 1.0 + 0 * tau, 1.0 - tau)
        if not torch_rule:
            return mu, mu, scale, None, None
        idle, scale = jnp.asarray(mu) == 0, 1.0 if scale is None else scale
        if steps > 1:  # not started: b = 0 * b + g, the mean gradient (the output at momentum 0)
            on = state.started
            keep = jnp.where(on, jnp.where(idle, 1.0, mu), 0.0)
            return keep, mu, jnp.where(on & idle, 0.0, scale), on & idle, on | ~idle
        # At momentum 0 the buffer is kept (b = 1 * b + 0 * g) and the output is g.
        begun = state.started | ~idle if started else None
        return jnp.where(idle, 1.0, mu), mu, jnp.where(idle, 0.0, scale), idle, begun

    def buffer(c: Any, g: jax.Array, b: jax.Array) -> jax.Array:
        keep, _, scale, _, _ = c
        return keep * b + (g if scale is None else scale * g)

    def output(c: Any, g: jax.Array, b: jax.Array) -> jax.Array:
        _, mu, _, idle, _ = c
        out = mu * b + g if nesterov else b
        return out if idle is None else jnp.where(idle, g if steps == 1 else jnp.nan, out)

    def extra(c: Any) -> tuple[Any, ...]:
        return (jnp.zeros([], bool) if c is None else c[4],)

    state_type = TorchMomentumState if started else MomentumState
    block = buffer_transform(
        state_type, coefficients, buffer, output, options, extra=extra if started else None
    )
    return with_layout(block, options["layout"])
