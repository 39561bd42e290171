"""Momentum variants: quasi-hyperbolic momentum (QHM) and aggregated momentum (AggMo)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from momentum_jax._src import _base
from momentum_jax._src._base import ScalarOrSchedule


class QHMState(NamedTuple):
    """State of :func:`momentum_jax.qhm`.

    Attributes:
      count: number of updates done so far. ``shape=(), dtype=int32``; it
        saturates at ``2**31 - 1`` instead of overflowing.
      buffer: the exponential moving average :math:`b_t` of the gradients, a
        pytree shaped like the params. Unlike :class:`momentum_jax.MomentumState`
        ``velocity`` it holds no learning rate and is not bias-corrected. Its
        dtype is the ``accumulator_dtype`` given to the transform, or each
        param's own dtype when that is ``None``.
    """

    count: jax.Array  # type: ignore[assignment]  # shape=(), dtype=int32
    buffer: Any  # pytree shaped like params


class AggMoState(NamedTuple):
    """State of :func:`momentum_jax.aggmo`.

    Attributes:
      count: number of updates done so far. ``shape=(), dtype=int32``; it
        saturates at ``2**31 - 1`` instead of overflowing.
      buffers: a tuple of ``K`` pytrees, one per momentum in ``momenta`` and in
        that order, each shaped like the params (dtype ``accumulator_dtype``,
        or each param's own dtype when that is ``None``).

    The ``K`` buffers are kept as separate param-shaped trees rather than one
    tree with a leading axis of size ``K``. Memory is the same either way;
    separate trees let every buffer be sharded, masked or checkpointed exactly
    like the params, and the sum over buffers is ``K - 1`` elementwise adds
    that fuse with the update instead of a reduction over a stacked axis (on
    CPU the stacked layout measured about three times slower for large leaves).
    """

    count: jax.Array  # type: ignore[assignment]  # shape=(), dtype=int32
    buffers: tuple[Any, ...]  # K pytrees shaped like params


def _wide(g: jax.Array, b: jax.Array) -> Any:
    # Arithmetic in the wider of the gradient and buffer dtypes, so a float32
    # buffer for bfloat16 params receives the gradient at full precision.
    return jnp.promote_types(g.dtype, b.dtype)


def _ema_step(g: jax.Array, b: jax.Array, beta: Any) -> jax.Array:
    g = g.astype(_wide(g, b))
    return (beta * b + (1 - beta) * g).astype(b.dtype)


def _qhm_update(g: jax.Array, b: jax.Array, lr: Any, nu: Any) -> jax.Array:
    wide = g.astype(_wide(g, b))
    return (-lr * ((1 - nu) * wide + nu * b)).astype(g.dtype)


def _accumulate(g: jax.Array, b: jax.Array, beta: Any) -> jax.Array:
    return (beta * b + g.astype(_wide(g, b))).astype(b.dtype)


def _accumulate_tree(updates: Any, buffer: Any, beta: Any) -> Any:
    return jax.tree.map(lambda g, b: _accumulate(g, b, beta), updates, buffer)


def _aggmo_update(g: jax.Array, *buffers: jax.Array, lr: Any) -> jax.Array:
    wide = jnp.result_type(g, *buffers)
    total = buffers[0].astype(wide)
    for b in buffers[1:]:
        total = total + b.astype(wide)
    return (-(lr / len(buffers)) * total).astype(g.dtype)


def qhm(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule = 0.999,
    nu: ScalarOrSchedule = 0.7,
    *,
    accumulator_dtype: Any | None = None,
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

    Hyperparameters may be numbers, scalar arrays or optax schedules; a schedule
    is evaluated at the number of updates already done (0 for the first).

    Args:
      learning_rate: the step size :math:`\alpha_t` (``>= 0``), or a schedule.
      momentum: the averaging factor :math:`\beta_t` in ``[0, 1)``, or a
        schedule such as :func:`momentum_jax.schedules.demon`.
      nu: the immediate discount :math:`\nu_t` in ``[0, 1]``, the weight of
        the averaged buffer against the current gradient; or a schedule.
      accumulator_dtype: dtype of the buffer; ``None`` keeps each param's
        dtype. ``jnp.float32`` keeps an exact buffer for bfloat16 params.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`momentum_jax.QHMState`.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import optax
      >>> from momentum_jax._src._variants import qhm
      >>> def loss(params):
      ...   return jnp.sum(jnp.array([1.0, 10.0]) * params ** 2)
      >>> optimizer = qhm(learning_rate=0.05, momentum=0.9, nu=0.7)
      >>> params = jnp.array([1.0, 1.0])
      >>> state = optimizer.init(params)
      >>> for _ in range(3):
      ...   grads = jax.grad(loss)(params)
      ...   updates, state = optimizer.update(grads, state, params)
      ...   params = optax.apply_updates(params, updates)
      >>> print(params)
      [0.8753 0.114]

    References:
      Ma and Yarats, `Quasi-hyperbolic momentum and Adam for deep learning
      <https://arxiv.org/abs/1810.06801>`_, ICLR 2019.
    """
    name = "momentum_jax.qhm"
    _base.check_learning_rate(name, learning_rate)
    _base.check_momentum(name, momentum)
    _base.check_range(
        name,
        "nu",
        nu,
        low=0.0,
        high=1.0,
        high_inclusive=True,
        hint="nu=0 is plain SGD and nu=1 steps along the averaged buffer alone.",
    )
    dtype = _base.check_dtype(name, "accumulator_dtype", accumulator_dtype)

    def init_fn(params: optax.Params) -> QHMState:
        return QHMState(_base.zero_count(), _base.init_buffer(name, params, dtype))

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, QHMState]:
        state = cast(QHMState, state)
        del params, extra_args
        _base.check_same_structure(name, updates, state.buffer)
        lr = _base.evaluate(name, "learning_rate", learning_rate, state.count)
        beta = _base.evaluate(name, "momentum", momentum, state.count)
        weight = _base.evaluate(name, "nu", nu, state.count)
        buffer = jax.tree.map(lambda g, b: _ema_step(g, b, beta), updates, state.buffer)
        new_updates = jax.tree.map(lambda g, b: _qhm_update(g, b, lr, weight), updates, buffer)
        return new_updates, QHMState(_base.safe_increment(state.count), buffer)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_momenta(fn_name: str, momenta: Any) -> int:
    """Validate ``momenta`` at build time and return how many there are."""
    example = "a tuple of numbers such as momenta=(0.0, 0.9, 0.99)"
    if _base.is_traced(momenta) or isinstance(momenta, jax.Array | np.ndarray):
        # A 1-D array, for instance one that optax.inject_hyperparams traces.
        if np.ndim(momenta) != 1:
            raise ValueError(
                f"{fn_name}: momenta must be one-dimensional (one momentum per "
                f"buffer), got an array of shape {np.shape(momenta)}."
            )
        if not (
            jnp.issubdtype(momenta.dtype, jnp.integer)
            or jnp.issubdtype(momenta.dtype, jnp.floating)
        ):
            raise TypeError(
                f"{fn_name}: momenta must hold real numbers, got an array of dtype {momenta.dtype}."
            )
        count = int(np.shape(momenta)[0])
        elements: Sequence[Any] = (
            [] if _base.is_traced(momenta) else [float(beta) for beta in np.asarray(momenta)]
        )
    elif (
        callable(momenta)
        or isinstance(momenta, str | bytes | Mapping | Set)
        or not isinstance(momenta, Sequence)
    ):
        hint = ""
        if isinstance(momenta, int | float) and not isinstance(momenta, bool):
            hint = f" For a single buffer, write momenta=({momenta!r},)."
        raise TypeError(
            f"{fn_name}: momenta must be {example}, got {type(momenta).__name__} {momenta!r}.{hint}"
        )
    else:
        count = len(momenta)
        elements = momenta
    if count == 0:
        raise ValueError(
            f"{fn_name}: momenta must hold at least one momentum, got momenta={momenta!r}. "
            f"Pass {example}."
        )
    for index, beta in enumerate(elements):
        arg = f"momenta[{index}]"
        numeric = isinstance(beta, int | float | jax.Array | np.ndarray | np.generic)
        if isinstance(beta, bool | np.bool_) or not numeric:
            # Schedules are refused too: AggMo keeps each buffer's momentum fixed.
            raise TypeError(
                f"{fn_name}: {arg} must be a number in [0, 1), got "
                f"{arg}={beta!r} (a {type(beta).__name__})."
            )
        _base.check_momentum(fn_name, beta, arg=arg)
    return count


def aggmo(
    learning_rate: ScalarOrSchedule,
    momenta: Sequence[float | jax.Array] | jax.Array = (0.0, 0.9, 0.99),
    *,
    accumulator_dtype: Any | None = None,
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
      accumulator_dtype: dtype of the buffers; ``None`` keeps each param's
        dtype.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`momentum_jax.AggMoState` holding ``K`` param-shaped buffers.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import optax
      >>> from momentum_jax._src._variants import aggmo
      >>> def loss(params):
      ...   return jnp.sum(jnp.array([1.0, 10.0]) * params ** 2)
      >>> optimizer = aggmo(learning_rate=0.02, momenta=(0.0, 0.9, 0.99))
      >>> params = jnp.array([1.0, 1.0])
      >>> state = optimizer.init(params)
      >>> for _ in range(3):
      ...   grads = jax.grad(loss)(params)
      ...   updates, state = optimizer.update(grads, state, params)
      ...   params = optax.apply_updates(params, updates)
      >>> print(params)
      [ 0.8125 -0.3251 ]

    References:
      Lucas, Sun, Zemel and Grosse, `Aggregated momentum: stability through
      passive damping <https://arxiv.org/abs/1804.00325>`_, ICLR 2019.
    """
    name = "momentum_jax.aggmo"
    _base.check_learning_rate(name, learning_rate)
    num_buffers = _check_momenta(name, momenta)
    dtype = _base.check_dtype(name, "accumulator_dtype", accumulator_dtype)

    def init_fn(params: optax.Params) -> AggMoState:
        return AggMoState(
            _base.zero_count(),
            tuple(_base.init_buffer(name, params, dtype) for _ in range(num_buffers)),
        )

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, AggMoState]:
        state = cast(AggMoState, state)
        del params, extra_args
        if len(state.buffers) != num_buffers:
            raise ValueError(
                f"{name}: the state holds {len(state.buffers)} buffers but the "
                f"transform was built with {num_buffers} momenta. Call init again."
            )
        _base.check_same_structure(name, updates, state.buffers[0])
        lr = _base.evaluate(name, "learning_rate", learning_rate, state.count)
        buffers = tuple(
            _accumulate_tree(updates, buffer, momenta[i]) for i, buffer in enumerate(state.buffers)
        )
        new_updates = jax.tree.map(lambda g, *bs: _aggmo_update(g, *bs, lr=lr), updates, *buffers)
        return new_updates, AggMoState(_base.safe_increment(state.count), buffers)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
