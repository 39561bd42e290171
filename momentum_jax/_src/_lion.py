"""Lion: the sign of an interpolation between the gradient and its moving average."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from momentum_jax._src import _checks
from momentum_jax._src._checks import StateOptions, public
from momentum_jax._src._layout import with_layout
from momentum_jax._src._skeleton import buffer_transform, hyper, scale_by_learning_rate

if TYPE_CHECKING:
    from momentum_jax._src._checks import Unpack


class LionState(NamedTuple):
    """State of the first stage of :func:`momentum_jax.lion`.

    Attributes:
      count: number of updates done so far. ``shape=(), dtype=int32``; it
        saturates at ``2**31 - 1`` instead of overflowing.
      buffer: the moving average :math:`m_t` of the gradients, a pytree
        shaped like the params (optax's ``mu``). Its dtype is the
        ``accumulator_dtype`` given to the transform, or each param's own dtype
        when that is ``None``; with ``jnp.int8``, large arrays hold a
        :class:`momentum_jax.Int8Buffer`.
    """

    count: jax.Array  # type: ignore[assignment]  # shape=(), dtype=int32
    buffer: Any


@public("momentum_jax.lion", StateOptions)
def lion(
    learning_rate: optax.ScalarOrSchedule,
    b1: optax.ScalarOrSchedule = 0.9,
    b2: optax.ScalarOrSchedule = 0.99,
    weight_decay: float | jax.Array = 1e-3,
    *,
    mask: Any = None,
    **options: Unpack[StateOptions],
) -> optax.GradientTransformationExtraArgs:
    r"""Lion: a step of the same size in every coordinate, signed by a blend of momenta.

    With ``g_t`` the gradient of the ``t``-th update:

    .. math::

      m_0 = 0, \qquad
      u_t = -\alpha_t \left[ \operatorname{sign}\big((1 - \beta_1) g_t + \beta_1 m_{t-1}\big)
      + \lambda \theta_t \right], \qquad
      m_t = \beta_2 m_{t-1} + (1 - \beta_2) g_t,

    and ``optax.apply_updates`` adds ``u_t`` to the params. The sign reads
    the buffer before it is updated, and the weight decay :math:`\lambda` is
    decoupled: it is not in the buffer, and the learning rate scales it. It is
    ``optax.lion`` step for step, ``accumulator_dtype`` acting as its ``mu_dtype``
    (the update's dtype is the gradient's promoted with it; ``jnp.int8``, which optax
    lacks, keeps the gradient's, also where a small array keeps a float32 buffer): ``optax.chain``
    of the sign stage, ``optax.add_decayed_weights(weight_decay, mask)`` (left out for
    a Python ``0``) and ``optax.scale_by_learning_rate(learning_rate)``. The sign is that of
    :func:`momentum_jax.scale_by_qhm`'s output with :math:`\beta = \beta_2`
    and :math:`\nu = \beta_1 / \beta_2`, but computed as above, which keeps
    it equal to optax's in float32 too. Lion's steps are larger than those of
    SGD with momentum: its authors use a learning rate 3–10 times smaller than
    AdamW's and a weight decay 3–10 times larger.

    Integer and boolean leaves do not train (see :mod:`momentum_jax`).

    Args:
      learning_rate: the step size :math:`\alpha_t` (``>= 0``), or a schedule.
      b1: :math:`\beta_1` in ``[0, 1)``, the weight of the buffer in the sign;
        or a schedule.
      b2: :math:`\beta_2` in ``[0, 1)``, the decay of the buffer; or a schedule.
      weight_decay: the decoupled decay :math:`\lambda \ge 0`; unless it is a
        Python ``0``, ``params`` must be passed to ``update``.
      mask: which params the weight decay applies to, as in ``optax.lion``: a
        tree of booleans shaped like the params (or a prefix of them), or a
        function of the params returning one; ``None`` for all.
      accumulator_dtype: the buffer's dtype (``None``: each param's own), as
        in :func:`momentum_jax.momentum`; ``jnp.int8`` keeps int8 codes and
        block scales for large arrays, as there.
      stochastic_rounding: round the new buffer stochastically, as in
        :func:`momentum_jax.momentum`.
      seed: the rounding's seed, as in :func:`momentum_jax.momentum`.
      layout: the state layout, as in :func:`momentum_jax.momentum`.

    Returns:
      An ``optax.GradientTransformationExtraArgs``, a chain whose first state
      is a :class:`momentum_jax.LionState`.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import momentum_jax
      >>> optimizer = momentum_jax.lion(learning_rate=0.01, weight_decay=0.0)
      >>> params = jnp.array([1.0, -2.0])
      >>> state = optimizer.init(params)
      >>> for grads in (jnp.array([1.0, -1.0]), jnp.array([-0.05, -1.0])):
      ...   updates, state = optimizer.update(grads, state)
      ...   params = optax.apply_updates(params, updates)
      >>> print(params)  # the small gradient -0.05 did not outweigh the buffer
      [ 0.98 -1.98]

    References:
      Chen et al., `Symbolic discovery of optimization algorithms
      <https://arxiv.org/abs/2302.06675>`_, NeurIPS 2023.
    """

    def coefficients(state: LionState) -> tuple[Any, Any, Any, Any]:
        beta1, beta2 = hyper("b1", b1, state.count, 1.0), hyper("b2", b2, state.count, 1.0)
        # b2 out of range is NaN: the sign, which reads the old buffer, must show it too.
        if isinstance(beta2, int | float):
            beta1 = beta2 if math.isnan(beta2) else beta1
        else:
            beta1 = jnp.where(jnp.isnan(beta2), jnp.nan, beta1)
        return beta1, 1 - beta1, beta2, 1 - beta2

    def buffer(c: Any, g: jax.Array, m: jax.Array) -> jax.Array:
        _, _, beta2, one_minus_beta2 = c
        return one_minus_beta2 * g + beta2 * m

    def output(c: Any, g: jax.Array, m: jax.Array) -> jax.Array:  # m: the buffer m_{t-1}
        beta1, one_minus_beta1, _, _ = c
        return jnp.sign(one_minus_beta1 * g + beta1 * m)

    block = buffer_transform(
        LionState, coefficients, buffer, output, options, output_reads_old=True
    )
    parts = [with_layout(block, options["layout"])]
    if not _checks.is_python_zero(weight_decay):
        parts.append(optax.add_decayed_weights(hyper("weight_decay", weight_decay, None), mask))
    return optax.chain(*parts, scale_by_learning_rate(learning_rate))
