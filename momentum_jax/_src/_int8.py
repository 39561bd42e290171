"""Eight-bit buffers: int8 codes shaped like the param, one float32 scale per block.

A block is ``BLOCK`` consecutive elements along the last axis (a whole row
when the last axis is shorter). Its scale is its largest magnitude ``s``, and
element ``x`` is stored as the code ``q = x * 127 / s`` rounded to an integer
in ``[-127, 127]``, read back as ``q * (1/127) * s``. The codes shard exactly
like the param, and the scales along the same axes, so a block never spans
two devices when the last axis is split in multiples of ``BLOCK``.

Exactness: ``127 * float32(1/127)`` is 1 in float32, so the block's largest
element, which is coded ±127 by a select rather than a division, reads back
as ±s exactly; a zero block, and a block of one value, are stored exactly.
A block holding a NaN has a NaN scale and reads back as NaN everywhere; one
holding ±inf (and no NaN) reads back ±inf there and NaN (0 * inf) elsewhere:
non-finite either way, so ``optax.apply_if_finite`` sees it.

Stochastic quantization rounds ``t = x * 127 / s`` up with probability
``t - floor(t)``, drawing 24 uniform bits per element from the counter-based
hash of :mod:`momentum_jax._src._rounding`; its expectation is ``t`` to within
``2**-24`` of a code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from momentum_jax._src import _rounding
from momentum_jax._src._checks import public

#: Elements per scale, along the last axis.
BLOCK = 256
#: Arrays with fewer elements, or a last axis shorter than ``MIN_ROW``, keep a float32 buffer.
MIN_SIZE, MIN_ROW = 4096, 32
INT8 = np.dtype(np.int8)
_STEP = np.float32(1 / 127)  # 127 * _STEP == 1 exactly in float32


class Int8Buffer(NamedTuple):
    """An eight-bit buffer of one array: ``x ≈ codes * (1/127) * scale of its block``.

    Attributes:
      codes: ``int8``, shaped like the param, each in ``[-127, 127]``.
      scales: ``float32``, shaped like the param but for the last axis, which
        holds one scale per block of 256 consecutive elements (the last block
        may be shorter): the largest magnitude in the block.

    Read its values with :func:`momentum_jax.dequantize`.
    """

    codes: jax.Array
    scales: jax.Array


def is_leaf(x: Any) -> bool:
    """``None`` or an :class:`Int8Buffer`: one array's buffer in a state's tree, or none."""
    return x is None or isinstance(x, Int8Buffer)


def quantizes(x: Any) -> bool:
    """True for the arrays whose int8 buffer is an :class:`Int8Buffer`."""
    shape = jnp.shape(x)
    return len(shape) > 0 and math.prod(shape) >= MIN_SIZE and shape[-1] >= MIN_ROW


def _spread(per_block: jax.Array, length: int) -> jax.Array:
    """One value per block repeated over the block's elements (fused by XLA, never stored)."""
    return jnp.repeat(per_block, min(BLOCK, length), axis=-1)[..., :length]


def _absmax(x: jax.Array) -> jax.Array:
    length = x.shape[-1]
    size = min(BLOCK, length)
    blocks = -(-length // size)
    x = jnp.abs(x)
    if blocks * size != length:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, blocks * size - length)])
    return jnp.max(x.reshape(*x.shape[:-1], blocks, size), axis=-1)


def quantize(x: jax.Array, key: jax.Array | None = None) -> Int8Buffer:
    """``x`` in int8 codes and block scales: round-to-nearest, or stochastic with ``key``."""
    x = x.astype(jnp.float32)
    length = x.shape[-1]
    scales = _absmax(x)
    t = jnp.where(
        jnp.abs(x) == _spread(scales, length), jnp.sign(x) * 127, x * _spread(127 / scales, length)
    )
    if key is None:
        q = jnp.round(t)
    else:
        uniform = (_rounding.element_bits(x.shape, key) >> 8).astype(jnp.float32) * 2.0**-24
        low = jnp.floor(t)
        q = low + (uniform < t - low)
    return Int8Buffer(q.astype(jnp.int8), scales)


def _decode(buffer: Int8Buffer) -> jax.Array:
    codes = buffer.codes
    return (codes.astype(jnp.float32) * _STEP) * _spread(buffer.scales, codes.shape[-1])


@public("momentum_jax.dequantize")
def dequantize(tree: Any) -> Any:
    """``tree`` with each :class:`momentum_jax.Int8Buffer` replaced by its float32 values.

    A state's buffers are int8 codes with block scales when it was built with
    ``accumulator_dtype=jnp.int8``; this reads them as arrays shaped like the
    params. Other leaves (the float32 buffers of small arrays, counts) come
    back as they are.

    Args:
      tree: a state, a field of one (``state.velocity``), or one buffer.

    Returns:
      The same tree, each int8 buffer replaced by a float32 array.

    Example:
      >>> import jax.numpy as jnp
      >>> import momentum_jax
      >>> tx = momentum_jax.momentum(0.1, 0.9, accumulator_dtype=jnp.int8)
      >>> params = jnp.zeros((64, 256))
      >>> _, state = tx.update(jnp.ones_like(params), tx.init(params))
      >>> type(state.velocity).__name__, momentum_jax.dequantize(state.velocity)[0, :3]
      ('Int8Buffer', Array([0.1, 0.1, 0.1], dtype=float32))
    """
    return jax.tree.map(
        lambda b: _decode(b) if isinstance(b, Int8Buffer) else b, tree, is_leaf=is_leaf
    )


def plain(tree: Any) -> Any:
    """``tree`` with each :class:`Int8Buffer` replaced by its codes (shaped like its param)."""
    return jax.tree.map(
        lambda b: b.codes if isinstance(b, Int8Buffer) else b, tree, is_leaf=is_leaf
    )


def converted(old: Any, new: Any) -> Any:
    """``old``, a saved buffer, in the form of ``new``, a fresh one: a float buffer quantized
    (to nearest) for an int8 one, an int8 buffer (or its fields, read without a target)
    dequantized for a float one; anything else as it is."""
    if isinstance(old, Mapping) and set(old) == set(Int8Buffer._fields):
        old = Int8Buffer(**old)
    if isinstance(new, Int8Buffer) and isinstance(old, jax.Array | np.ndarray):
        return quantize(jnp.asarray(old)) if old.shape == new.codes.shape else old
    if isinstance(old, Int8Buffer) and isinstance(new, jax.Array):
        return _decode(Int8Buffer(*map(jnp.asarray, old)))
    return old


def store(new: Any, like: Any, seed: Any, count: Any) -> tuple[Any, Any]:
    """``new`` (float) in ``like``'s buffers: int8 buffers quantized, others cast.

    Returns the stored tree and the values the output reads: each int8 buffer
    dequantized; other leaves as stored or, with a ``seed`` (``new`` then
    already rounded where 16-bit), as in ``new``, in float32. With a ``seed``
    the quantization is stochastic, its bits drawn as for the 16-bit buffers
    (:func:`momentum_jax._src._rounding.round_tree`: the same keys, by each
    array's position counting ``optax.MaskedNode``).
    """
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
    leaves, treedef = jax.tree.flatten(new, is_leaf=masked)
    likes = jax.tree.leaves(like, is_leaf=lambda x: masked(x) or isinstance(x, Int8Buffer))
    keys = [None] * len(leaves)
    if seed is not None:
        keys = _rounding.leaf_keys(seed, _rounding.BUFFERS, count, len(leaves))
    stored, read = [], []
    for x, b, key in zip(leaves, likes, keys, strict=True):
        if isinstance(b, Int8Buffer):
            s = quantize(x, key)
            stored.append(s)
            read.append(_decode(s))
        else:
            stored.append(x if masked(b) else x.astype(b.dtype))
            read.append(x if seed is not None else stored[-1])
    return jax.tree.unflatten(treedef, stored), jax.tree.unflatten(treedef, read)
