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

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from momentum_jax._src import _tree
from momentum_jax._src import _validation as _check

SEED_MAX = _check.INT32_MAX

# Bits dropped from a float32 pattern to reach each 16-bit format's precision.
_DROPPED = {jnp.dtype(jnp.bfloat16): 16, jnp.dtype(jnp.float16): 13}

# Stage constants, so that the velocity and the params of one step, rounded
# with the same seed, draw unrelated bits.
BUFFERS, PARAMS = 0x5BD1E995, 0x27D4EB2F


def narrow(dtype: Any) -> bool:
    """True for the dtypes rounded stochastically (bfloat16 and float16)."""
    return jnp.dtype(dtype) in _DROPPED


def check_seed(fn_name: str, seed: Any) -> Any:
    """``seed``: an int in ``[0, 2**31 - 1]`` or an integer scalar array (may be traced)."""
    if isinstance(seed, bool | np.bool_) or not isinstance(
        seed, int | np.integer | np.ndarray | jax.Array
    ):
        raise TypeError(
            f"{fn_name}: seed must be an integer in [0, {SEED_MAX}], got {_check.describe(seed)}."
        )
    if isinstance(seed, np.ndarray | jax.Array):
        if not jnp.issubdtype(seed.dtype, jnp.integer) or seed.shape != ():
            raise TypeError(
                f"{fn_name}: seed must be an integer scalar, got an array of dtype "
                f"{seed.dtype} and shape {seed.shape}."
            )
        if _check.is_traced(seed):
            return seed
    if not 0 <= int(seed) <= SEED_MAX:
        raise ValueError(f"{fn_name}: seed must be in [0, {SEED_MAX}], got seed={seed!r}.")
    return seed


def _hash(x: jax.Array) -> jax.Array:
    """A bijective mix of uint32 values (the lowbias32 constants of C. Wellons' hash prospector)."""
    x = lax.bitwise_xor(x, lax.shift_right_logical(x, np.uint32(16)))
    x = lax.mul(x, np.uint32(0x7FEB352D))
    x = lax.bitwise_xor(x, lax.shift_right_logical(x, np.uint32(15)))
    x = lax.mul(x, np.uint32(0x846CA68B))
    return lax.bitwise_xor(x, lax.shift_right_logical(x, np.uint32(16)))


def _uint32(x: Any) -> jax.Array:
    return lax.convert_element_type(x, jnp.uint32)


def _element_index(shape: tuple[int, ...]) -> jax.Array:
    """Each element's row-major index (mod 2**32), built per axis so that it shards like x."""
    if not shape:
        return jnp.zeros((), jnp.uint32)
    index, stride = lax.broadcasted_iota(jnp.uint32, shape, len(shape) - 1), shape[-1]
    for axis in reversed(range(len(shape) - 1)):
        term = lax.broadcasted_iota(jnp.uint32, shape, axis)
        index = lax.add(index, lax.mul(term, np.uint32(stride % 2**32)))
        stride *= shape[axis]
    return index


def _mix(x: jax.Array) -> jax.Array:
    """A cheaper bijective mix for the per-element bits: multiply, xorshift, multiply.

    Its input already differs per step, buffer and seed (through the key), so
    one round suffices: the high bits, the ones used, depend on every input bit.
    """
    x = lax.mul(x, np.uint32(0x7FEB352D))
    x = lax.bitwise_xor(x, lax.shift_right_logical(x, np.uint32(15)))
    return lax.mul(x, np.uint32(0x846CA68B))


def stochastic_round(x: jax.Array, dtype: Any, key: jax.Array) -> jax.Array:
    """``x`` (float32) rounded stochastically to a value of ``dtype``, kept in float32.

    The bits are drawn from ``key`` (uint32) and each element's index.

    Adding ``r``, uniform in ``[0, 2**k)``, to the float32 bit pattern and
    clearing its ``k`` low bits rounds the magnitude up with probability
    (cut-off bits) / 2**k: exactly the fraction cut off. Values already
    representable come back unchanged; infinities stay infinite, and so does
    a value that rounds past the largest finite one, as with round-to-nearest.
    A NaN stays a NaN: arithmetic produces only quiet NaNs, whose top
    mantissa bit survives the addition. (Only a hand-made NaN payload with
    all its top mantissa bits set could carry over into the sign.)
    """
    dropped = _DROPPED[jnp.dtype(dtype)]
    bits = _mix(lax.bitwise_xor(_element_index(x.shape), key))
    pattern = lax.bitcast_convert_type(x, jnp.uint32)
    pattern = lax.add(pattern, lax.shift_right_logical(bits, np.uint32(32 - dropped)))
    pattern = lax.bitwise_and(pattern, np.uint32((0xFFFFFFFF << dropped) & 0xFFFFFFFF))
    return lax.bitcast_convert_type(pattern, jnp.float32)


def leaf_keys(seed: Any, stage: int, count: Any, num_leaves: int) -> list[jax.Array]:
    """One uint32 key per leaf position, from the seed, the stage and the update count.

    Computed as one array (then sliced), which keeps tracing cheap for models
    with thousands of arrays.
    """
    step = _hash(lax.add(_hash(lax.bitwise_xor(_uint32(seed), np.uint32(stage))), _uint32(count)))
    positions = lax.mul(lax.iota(jnp.uint32, max(num_leaves, 1)), np.uint32(0x9E3779B9))
    keys = _hash(lax.add(positions, step))
    return [lax.index_in_dim(keys, i, keepdims=False) for i in range(num_leaves)]


def _is_none(x: Any) -> bool:
    return x is None


def _wide(b: Any) -> Any:
    return b if b is None or not narrow(b.dtype) else lax.convert_element_type(b, jnp.float32)


class Rounding(NamedTuple):
    """Stochastic rounding of a buffer block's 16-bit buffers (used by ``_tree.buffer_block``)."""

    seed: Any

    def widen(self, buffers: Any) -> Any:
        """``buffers`` with each 16-bit leaf in float32 (exact): the step computes in float32."""
        return jax.tree.map(_wide, buffers, is_leaf=_is_none)

    def store(self, wide: Any, like: Any, count: Any) -> Any:
        """``wide`` buffers rounded stochastically where ``like``'s are 16-bit, kept in float32.

        The values are exactly those the 16-bit buffers will hold, so the
        step's output, computed from them in float32, uses the stored
        buffers; :meth:`narrow` then casts them, exactly, into ``like``'s dtypes.
        """
        dtypes = iter(b.dtype for b in jax.tree.leaves(like))
        leaves, treedef = jax.tree.flatten(wide)  # None (no buffer) is no leaf: no position
        keys = leaf_keys(self.seed, BUFFERS, count, len(leaves))
        out = []
        for x, key in zip(leaves, keys, strict=True):
            dtype = next(dtypes)
            if narrow(dtype):
                # Through the 16-bit dtype and back (exact): XLA then reads the
                # output from the new buffer instead of recomputing it from the
                # old one, which would make it copy the donated buffer first.
                x = lax.convert_element_type(stochastic_round(x, dtype, key), dtype)
                x = lax.convert_element_type(x, jnp.float32)
            out.append(x)
        return jax.tree.unflatten(treedef, out)

    @staticmethod
    def narrow(buffers: Any, like: Any) -> Any:
        """``buffers`` cast into the dtypes of ``like``."""
        return jax.tree.map(lambda b, x: lax.convert_element_type(b, x.dtype), buffers, like)


def rounding(fn_name: str, stochastic_rounding: Any, seed: Any) -> Rounding | None:
    """The checked build arguments: a :class:`Rounding`, or ``None`` when it is off."""
    enabled = _check.check_bool(fn_name, "stochastic_rounding", stochastic_rounding)
    seed = check_seed(fn_name, seed)
    return Rounding(seed) if enabled else None


class StochasticRoundParamsState(NamedTuple):
    """State of :func:`momentum_jax.stochastic_round_params`.

    Attributes:
      count: number of updates done so far. ``shape=(), dtype=int32``; it
        saturates at ``2**31 - 1`` instead of overflowing.
    """

    count: jax.Array  # type: ignore[assignment]  # shape=(), dtype=int32


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
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`momentum_jax.StochasticRoundParamsState`.

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
    name = "momentum_jax.stochastic_round_params"
    seed = check_seed(name, seed)

    def init_fn(params: optax.Params) -> StochasticRoundParamsState:
        del params
        return StochasticRoundParamsState(_tree.zero_count())

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, StochasticRoundParamsState]:
        del extra_args
        state = _tree.check_state(name, state, StochasticRoundParamsState, updates)
        if params is None:
            raise ValueError(
                f"{name}: update() needs the params (it rounds the new params "
                "themselves): call update(updates, state, params)."
            )
        _tree.check_tree(name, updates, _tree.trainable_only(params), against="the params have")
        updates, params = _tree.as_arrays(updates), _tree.as_arrays(params)
        # Positions count the updates that are not None, as the buffers' do.
        positions = iter(range(len(jax.tree.leaves(updates))))
        keys = leaf_keys(seed, PARAMS, state.count, len(jax.tree.leaves(updates)))

        def round_one(u: Any, p: Any) -> Any:
            if u is None:
                return None
            key = keys[next(positions)]
            if not narrow(p.dtype):
                return u
            p32 = lax.convert_element_type(p, jnp.float32)
            exact = lax.add(p32, lax.convert_element_type(u, jnp.float32))
            rounded = stochastic_round(exact, p.dtype, key)
            if p.dtype == jnp.float16:
                # Below float16's normal range the rounded value is not yet
                # representable; the update must lead to a value the param can hold.
                rounded = lax.convert_element_type(
                    lax.convert_element_type(rounded, p.dtype), jnp.float32
                )
            return lax.convert_element_type(lax.sub(rounded, p32), u.dtype)

        out = jax.tree.map(round_one, updates, params, is_leaf=_is_none)
        new_state = StochasticRoundParamsState(_tree.safe_increment(state.count))
        return out, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
