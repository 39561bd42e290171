"""Stochastic rounding into bfloat16 and float16, with no random key in any state.

A value computed in float32 is stored in a 16-bit float by rounding up with
probability equal to the fraction cut off, so the stored value equals the
exact one in expectation: small contributions (``α·g`` against ``μ·v``, an
update against its param) survive on average instead of vanishing, as they
do under round-to-nearest.

The random bits are a counter-based hash of (seed, stage, update count,
leaf position, element index): a pure function of the state and the build
arguments, so a resumed run draws the same bits as an uninterrupted one and
the state holds no key. The hash is a few integer operations per element
that XLA fuses into the update's loop; the element index comes from
``iota``, which every device computes for its own shard, so sharded params
need no communication.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from momentum_jax._src import _checks
from momentum_jax._src._checks import public

# Bits dropped from a float32 pattern to reach each 16-bit format's precision.
_DROPPED = {jnp.dtype(jnp.bfloat16): 16, jnp.dtype(jnp.float16): 13}
_FLOAT16_TINY = 2.0**-14  # float16's smallest normal: below it the grid is 2**-24

# Stage constants, so that the velocity and the params of one step, rounded
# with the same seed, draw unrelated bits.
BUFFERS, PARAMS = 0x5BD1E995, 0x27D4EB2F


def narrow(dtype: Any) -> bool:
    """True for the dtypes rounded stochastically (bfloat16 and float16)."""
    return jnp.dtype(dtype) in _DROPPED


def _hash(x: jax.Array) -> jax.Array:
    """A bijective mix of uint32 values (the lowbias32 constants of C. Wellons' hash prospector)."""
    x = (x ^ (x >> 16)) * np.uint32(0x7FEB352D)
    x = (x ^ (x >> 15)) * np.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _mix(x: jax.Array) -> jax.Array:
    """A cheaper bijective mix for the per-element bits: multiply, xorshift, multiply.

    Its input already differs per step, buffer and seed (through the key), so
    one round suffices: the high bits, the ones used, depend on every input bit.
    """
    x = x * np.uint32(0x7FEB352D)
    return (x ^ (x >> 15)) * np.uint32(0x846CA68B)


def _element_index(shape: tuple[int, ...]) -> jax.Array:
    """Each element's row-major index (mod 2**32), built per axis so that it shards like x."""
    index, stride = jnp.zeros(shape, jnp.uint32), 1
    for axis in reversed(range(len(shape))):
        index = index + lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride % 2**32)
        stride *= shape[axis]
    return index


def element_bits(shape: tuple[int, ...], key: jax.Array) -> jax.Array:
    """32 random bits per element of an array of ``shape``, from its leaf's ``key``."""
    return _mix(_element_index(shape) ^ key)


def stochastic_round(x: jax.Array, dtype: Any, key: jax.Array) -> jax.Array:
    """``x`` (float32) rounded stochastically to a value of ``dtype``, kept in float32.

    Adding ``r``, uniform in ``[0, 2**k)``, to the float32 bit pattern and
    clearing its ``k`` low bits rounds the magnitude up with probability
    (cut-off bits) / 2**k: exactly the fraction cut off. Representable values
    come back unchanged, infinities stay infinite and every NaN stays a NaN.
    Beyond float16's largest value (65504) the result is round-to-nearest's:
    65504 below 65520, infinity from there on. float16 below its smallest
    normal is spaced 2**-24, not 13 bits below the value: there ``x`` is first
    shifted by 2**-14 (same sign) into the binade whose float32 grid is 13 bits
    finer than 2**-24, and shifted back after.
    """
    dropped = _DROPPED[jnp.dtype(dtype)]
    bits = element_bits(x.shape, key)
    shifted = x
    if jnp.dtype(dtype) == jnp.float16:
        offset = jnp.where(jnp.abs(x) < _FLOAT16_TINY, jnp.copysign(_FLOAT16_TINY, x), 0.0)
        shifted = x + offset
    pattern = lax.bitcast_convert_type(shifted, jnp.uint32) + (bits >> (32 - dropped))
    mask = np.uint32((0xFFFFFFFF << dropped) & 0xFFFFFFFF)
    rounded = lax.bitcast_convert_type(pattern & mask, jnp.float32)
    if shifted is not x:
        # Beyond float16's largest (65504) rounding up would be infinite: below 65520 it
        # stays 65504, from there on it is x, which the store makes infinite, both as
        # round-to-nearest does.
        rounded = jnp.where(jnp.abs(x) < 65520, jnp.clip(rounded - offset, -65504, 65504), x)
        rounded = jnp.copysign(rounded, x)  # -0 and what rounds to 0 from below stay -0
    # A NaN's added bits could carry into the sign bit (0x7FFFFFFF, the NaN of NVIDIA GPUs).
    return jnp.where(jnp.isnan(x), x, rounded)


def leaf_keys(seed: Any, stage: int, count: Any, num_leaves: int) -> list[jax.Array]:
    """One uint32 key per leaf position, from the seed, the stage and the update count.

    Computed as one array (then sliced), which keeps tracing cheap for models
    with thousands of arrays.
    """
    uint32 = jnp.uint32
    step = _hash(_hash(jnp.asarray(seed).astype(uint32) ^ np.uint32(stage)) + count.astype(uint32))
    keys = _hash(lax.iota(uint32, max(num_leaves, 1)) * np.uint32(0x9E3779B9) + step)
    return [lax.index_in_dim(keys, i, keepdims=False) for i in range(num_leaves)]


def salt(tree: Any, is_leaf: Any) -> int:
    """A stage's salt from where ``optax.MaskedNode`` stands in ``tree`` (0 if nowhere).

    Under ``optax.masked`` and ``optax.partition`` a MaskedNode stands for other groups'
    arrays, so two groups' trees place them differently: mixed into their keys, the salt
    keeps their bits apart also where an array of each has the same position (the packs of
    the packed layout, whose packed arrays are ``None``; subtrees labelled whole).
    """
    value = 0
    leaves = jax.tree.leaves(tree, is_leaf=lambda x: x is None or is_leaf(x))
    for index, leaf in enumerate(leaves):  # FNV-1a over the positions
        if isinstance(leaf, optax.MaskedNode):
            value = ((value ^ (index + 1)) * 0x01000193) & 0xFFFFFFFF
    return value


def warn_no_effect(what: str, why: str, fix: str) -> None:
    warnings.warn(
        f"{_checks.caller()}: {what} has no effect: {why}. {fix}, or leave it out.",
        stacklevel=4,
    )


def _position(x: Any) -> bool:
    # optax.masked and optax.partition hide other groups' params behind MaskedNode: counting
    # those keeps each array's position global, so groups with one seed draw unrelated bits.
    return isinstance(x, optax.MaskedNode)


def round_tree(new: Any, like: Any, seed: Any, stage: int, count: Any) -> Any:
    """``new`` (float32) rounded stochastically where ``like`` is 16-bit, still in float32.

    The values are exactly those the 16-bit buffers will hold. Each goes through its
    16-bit dtype and back (exact), so that XLA reads the step's output from the stored
    buffer instead of recomputing it, which would copy the donated buffer first.
    """
    leaves, treedef = jax.tree.flatten(new, is_leaf=_position)
    dtypes = [getattr(b, "dtype", None) for b in jax.tree.leaves(like, is_leaf=_position)]
    keys = leaf_keys(seed, stage ^ salt(new, _position), count, len(leaves))
    out = [
        stochastic_round(x.astype(jnp.float32), d, key).astype(d).astype(jnp.float32)
        if d is not None and narrow(d)
        else x
        for x, d, key in zip(leaves, dtypes, keys, strict=True)
    ]
    return jax.tree.unflatten(treedef, out)


class StochasticRoundParamsState(NamedTuple):
    """State of :func:`momentum_jax.stochastic_round_params`.

    Attributes:
      count: number of updates done so far. ``shape=(), dtype=int32``; it
        saturates at ``2**31 - 1`` instead of overflowing.
    """

    count: jax.Array  # type: ignore[assignment]  # shape=(), dtype=int32


@public("momentum_jax.stochastic_round_params")
def stochastic_round_params(seed: int | jax.Array = 0) -> optax.GradientTransformationExtraArgs:
    r"""The last stage of a chain for bfloat16 (or float16) params: stochastic rounding.

    With round-to-nearest, ``optax.apply_updates`` rounds :math:`\theta + u`
    back to :math:`\theta` whenever :math:`|u|` is below half a bfloat16 ulp
    of :math:`\theta` (about :math:`2^{-9}|\theta|`), so small steps are lost.
    This stage computes :math:`\theta + u` in float32, rounds it
    stochastically to the param's dtype, giving :math:`\tilde\theta` with
    :math:`\mathbb{E}[\tilde\theta] = \theta + u`, and returns the update
    :math:`\tilde\theta - \theta` in the dtype the update came in. Adding it
    back, as ``optax.apply_updates``, Flax NNX's ``Optimizer.update`` and
    ``eqx.apply_updates`` do, gives :math:`\tilde\theta` bit for bit
    whenever :math:`\tilde\theta - \theta` fits that dtype: always for
    float32 updates, and for 16-bit ones whenever :math:`\tilde\theta` lies
    within a factor of 2 of :math:`\theta` (Sterbenz's lemma), which covers
    every update smaller than half its param: the updates that
    round-to-nearest loses. A larger 16-bit update (a param near zero, a
    change of sign) is rounded to nearest once more, within one ulp of
    :math:`\tilde\theta`. Params of other dtypes get their updates unchanged.

    The random bits depend on ``seed``, the update count (the state's only
    field), each param's position in the tree and each element's index:
    a resumed run is bit-identical to an uninterrupted one.

    Put it last in the chain, after every stage that changes the updates,
    and pass the params to ``update``.

    Args:
      seed: an integer in ``[0, 2**31 - 1]``, or an integer scalar array;
        another seed draws other bits.

    Returns:
      The stage; its state, a :class:`momentum_jax.StochasticRoundParamsState`,
      holds only the update count.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import momentum_jax
      >>> optimizer = optax.chain(
      ...     momentum_jax.momentum(1e-4, 0.9, accumulator_dtype=jnp.bfloat16,
      ...                           stochastic_rounding=True),
      ...     momentum_jax.stochastic_round_params(),
      ... )
      >>> params = jnp.ones(10_000, jnp.bfloat16)
      >>> state = optimizer.init(params)
      >>> for _ in range(20):
      ...   updates, state = optimizer.update(jnp.ones_like(params), state, params)
      ...   params = optax.apply_updates(params, updates)
      >>> print(params.dtype, f"{float(params.astype(jnp.float32).mean()):.3f}")
      bfloat16 0.988

    The exact mean is :math:`1 - 0.0121`; with round-to-nearest every
    param would still be 1.0, as no step reaches half a bfloat16 ulp.

    References:
      Zamirai, Zhang, Aberger and De Sa, `Revisiting BFloat16 training
      <https://arxiv.org/abs/2010.06192>`_, 2020.
    """

    def init_fn(params: Any) -> StochasticRoundParamsState:
        if not any(narrow(jnp.result_type(p)) for p in jax.tree.leaves(params)):
            warn_no_effect(
                "stochastic_round_params()",
                "no param is bfloat16 or float16",
                "Cast params to bfloat16",
            )
        return StochasticRoundParamsState(jnp.zeros([], jnp.int32))

    def update_fn(updates: Any, state: Any, params: Any = None, **extra_args: Any) -> Any:
        _checks.check_state(state, StochasticRoundParamsState, updates)
        if params is None:
            raise _checks.error(
                ValueError, "update() needs the params: call update(updates, state, params)."
            )
        like = jax.tree.map(lambda p: _checks.as_array(p) if _checks.trains(p) else None, params)
        _checks.check_tree(updates, like, what="update")
        like = jax.tree.map(
            lambda u, p: None if u is None else p, updates, like, is_leaf=_checks.is_none
        )
        exact = jax.tree.map(
            lambda u, p: p.astype(jnp.float32) + u if narrow(p.dtype) else u, updates, like
        )
        rounded = round_tree(exact, like, seed, PARAMS, state.count)

        def step(u: Any, p: Any, r: Any) -> Any:
            return (
                u
                if u is None or not narrow(p.dtype)
                else (r - p.astype(jnp.float32)).astype(u.dtype)
            )

        out = jax.tree.map(step, updates, like, rounded, is_leaf=_checks.is_none)
        return out, StochasticRoundParamsState(_checks.safe_increment(state.count))  # type: ignore[arg-type]

    return optax.GradientTransformationExtraArgs(_checks.named(init_fn), _checks.named(update_fn))
