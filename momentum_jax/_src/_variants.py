"""Momentum variants: quasi-hyperbolic momentum (QHM) and aggregated momentum (AggMo).

Each variant is a learning-rate-free block (:func:`scale_by_qhm`,
:func:`scale_by_aggmo`) chained with ``optax.scale_by_learning_rate``.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from momentum_jax._src import _checks
from momentum_jax._src._checks import AccumulatingOptions, StateOptions, public
from momentum_jax._src._layout import with_layout
from momentum_jax._src._skeleton import (
    accumulation,
    buffer_transform,
    hyper,
    scale_by_learning_rate,
)

if TYPE_CHECKING:
    from momentum_jax._src._checks import Unpack


class QHMState(NamedTuple):
    """State of :func:`momentum_jax.scale_by_qhm` (the first stage of :func:`momentum_jax.qhm`).

    Attributes:
      count: number of updates done so far. ``shape=(), dtype=int32``; it
        saturates at ``2**31 - 1`` instead of overflowing.
      buffer: the exponential moving average :math:`b_t` of the gradients, a
        pytree shaped like the params. Unlike :class:`momentum_jax.MomentumState`
        ``velocity`` it holds no learning rate and is not bias-corrected. Its
        dtype is the ``accumulator_dtype`` given to the transform, or each
        param's own dtype when that is ``None`` (``jnp.int8``: see
        :class:`momentum_jax.MomentumState`).
    """

    count: jax.Array  # type: ignore[assignment]  # shape=(), dtype=int32
    buffer: Any


class AggMoState(NamedTuple):
    """State of :func:`momentum_jax.scale_by_aggmo` (the first stage of :func:`momentum_jax.aggmo`).

    Attributes:
      count: number of updates done so far. ``shape=(), dtype=int32``; it
        saturates at ``2**31 - 1`` instead of overflowing.
      buffers: a tuple of ``K`` pytrees, one per momentum in ``momenta`` and in
        that order, each shaped like the params (dtype ``accumulator_dtype``,
        or each param's own dtype when that is ``None``; ``jnp.int8``: see
        :class:`momentum_jax.MomentumState`).

    The ``K`` buffers are kept as separate param-shaped trees rather than one
    tree with a leading axis of size ``K``. Memory is the same either way;
    separate trees let every buffer be sharded, masked or checkpointed exactly
    like the params, and the sum over buffers is ``K - 1`` elementwise adds
    that fuse with the update instead of a reduction over a stacked axis (on
    CPU the stacked layout measured about three times slower for large leaves).
    """

    count: jax.Array  # type: ignore[assignment]  # shape=(), dtype=int32
    buffers: tuple[Any, ...]


@public("momentum_jax.scale_by_qhm", StateOptions)
def scale_by_qhm(
    momentum: optax.ScalarOrSchedule = 0.999,
    nu: optax.ScalarOrSchedule = 0.7,
    **options: Unpack[StateOptions],
) -> optax.GradientTransformationExtraArgs:
    r"""The learning-rate-free block of quasi-hyperbolic momentum.

    .. math::

      b_0 = 0, \qquad b_t = \beta_t b_{t-1} + (1 - \beta_t) g_t, \qquad
      o_t = (1 - \nu_t) g_t + \nu_t b_t.

    The output is neither negated nor scaled: :func:`momentum_jax.qhm` is
    ``optax.chain(scale_by_qhm(momentum, nu), optax.scale_by_learning_rate(lr))``.
    Integer and boolean leaves get no buffer (see :mod:`momentum_jax`).

    Args:
      momentum: the averaging factor :math:`\beta_t` in ``[0, 1)``, or a schedule.
      nu: the immediate discount :math:`\nu_t` in ``[0, 1]``, or a schedule.
      accumulator_dtype: the buffer's dtype (``None``: each param's own).
      stochastic_rounding: round the new buffer stochastically, as in
        :func:`momentum_jax.momentum`.
      seed: the rounding's seed, as in :func:`momentum_jax.momentum`.
      layout: the state layout, as in :func:`momentum_jax.momentum`.

    Returns:
      The block, whose state is a :class:`momentum_jax.QHMState`.

    Example:
      >>> import jax.numpy as jnp
      >>> import momentum_jax
      >>> block = momentum_jax.scale_by_qhm(momentum=0.5, nu=0.5)
      >>> state = block.init(jnp.zeros(2))
      >>> _, state = block.update(jnp.array([1.0, 2.0]), state)
      >>> out, state = block.update(jnp.array([1.0, -2.0]), state)
      >>> print(out)
      [ 0.875 -1.25 ]

    References:
      Ma and Yarats, 2019: see :func:`momentum_jax.qhm`.
    """

    def coefficients(state: QHMState) -> tuple[Any, Any, Any, Any]:
        beta = hyper("momentum", momentum, state.count, 1.0)
        weight = hyper("nu", nu, state.count, 1.0, closed=True)
        return beta, 1 - beta, weight, 1 - weight

    def buffer(c: Any, g: jax.Array, b: jax.Array) -> jax.Array:
        beta, one_minus_beta, _, _ = c
        return beta * b + one_minus_beta * g

    def output(c: Any, g: jax.Array, b: jax.Array) -> jax.Array:
        _, _, nu, one_minus_nu = c
        return nu * b + one_minus_nu * g

    block = buffer_transform(QHMState, coefficients, buffer, output, options)
    return with_layout(block, options["layout"])


@public("momentum_jax.qhm", StateOptions)
def qhm(
    learning_rate: optax.ScalarOrSchedule,
    momentum: optax.ScalarOrSchedule = 0.999,
    nu: optax.ScalarOrSchedule = 0.7,
    **options: Unpack[StateOptions],
) -> optax.GradientTransformationExtraArgs:
    r"""Quasi-hyperbolic momentum: a weighted mean of the gradient and its moving average.

    With ``g_t`` the gradient of the ``t``-th update:

    .. math::

      b_0 = 0, \qquad b_t = \beta_t b_{t-1} + (1 - \beta_t) g_t, \qquad
      u_t = -\alpha_t \left[ (1 - \nu_t) g_t + \nu_t b_t \right],

    and ``optax.apply_updates`` adds ``u_t`` to the params. The buffer is an
    exponential moving average (no learning rate inside it, no bias
    correction), so its scale does not depend on :math:`\beta`.

    Three settings recover familiar methods: :math:`\nu = 0` is plain SGD;
    :math:`\nu = 1` is momentum with an averaged buffer (PyTorch's ``SGD`` with
    ``dampening=momentum`` and a buffer that starts at zero); :math:`\nu = \beta`
    is Nesterov momentum in PyTorch's form with learning rate
    :math:`\alpha (1 - \beta)`. The authors recommend :math:`\nu = 0.7`,
    :math:`\beta = 0.999` as a default.

    Integer and boolean leaves do not train (see :mod:`momentum_jax`).

    Args:
      learning_rate: the step size :math:`\alpha_t` (``>= 0``), or a schedule.
      momentum: the averaging factor :math:`\beta_t` in ``[0, 1)``, or a
        schedule such as :func:`momentum_jax.schedules.demon`.
      nu: the immediate discount :math:`\nu_t` in ``[0, 1]``, the weight of
        the averaged buffer against the current gradient; or a schedule.
      accumulator_dtype: dtype of the buffer; ``None`` keeps each param's
        dtype. ``jnp.float32`` keeps an exact buffer for bfloat16 params.
      stochastic_rounding: round the new buffer stochastically, as in
        :func:`momentum_jax.momentum`.
      seed: the rounding's seed, as in :func:`momentum_jax.momentum`.
      layout: the state layout, as in :func:`momentum_jax.momentum`.

    Returns:
      ``optax.chain(scale_by_qhm(momentum, nu), optax.scale_by_learning_rate(learning_rate))``:
      its state is a tuple whose first element is a :class:`momentum_jax.QHMState`.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import momentum_jax
      >>> curvature = jnp.array([1.0, 10.0])
      >>> optimizer = momentum_jax.qhm(learning_rate=0.05, momentum=0.9, nu=0.7)
      >>> def step(params, state):  # on the loss sum(curvature * params**2)
      ...   updates, state = optimizer.update(2 * curvature * params, state)
      ...   return optax.apply_updates(params, updates), state
      >>> params, state = jnp.array([1.0, 1.0]), optimizer.init(jnp.zeros(2))
      >>> for _ in range(3):
      ...   params, state = step(params, state)
      >>> print(params)
      [0.8753 0.114]

    References:
      Ma and Yarats, `Quasi-hyperbolic momentum and Adam for deep learning
      <https://arxiv.org/abs/1810.06801>`_, ICLR 2019.
    """
    return optax.chain(
        scale_by_qhm(momentum, nu, **options),
        scale_by_learning_rate(learning_rate),
    )


@public("momentum_jax.scale_by_aggmo", AccumulatingOptions)
def scale_by_aggmo(
    momenta: Sequence[float | jax.Array] | jax.Array = (0.0, 0.9, 0.99),
    **options: Unpack[AccumulatingOptions],
) -> optax.GradientTransformationExtraArgs:
    r"""The learning-rate-free block of aggregated momentum: the mean of ``K`` buffers.

    .. math::

      b_{i,0} = 0, \qquad b_{i,t} = \beta_i b_{i,t-1} + g_t, \qquad
      o_t = \frac{1}{K} \sum_{i=1}^{K} b_{i,t}.

    The output is neither negated nor scaled: :func:`momentum_jax.aggmo` is
    ``optax.chain(scale_by_aggmo(momenta), optax.scale_by_learning_rate(lr))``.
    Integer and boolean leaves get no buffers (see :mod:`momentum_jax`).

    Args:
      momenta: the ``K >= 1`` momenta :math:`\beta_i`, each in ``[0, 1)``; a
        tuple of numbers, or a 1-D array.
      accumulator_dtype: dtype of the buffers; ``None`` keeps each param's dtype.
      stochastic_rounding: round the new buffers stochastically, as in
        :func:`momentum_jax.momentum`.
      seed: the rounding's seed, as in :func:`momentum_jax.momentum`.
      layout: the state layout, as in :func:`momentum_jax.momentum`.
      gradient_accumulation_steps: the number of calls whose mean gradient
        makes one update (``None``, the default, or 1: none). With ``N >= 2``
        the first call of an update decays each buffer and adds :math:`g / N`,
        each later call adds :math:`g / N`, and the output is
        :math:`o_t` on the ``N``-th call and 0 on the others, as in
        :func:`momentum_jax.momentum`. A learning-rate stage chained after it
        counts calls: give its schedule ``lambda count: schedule(count // N)``.

    Returns:
      The block; its state is an :class:`momentum_jax.AggMoState` (in an
      :class:`momentum_jax.AccumulationState` with ``N >= 2``).

    Example:
      >>> import momentum_jax
      >>> import jax.numpy as jnp
      >>> block = momentum_jax.scale_by_aggmo(momenta=(0.0, 0.5))
      >>> state = block.init(jnp.zeros(2))
      >>> for grads in (jnp.array([1.0, 2.0]), jnp.array([1.0, -2.0])):
      ...   out, state = block.update(grads, state)
      >>> print(out)
      [ 1.25 -1.5 ]

    References:
      Lucas et al., 2019: see :func:`momentum_jax.aggmo`.
    """
    count = len(momenta)

    def coefficients(state: AggMoState) -> list[Any]:
        return [hyper(f"momenta[{i}]", momenta[i], state.count, 1.0) for i in range(count)]

    def buffers(betas: Any, g: jax.Array, *bs: jax.Array) -> tuple[jax.Array, ...]:
        return tuple(beta * b + g for beta, b in zip(betas, bs, strict=True))

    def output(betas: Any, g: jax.Array, *bs: jax.Array) -> jax.Array:
        # Summed in float32 at least: K float16 buffers may overflow where their mean fits.
        wide = jnp.promote_types(g.dtype, jnp.float32)
        return (functools.reduce(operator.add, [b.astype(wide) for b in bs]) / count).astype(
            g.dtype
        )

    accumulation(options[_checks.ACCUMULATION], layout=options["layout"])
    block = buffer_transform(AggMoState, coefficients, buffers, output, options, num_buffers=count)
    return with_layout(block, options["layout"])


@public("momentum_jax.aggmo", AccumulatingOptions)
def aggmo(
    learning_rate: optax.ScalarOrSchedule,
    momenta: Sequence[float | jax.Array] | jax.Array = (0.0, 0.9, 0.99),
    **options: Unpack[AccumulatingOptions],
) -> optax.GradientTransformationExtraArgs:
    r"""Aggregated momentum: the mean of several heavy-ball buffers with different momenta.

    With ``g_t`` the gradient of the ``t``-th update and ``K`` momenta
    :math:`\beta_1, \dots, \beta_K`:

    .. math::

      b_{i,0} = 0, \qquad b_{i,t} = \beta_i b_{i,t-1} + g_t, \qquad
      u_t = -\frac{\alpha_t}{K} \sum_{i=1}^{K} b_{i,t},

    and ``optax.apply_updates`` adds ``u_t`` to the params. Every buffer
    starts from the same gradient, so the first update is plain SGD,
    :math:`-\alpha_1 g_1`. A small momentum damps the oscillations that a large
    one builds up, which lets AggMo use momenta close to 1 without diverging.
    With a single momentum it is heavy-ball momentum in the gradient-buffer
    form of ``optax.sgd``. The authors' default is
    ``momenta=(0.0, 0.9, 0.99)``.

    The learning rate multiplies the whole sum, so a learning-rate schedule
    rescales the accumulated history at once (as in ``optax.sgd``).

    Args:
      learning_rate: the step size :math:`\alpha_t` (``>= 0``), or a schedule.
      momenta: the ``K >= 1`` momenta :math:`\beta_i`, each in ``[0, 1)``. A
        tuple of numbers stays static under ``optax.inject_hyperparams``; a
        1-D array is accepted too (and is traced there).
      accumulator_dtype: the buffers' dtype (``None``: each param's own).
      stochastic_rounding: as in :func:`momentum_jax.momentum`, for each buffer.
      seed: the seed of that rounding.
      layout: the state layout (see :func:`momentum_jax.momentum`).
      gradient_accumulation_steps: the number of calls whose mean gradient
        makes one update (``None``, the default, or 1: none). With ``N >= 2``
        each buffer takes the mean of ``N`` gradients as in
        :func:`scale_by_aggmo`, the update is 0 on ``N - 1`` calls out of
        ``N``, and a learning-rate schedule sees completed updates:
        ``optax.MultiSteps(aggmo(...), N)``'s trajectory without its
        param-sized accumulator. (A schedule that ``optax.inject_hyperparams``
        evaluates sees its call count; see the production guide.)

    Returns:
      ``optax.chain(scale_by_aggmo(momenta), optax.scale_by_learning_rate(learning_rate))``:
      its state is a tuple whose first element is a :class:`momentum_jax.AggMoState`
      holding ``K`` param-shaped buffers (in an :class:`momentum_jax.AccumulationState`
      with ``N >= 2``).

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import momentum_jax
      >>> curvature = jnp.array([1.0, 10.0])
      >>> optimizer = momentum_jax.aggmo(learning_rate=0.02, momenta=(0.0, 0.9, 0.99))
      >>> params = jnp.array([1.0, 1.0])
      >>> state = optimizer.init(params)
      >>> for _ in range(3):  # the gradient of sum(curvature * params**2)
      ...   updates, state = optimizer.update(2 * curvature * params, state)
      ...   params = optax.apply_updates(params, updates)
      >>> print(params.round(4))
      [ 0.8125 -0.3251]

    References:
      Lucas, Sun, Zemel and Grosse, `Aggregated momentum: stability through
      passive damping <https://arxiv.org/abs/1804.00325>`_, ICLR 2019.
    """
    return optax.chain(
        scale_by_aggmo(momenta, **options),
        scale_by_learning_rate(learning_rate, options[_checks.ACCUMULATION]),
    )
