"""Presets that reproduce other frameworks' SGD step for step.

Each preset is a chain of building blocks; none restates another's math.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from momentum_jax._src import _core, _kernels, _layout, _rounding, _tree
from momentum_jax._src import _validation as _check
from momentum_jax._src._validation import ScalarOrSchedule


def _checked(
    fn_name: str, inner: optax.GradientTransformation, needs_params: tuple[str, Any] | None = None
) -> optax.GradientTransformationExtraArgs:
    """``inner`` (an optax stage), with our checks of the gradients and params.

    ``needs_params`` names the argument, and its value, that makes ``inner``
    read the params; ``update`` then refuses ``params=None``.
    """

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.OptState]:
        del extra_args
        if params is None and needs_params is not None:
            raise _check.needs_params_error(fn_name, *needs_params)
        # This stage comes before any buffer: the gradients are checked against
        # the params, with no gradient expected where a param does not train.
        reference = updates if params is None else _tree.trainable_only(params)
        _tree.check_tree(fn_name, updates, reference, against="the params have")
        return inner.update(updates, state, params)

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)


def _decoupled_weight_decay(
    fn_name: str, learning_rate: ScalarOrSchedule, weight_decay: Any
) -> optax.GradientTransformationExtraArgs:
    # Keras 3 shrinks the variable by lr*wd*theta before its momentum step. That
    # step depends only on the gradient, so the shrink can be added to the
    # update it produces (this transform goes last in the chain).
    def init_fn(params: optax.Params) -> optax.ScaleByScheduleState:
        del params
        return optax.ScaleByScheduleState(count=_tree.zero_count())

    def shrink(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        state = _tree.check_state(fn_name, state, optax.ScaleByScheduleState, updates)
        lr = _check.evaluate(fn_name, "learning_rate", learning_rate, state.count)
        updates = _tree.map_buffers(
            lambda u, p: _kernels.cast(u - lr * weight_decay * p, u.dtype), updates, params
        )
        return updates, optax.ScaleByScheduleState(_tree.safe_increment(state.count))

    decay = optax.GradientTransformation(init_fn, shrink)
    return _checked(fn_name, decay, needs_params=("weight_decay", weight_decay))


def torch_sgd(
    lr: ScalarOrSchedule,
    momentum: ScalarOrSchedule = 0.0,
    dampening: float | jax.Array = 0.0,
    weight_decay: float | jax.Array = 0.0,
    nesterov: bool = False,
    *,
    maximize: bool = False,
    accumulator_dtype: Any | None = None,
    stochastic_rounding: bool = False,
    seed: int | jax.Array = 0,
    layout: str = "per_leaf",
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

    With a Python ``momentum=0`` no buffer is kept, as in PyTorch, and with a
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
    _check.check_learning_rate(name, lr, arg="lr")
    mu = _check.check_momentum(name, momentum)
    tau = _check.check_dampening(name, dampening)
    _check.check_weight_decay(name, weight_decay)
    nesterov = _check.check_bool(name, "nesterov", nesterov)
    maximize = _check.check_bool(name, "maximize", maximize)
    _check.check_dtype(name, "accumulator_dtype", accumulator_dtype)
    _rounding.rounding(name, stochastic_rounding, seed)
    layout = _layout.check_layout(name, layout)
    if nesterov and ((mu is not None and mu <= 0.0) or (tau is not None and tau != 0.0)):
        raise ValueError(
            f"{name}: nesterov=True requires momentum > 0 and dampening = 0, as in "
            f"torch.optim.SGD; got momentum={momentum!r}, dampening={dampening!r}."
        )
    # Stages depend on Python types and flags only, never on array values, so
    # optax.inject_hyperparams builds the same chain at init and under jit.
    parts: list[optax.GradientTransformation] = []
    if maximize:
        parts.append(optax.scale(-1.0))
    if not _check.is_python_zero(weight_decay):
        decay = optax.add_decayed_weights(weight_decay)
        parts.append(_checked(name, decay, needs_params=("weight_decay", weight_decay)))
    if not _check.is_python_zero(momentum):
        if not isinstance(momentum, int | float) and not callable(momentum):
            # PyTorch ignores dampening when momentum is 0; an array momentum
            # (inject_hyperparams) keeps the buffer, so drop the dampening there.
            dampening = jnp.where(jnp.asarray(momentum) == 0, 0.0, dampening)
        parts.append(
            _core.gradient_buffer(
                name,
                momentum,
                nesterov=nesterov,
                dampening=dampening,
                accumulator_dtype=accumulator_dtype,
                stochastic_rounding=stochastic_rounding,
                seed=seed,
                layout=layout,
            )
        )
    scale = optax.scale_by_learning_rate(_check.checked_schedule(name, "lr", lr))
    parts.append(scale if len(parts) > int(maximize) else _checked(name, scale))
    return optax.chain(*parts)


def keras_sgd(
    learning_rate: ScalarOrSchedule = 0.01,
    momentum: ScalarOrSchedule = 0.0,
    nesterov: bool = False,
    *,
    weight_decay: float | jax.Array | None = None,
    accumulator_dtype: Any | None = None,
    stochastic_rounding: bool = False,
    seed: int | jax.Array = 0,
    layout: str = "per_leaf",
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
      momentum: :math:`\mu \in [0, 1)`, or a schedule.
      nesterov: Keras' Nesterov form.
      weight_decay: decoupled decay :math:`\lambda \ge 0`, or ``None`` for none;
        needs ``params`` in ``update``.
      accumulator_dtype: dtype of the velocity; ``None`` keeps each param's
        dtype (the framework's behaviour).
      stochastic_rounding: round the new velocity stochastically into a
        bfloat16 or float16 buffer, as in :func:`momentum_jax.momentum`.
      seed: the rounding's seed, as in :func:`momentum_jax.momentum`.
      layout: the state layout, as in :func:`momentum_jax.momentum`.

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
    name = "momentum_jax.compat.keras_sgd"
    _check.check_learning_rate(name, learning_rate)
    _check.check_momentum(name, momentum)
    nesterov = _check.check_bool(name, "nesterov", nesterov)
    if weight_decay is not None:
        _check.check_weight_decay(name, weight_decay)
    _check.check_dtype(name, "accumulator_dtype", accumulator_dtype)
    _rounding.rounding(name, stochastic_rounding, seed)
    layout = _layout.check_layout(name, layout)
    step: optax.GradientTransformation
    if _check.is_python_zero(momentum):
        # Keras keeps no momentum variable then; neither do we. (An array zero,
        # as inject_hyperparams passes, keeps the velocity: same numbers.)
        step = _checked(
            name,
            optax.scale_by_learning_rate(
                _check.checked_schedule(name, "learning_rate", learning_rate)
            ),
        )
    else:
        step = _core.heavy_ball(
            name,
            learning_rate,
            momentum,
            nesterov=nesterov,
            weight_decay=0.0,
            accumulator_dtype=accumulator_dtype,
            stochastic_rounding=stochastic_rounding,
            seed=seed,
            layout=layout,
        )
    if weight_decay is None or _check.is_python_zero(weight_decay):
        return optax.chain(step)
    # The decay term is added to the finished momentum update: it must not
    # enter the velocity, and the momentum step depends on the gradient alone.
    return optax.chain(step, _decoupled_weight_decay(name, learning_rate, weight_decay))


def tf1_momentum(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule,
    *,
    use_nesterov: bool = False,
    accumulator_dtype: Any | None = None,
    stochastic_rounding: bool = False,
    seed: int | jax.Array = 0,
    layout: str = "per_leaf",
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
      accumulator_dtype: dtype of the accumulator; ``None`` keeps each param's
        dtype (the framework's behaviour).
      stochastic_rounding: round the new accumulator stochastically into a
        bfloat16 or float16 buffer, as in :func:`momentum_jax.momentum`.
      seed: the rounding's seed, as in :func:`momentum_jax.momentum`.
      layout: the state layout, as in :func:`momentum_jax.momentum`.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

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
    name = "momentum_jax.compat.tf1_momentum"
    _check.check_learning_rate(name, learning_rate)
    _check.check_momentum(name, momentum)
    use_nesterov = _check.check_bool(name, "use_nesterov", use_nesterov)
    return optax.chain(
        _core.gradient_buffer(
            name,
            momentum,
            nesterov=use_nesterov,
            dampening=0.0,
            accumulator_dtype=accumulator_dtype,
            stochastic_rounding=stochastic_rounding,
            seed=seed,
            layout=layout,
        ),
        optax.scale_by_learning_rate(_check.checked_schedule(name, "learning_rate", learning_rate)),
    )
