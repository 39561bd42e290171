"""Presets that reproduce other frameworks' SGD step for step.

Each preset is a chain of building blocks; none restates another's math.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import optax

from momentum_jax._src import _checks, _core
from momentum_jax._src._checks import AccumulatingOptions, public
from momentum_jax._src._skeleton import accumulation, hyper, scale_by_learning_rate

if TYPE_CHECKING:
    from momentum_jax._src._checks import Unpack


def _checked(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``inner``, a stage before any buffer, after a check of the gradients against the params."""

    def update_fn(updates: Any, state: Any, params: Any = None, **extra_args: Any) -> Any:
        reference = updates if params is None else params  # without params: floating gradients
        _checks.check_tree(
            updates, jax.tree.map(lambda p: p if _checks.trains(p) else None, reference)
        )
        return inner.update(updates, state, params)

    return optax.GradientTransformationExtraArgs(
        _checks.named(inner.init), _checks.named(update_fn)
    )


def _weight_decay(weight_decay: Any, learning_rate: Any = None, steps: int = 1) -> Any:
    """PyTorch's coupled decay ``g + wd * theta`` or, given the learning rate, Keras 3's
    decoupled ``theta -= lr * wd * theta``, in the gradient's dtype.

    Keras shrinks the params before its momentum step, which depends only on the
    gradient, so the shrink is added to the update (this stage goes last in the chain).
    Accumulating ``steps`` gradients per update, it shrinks on the last call of each.
    """

    def init(params: Any) -> Any:
        if learning_rate is None:
            return optax.EmptyState()
        return optax.ScaleByScheduleState(jax.numpy.zeros([], "int32"))  # new: it may be donated

    def update(updates: Any, state: Any, params: Any = None) -> Any:
        if params is None:
            raise _checks.needs_params()
        scale = hyper("weight_decay", weight_decay, None)
        if learning_rate is not None:
            last = state.count % steps == steps - 1
            scale = -hyper("learning_rate", learning_rate, state.count // steps) * scale
            state = optax.ScaleByScheduleState(_checks.safe_increment(state.count))

        def step(u: Any, p: Any) -> Any:
            if u is None:
                return None
            decayed = (u + scale * p).astype(u.dtype)
            return decayed if steps == 1 else jax.numpy.where(last, decayed, u)

        return jax.tree.map(step, updates, params, is_leaf=_checks.is_none), state

    return _checked(optax.GradientTransformation(init, update))


@public("momentum_jax.compat.torch_sgd", AccumulatingOptions)
def torch_sgd(
    lr: optax.ScalarOrSchedule,
    momentum: optax.ScalarOrSchedule = 0.0,
    dampening: float | jax.Array = 0.0,
    weight_decay: float | jax.Array = 0.0,
    nesterov: bool = False,
    *,
    maximize: bool = False,
    **options: Unpack[AccumulatingOptions],
) -> optax.GradientTransformationExtraArgs:
    r"""``torch.optim.SGD``, step for step.

    .. math::

      d_t = \pm g_t + \lambda \theta_t, \qquad
      b_1 = d_1, \quad b_t = \mu b_{t-1} + (1 - \tau) d_t, \qquad
      \theta_{t+1} = \theta_t - \alpha_t \cdot
      \begin{cases} d_t + \mu b_t & \text{nesterov} \\ b_t & \text{otherwise,}
      \end{cases}

    where the sign is ``-`` when ``maximize=True``. The learning rate sits
    outside the buffer, so a schedule rescales the whole buffer: pass the
    schedule PyTorch's scheduler would produce, ``lr(k)`` for the ``k``-th
    ``optimizer.step()`` counted from 0 (a ``LambdaLR(opt, f)`` stepped after
    each ``optimizer.step()`` is ``lambda k: base_lr * f(k)``).

    At a step whose momentum is 0 (a schedule's value, or one injected with
    ``optax.inject_hyperparams``) the buffer is left as it is and the step is
    plain SGD; the buffer starts, undamped, at the first step whose momentum
    is not 0, as in PyTorch. With a Python ``momentum=0`` no buffer is kept, and with a
    Python ``weight_decay=0`` no decay stage. The chain's stages depend only on
    such Python values and flags, never on array values: under
    ``optax.inject_hyperparams`` (which passes arrays) every stage is kept,
    and gives the same numbers. It is ``optax.chain(optax.scale(-1.0)`` (when
    ``maximize``), ``optax.add_decayed_weights(weight_decay)``,
    :func:`momentum_jax.scale_by_momentum`,
    ``optax.scale_by_learning_rate(lr))``. Integer and boolean params get no
    buffer and a ``None`` update when their gradient is ``None``.

    Args:
      lr: learning rate :math:`\alpha_t \ge 0`, or a schedule.
      momentum: :math:`\mu \in [0, 1)`, or a schedule.
      dampening: :math:`\tau \in [0, 1)`.
      weight_decay: coupled L2 coefficient :math:`\lambda \ge 0` (added to the
        gradient); needs ``params`` in ``update`` when non-zero.
      nesterov: Nesterov momentum; requires ``momentum > 0`` and
        ``dampening = 0``, as in PyTorch.
      maximize: ascend the objective instead of descending it.
      accumulator_dtype: dtype of the momentum buffer; ``None`` keeps each param's
        dtype (the framework's behaviour).
      stochastic_rounding: round the new momentum buffer stochastically into a
        bfloat16 or float16 buffer, as in :func:`momentum_jax.momentum`.
      seed: the rounding's seed, as in :func:`momentum_jax.momentum`.
      layout: the state layout, as in :func:`momentum_jax.momentum`.
      gradient_accumulation_steps: ``K``, the number of calls whose mean
        gradient :math:`d` makes one update (``None``, the default, or 1:
        none). With ``K >= 2`` the buffer takes :math:`d / K` at each call as
        in :func:`momentum_jax.scale_by_momentum` (a Python ``momentum=0``
        then keeps one, holding the mean), and the update is
        :math:`-\alpha_t b_t` on the ``K``-th call and 0 on the others, with
        the schedule at completed updates: ``optax.MultiSteps(torch_sgd(...),
        K)``'s trajectory. It refuses ``nesterov=True``. With a momentum
        schedule or array, the buffer holds the mean gradient of the updates
        whose momentum is 0 until PyTorch's buffer starts; an update whose
        momentum is 0 after that (PyTorch's output is then the mean gradient,
        kept nowhere) is NaN: for such a schedule, use
        ``optax.MultiSteps(torch_sgd(...), K)``.

    Returns:
      The chain above, an ``optax.GradientTransformationExtraArgs``; its buffer
      stage's state is a :class:`momentum_jax.MomentumState` (or
      :class:`momentum_jax.compat.TorchMomentumState`).

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> from momentum_jax import compat
      >>> optimizer = compat.torch_sgd(0.1, momentum=0.9, weight_decay=1e-2)
      >>> params = jnp.array([1.0, -1.0])
      >>> state = optimizer.init(params)
      >>> updates, state = optimizer.update(jnp.array([0.5, 0.5]), state, params)
      >>> print(optax.apply_updates(params, updates))
      [ 0.949 -1.049]

    References:
      `torch.optim.SGD <https://pytorch.org/docs/stable/generated/torch.optim.SGD.html>`_.
    """
    mu, tau = _checks.concrete(momentum), _checks.concrete(dampening)
    if nesterov and ((mu is not None and mu <= 0) or tau not in (None, 0.0)):
        raise _checks.error(
            ValueError,
            "nesterov=True needs momentum > 0 and dampening=0, "
            f"got momentum={momentum!r}, dampening={dampening!r}.",
        )
    steps = accumulation(options[_checks.ACCUMULATION], nesterov, options["layout"])
    parts: list[Any] = [_checked(optax.scale(-1.0))] if maximize else []
    if not _checks.is_python_zero(weight_decay):
        parts.append(_weight_decay(weight_decay))
    if not _checks.is_python_zero(momentum) or steps > 1:
        # Accumulating, a Python momentum 0 keeps a buffer, b = g (torch's dampening is moot).
        damped = 0.0 if _checks.is_python_zero(momentum) else dampening
        torch_rule = type(momentum) not in (int, float)  # momentum 0 at some steps
        parts.append(_core.gradient_buffer(momentum, nesterov, damped, options, torch_rule))
    scale = scale_by_learning_rate(lr, steps, "lr")
    parts.append(scale if parts else _checked(scale))  # the first stage checks the gradients
    return optax.chain(*parts)


@public("momentum_jax.compat.keras_sgd", AccumulatingOptions)
def keras_sgd(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    momentum: optax.ScalarOrSchedule = 0.0,
    nesterov: bool = False,
    *,
    weight_decay: float | jax.Array | None = None,
    **options: Unpack[AccumulatingOptions],
) -> optax.GradientTransformationExtraArgs:
    r"""Keras 3 ``keras.optimizers.SGD``, step for step.

    .. math::

      \theta \leftarrow \theta - \alpha_t \lambda \theta, \qquad
      m_t = \mu m_{t-1} - \alpha_t g_t, \qquad
      \theta \leftarrow \theta + m_t \quad\text{or}\quad
      \theta \leftarrow \theta + \mu m_t - \alpha_t g_t \ \text{(nesterov)}.

    The learning rate is inside the velocity (this is :func:`momentum_jax.momentum`
    with ``m = -v``) and weight decay is decoupled: it shrinks the params by
    :math:`\alpha_t \lambda` and never enters the velocity. A Keras
    ``LearningRateSchedule`` is evaluated at the optimizer's ``iterations``
    (0 on the first step), which is what an optax schedule sees here.

    With a Python ``momentum=0`` no velocity is kept (as in Keras) and with
    ``weight_decay`` ``None`` or a Python ``0`` no decay stage; arrays, which
    ``optax.inject_hyperparams`` passes, always keep both, with the same
    numbers. Integer and boolean params get no buffer and a ``None`` update
    when their gradient is ``None``.

    Args:
      learning_rate: :math:`\alpha_t \ge 0`, or a schedule.
      momentum: :math:`\mu \in [0, 1)`, or a schedule: Keras with its
        ``optimizer.momentum`` set before each step, so the Nesterov form reads
        this step's value in both lines (no look-ahead to the next, unlike
        :func:`momentum_jax.nesterov`). At a step whose momentum (a schedule's
        value, or an injected one) is 0, Keras takes a plain SGD step and
        leaves the velocity as it is; so does this.
      nesterov: Keras' Nesterov form.
      weight_decay: decoupled decay :math:`\lambda \ge 0`, or ``None`` for none;
        needs ``params`` in ``update``.
      accumulator_dtype: dtype of the velocity; ``None`` keeps each param's
        dtype (the framework's behaviour).
      stochastic_rounding: round the new velocity stochastically into a
        bfloat16 or float16 buffer, as in :func:`momentum_jax.momentum`.
      seed: the rounding's seed, as in :func:`momentum_jax.momentum`.
      layout: the state layout, as in :func:`momentum_jax.momentum`.
      gradient_accumulation_steps: Keras' ``K``, the number of calls whose
        mean gradient makes one update (``None``, the default, or 1: none).
        With ``K >= 2`` the velocity takes the mean gradient one call at a
        time as in :func:`momentum_jax.momentum` (a Python ``momentum=0``
        then keeps one), the decay and the momentum step apply on the
        ``K``-th call and the update is 0 on the others. As in Keras, a
        schedule is evaluated at the number of calls, :math:`K n + K - 1` at
        the ``K``-th call of update :math:`n` (so with a schedule this differs
        from ``optax.MultiSteps(keras_sgd(...), K)``, which evaluates it at
        :math:`n`). It refuses ``nesterov=True``. An update whose momentum is a
        0 that is not a Python ``0`` (Keras' step on the mean gradient, which no
        state keeps) is NaN: for such a schedule, use ``optax.MultiSteps`` around
        ``keras_sgd`` with the schedules read at ``n * K + K - 1``, as
        docs/porting.md does for clipping.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` (a chain of the momentum
      step and, when there is one, the decay stage).

    Example:
      >>> import optax
      >>> import jax.numpy as jnp
      >>> from momentum_jax import compat
      >>> optimizer = compat.keras_sgd(0.1, momentum=0.9, nesterov=True)
      >>> params = jnp.array([1.0, -1.0])
      >>> grads = jnp.array([0.5, 0.5])
      >>> updates, _ = optimizer.update(grads, optimizer.init(params), params)
      >>> print(optax.apply_updates(params, updates))
      [ 0.905 -1.095]

    References:
      `keras.optimizers.SGD <https://keras.io/api/optimizers/sgd/>`_.
    """
    steps = accumulation(options[_checks.ACCUMULATION], nesterov, options["layout"])
    if steps > 1 and callable(learning_rate):
        learning_rate = _at_last_call(learning_rate, steps)
    if _checks.is_python_zero(momentum) and steps == 1:
        # Keras keeps no momentum variable then; neither do we. (An array zero,
        # as inject_hyperparams passes, keeps the velocity: same numbers.)
        parts = [_checked(scale_by_learning_rate(learning_rate))]
    else:
        # Keras' Nesterov step reads the momentum of this step twice: no look-ahead.
        parts = [_core.heavy_ball(learning_rate, momentum, nesterov, 0.0, options, keras=True)]
    if not (weight_decay is None or _checks.is_python_zero(weight_decay)):
        parts.append(_weight_decay(weight_decay, learning_rate, steps))
    return optax.chain(*parts)


def _at_last_call(schedule: Any, steps: int) -> Any:
    """Keras 3's schedule of the call count as one of completed updates: Keras steps on the
    last of ``steps`` calls, call ``n * steps + steps - 1`` for the ``n``-th update."""
    return lambda n: schedule(n * steps + steps - 1)


@public("momentum_jax.compat.tf1_momentum", AccumulatingOptions)
def tf1_momentum(
    learning_rate: optax.ScalarOrSchedule,
    momentum: optax.ScalarOrSchedule,
    *,
    use_nesterov: bool = False,
    **options: Unpack[AccumulatingOptions],
) -> optax.GradientTransformationExtraArgs:
    r"""``tf.compat.v1.train.MomentumOptimizer``, step for step.

    .. math::

      a_0 = 0, \qquad a_t = \mu a_{t-1} + g_t, \qquad
      \theta \leftarrow \theta - \alpha_t a_t \quad\text{or}\quad
      \theta \leftarrow \theta - \alpha_t (g_t + \mu a_t) \ \text{(use_nesterov)}.

    The learning rate is outside the accumulator, so a decayed learning rate
    (``tf.compat.v1.train.exponential_decay`` of the global step, say) rescales
    the whole accumulator. The global step is incremented after each update, so
    the first update sees the schedule at 0, as an optax schedule does.

    It is ``optax.chain(momentum_jax.scale_by_momentum(momentum),
    optax.scale_by_learning_rate(learning_rate))``, which for a constant
    momentum is ``optax.sgd`` bit for bit. Integer and boolean params get no
    buffer and a ``None`` update when their gradient is ``None``.

    Args:
      learning_rate: :math:`\alpha_t \ge 0`, or a schedule.
      momentum: :math:`\mu \in [0, 1)`, or a schedule.
      use_nesterov: TF1's Nesterov form.
      accumulator_dtype: the accumulator's dtype (``None``: each param's own, as
        in TF1).
      stochastic_rounding: with a bfloat16 or float16 accumulator, round each new
        one stochastically (see :func:`momentum_jax.momentum`).
      seed: the seed of that rounding's random bits.
      layout: ``"per_leaf"`` or ``"packed"`` (see :func:`momentum_jax.momentum`).
      gradient_accumulation_steps: ``K``, the number of calls whose mean
        gradient makes one update (``None``, the default, or 1: none). With
        ``K >= 2`` the accumulator takes :math:`g / K` at each call as in
        :func:`momentum_jax.scale_by_momentum`, and the update is
        :math:`-\alpha_t a_t` on the ``K``-th call and 0 on the others, with
        the schedule at completed updates: ``optax.MultiSteps(tf1_momentum(...),
        K)``'s trajectory. It refuses ``use_nesterov=True``.

    Returns:
      ``optax.chain(scale_by_momentum(momentum, nesterov=use_nesterov),
      optax.scale_by_learning_rate(learning_rate))``: its first state is a
      :class:`momentum_jax.MomentumState`.

    Example:
      >>> import jax.numpy as jnp
      >>> from momentum_jax import compat
      >>> optimizer = compat.tf1_momentum(0.1, 0.9, use_nesterov=True)
      >>> state = optimizer.init(jnp.zeros(2))
      >>> _, state = optimizer.update(jnp.array([1.0, 2.0]), state)
      >>> updates, state = optimizer.update(jnp.array([1.0, -2.0]), state)
      >>> print(updates)
      [-0.271  0.218]

    References:
      `tf.compat.v1.train.MomentumOptimizer
      <https://www.tensorflow.org/api_docs/python/tf/compat/v1/train/MomentumOptimizer>`_.
    """
    return optax.chain(
        _core.gradient_buffer(momentum, use_nesterov, 0.0, options),
        scale_by_learning_rate(learning_rate, options[_checks.ACCUMULATION]),
    )
