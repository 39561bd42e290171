"""Presets that reproduce other frameworks' SGD step for step.

Each preset is a chain of building blocks; none restates another's math.
"""

from __future__ import annotations

from typing import Any, cast

import jax
import jax.numpy as jnp
import optax

from momentum_jax._src import _base, _core
from momentum_jax._src._base import ScalarOrSchedule


def _scale_by_learning_rate(
    fn_name: str, learning_rate: ScalarOrSchedule, arg: str = "learning_rate"
) -> optax.GradientTransformationExtraArgs:
    """``u = -lr_t * u``, outside any buffer, with the checks of the core transforms."""

    def init_fn(params: optax.Params) -> optax.ScaleByScheduleState:
        _base.check_params_dtypes(fn_name, params)
        return optax.ScaleByScheduleState(count=_base.zero_count())

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.ScaleByScheduleState]:
        del extra_args
        state = cast(optax.ScaleByScheduleState, state)
        if params is not None:
            _base.check_same_structure(fn_name, updates, params)
        lr = _base.evaluate(fn_name, arg, learning_rate, state.count)
        updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), updates)
        return updates, optax.ScaleByScheduleState(_base.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _torch_gradient(
    fn_name: str, weight_decay: Any, maximize: bool
) -> optax.GradientTransformationExtraArgs:
    """PyTorch's gradient preprocessing: negate for ``maximize``, then add ``wd * theta``."""

    def init_fn(params: optax.Params) -> optax.EmptyState:
        _base.check_params_dtypes(fn_name, params)
        return optax.EmptyState()

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.OptState]:
        del extra_args
        if params is None:
            if weight_decay is not None:
                raise ValueError(
                    f"{fn_name}: weight_decay={weight_decay!r} needs the params, but "
                    "update() was called with params=None. Pass params to update()."
                )
        else:
            _base.check_same_structure(fn_name, updates, params)
        if maximize:
            updates = jax.tree.map(jnp.negative, updates)
        if weight_decay is not None:
            updates = jax.tree.map(
                lambda g, p: (g + weight_decay * p).astype(g.dtype), updates, params
            )
        return updates, state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _decoupled_weight_decay(
    fn_name: str, learning_rate: ScalarOrSchedule, weight_decay: Any
) -> optax.GradientTransformationExtraArgs:
    # Keras 3 shrinks the variable by lr*wd*theta before its momentum step. That
    # step depends only on the gradient, so the shrink can be added to the
    # update it produces (this transform goes last in the chain).
    def init_fn(params: optax.Params) -> optax.ScaleByScheduleState:
        del params
        return optax.ScaleByScheduleState(count=_base.zero_count())

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.ScaleByScheduleState]:
        del extra_args
        state = cast(optax.ScaleByScheduleState, state)
        if params is None:
            raise ValueError(
                f"{fn_name}: weight_decay={weight_decay!r} needs the params, but "
                "update() was called with params=None. Pass params to update()."
            )
        lr = _base.evaluate(fn_name, "learning_rate", learning_rate, state.count)
        updates = jax.tree.map(
            lambda u, p: (u - lr * weight_decay * p).astype(u.dtype), updates, params
        )
        return updates, optax.ScaleByScheduleState(_base.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def torch_sgd(
    lr: ScalarOrSchedule,
    momentum: ScalarOrSchedule = 0.0,
    dampening: float | jax.Array = 0.0,
    weight_decay: float | jax.Array = 0.0,
    nesterov: bool = False,
    *,
    maximize: bool = False,
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

    With a concrete ``momentum=0`` no buffer is kept, as in PyTorch.

    Args:
      lr: learning rate :math:`\alpha_t \ge 0`, or a schedule.
      momentum: :math:`\mu \in [0, 1)`, or a schedule.
      dampening: :math:`\tau \in [0, 1)`.
      weight_decay: coupled L2 coefficient :math:`\lambda \ge 0` (added to the
        gradient); needs ``params`` in ``update`` when non-zero.
      nesterov: Nesterov momentum; requires ``momentum > 0`` and
        ``dampening = 0``, as in PyTorch.
      maximize: ascend the objective instead of descending it.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

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
    name = "momentum_jax.compat.torch_sgd"
    _base.check_learning_rate(name, lr, arg="lr")
    mu = _base.check_momentum(name, momentum)
    tau = _base.check_dampening(name, dampening)
    decay = _base.check_weight_decay(name, weight_decay)
    nesterov = _base.check_bool(name, "nesterov", nesterov)
    maximize = _base.check_bool(name, "maximize", maximize)
    if nesterov and ((mu is not None and mu <= 0.0) or (tau is not None and tau != 0.0)):
        raise ValueError(
            f"{name}: nesterov=True requires momentum > 0 and dampening = 0, as in "
            f"torch.optim.SGD; got momentum={momentum!r}, dampening={dampening!r}."
        )
    parts: list[optax.GradientTransformation] = []
    if maximize or decay != 0.0:
        parts.append(_torch_gradient(name, None if decay == 0.0 else weight_decay, maximize))
    if mu != 0.0:
        parts.append(_core.gradient_buffer(name, momentum, nesterov=nesterov, dampening=dampening))
    parts.append(_scale_by_learning_rate(name, lr, arg="lr"))
    return optax.chain(*parts)


def keras_sgd(
    learning_rate: ScalarOrSchedule = 0.01,
    momentum: ScalarOrSchedule = 0.0,
    nesterov: bool = False,
    *,
    weight_decay: float | jax.Array | None = None,
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

    Args:
      learning_rate: :math:`\alpha_t \ge 0`, or a schedule.
      momentum: :math:`\mu \in [0, 1)`, or a schedule.
      nesterov: Keras' Nesterov form.
      weight_decay: decoupled decay :math:`\lambda \ge 0`, or ``None`` for none;
        needs ``params`` in ``update``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> from momentum_jax import compat
      >>> optimizer = compat.keras_sgd(0.1, momentum=0.9, nesterov=True)
      >>> params = jnp.array([1.0, -1.0])
      >>> state = optimizer.init(params)
      >>> updates, state = optimizer.update(jnp.array([0.5, 0.5]), state, params)
      >>> print(optax.apply_updates(params, updates))
      [ 0.905 -1.095]

    References:
      `keras.optimizers.SGD <https://keras.io/api/optimizers/sgd/>`_.
    """
    name = "momentum_jax.compat.keras_sgd"
    _base.check_learning_rate(name, learning_rate)
    mu = _base.check_momentum(name, momentum)
    nesterov = _base.check_bool(name, "nesterov", nesterov)
    decay = None if weight_decay is None else _base.check_weight_decay(name, weight_decay)
    if mu == 0.0:
        # Keras keeps no momentum variable then; neither do we.
        step: optax.GradientTransformation = _scale_by_learning_rate(name, learning_rate)
    else:
        step = _core.momentum(learning_rate, momentum, nesterov=nesterov)
    if weight_decay is None or decay == 0.0:
        return optax.chain(step)
    # The decay term is added to the finished momentum update: it must not
    # enter the velocity, and the momentum step depends on the gradient alone.
    return optax.chain(step, _decoupled_weight_decay(name, learning_rate, weight_decay))


def tf1_momentum(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule,
    *,
    use_nesterov: bool = False,
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

    Args:
      learning_rate: :math:`\alpha_t \ge 0`, or a schedule.
      momentum: :math:`\mu \in [0, 1)`, or a schedule.
      use_nesterov: TF1's Nesterov form.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax.numpy as jnp
      >>> from momentum_jax import compat
      >>> optimizer = compat.tf1_momentum(0.1, 0.9)
      >>> state = optimizer.init(jnp.zeros(2))
      >>> for grads in (jnp.array([1.0, 2.0]), jnp.array([1.0, -2.0])):
      ...   updates, state = optimizer.update(grads, state)
      >>> print(updates)
      [-0.19  0.02]

    References:
      `tf.compat.v1.train.MomentumOptimizer
      <https://www.tensorflow.org/api_docs/python/tf/compat/v1/train/MomentumOptimizer>`_.
    """
    name = "momentum_jax.compat.tf1_momentum"
    _base.check_learning_rate(name, learning_rate)
    _base.check_momentum(name, momentum)
    use_nesterov = _base.check_bool(name, "use_nesterov", use_nesterov)
    return optax.chain(
        _core.gradient_buffer(name, momentum, nesterov=use_nesterov),
        _scale_by_learning_rate(name, learning_rate),
    )
