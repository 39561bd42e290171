"""Eight-bit buffers: int8 codes shaped like the param, one float32 scale per block.

A block is a run of ``BLOCK`` (256) consecutive elements of a row (:func:`rows`):
the last axis when it holds 256 or more, else the fewest last axes that hold 256
together, merged (rows of 32 go eight to a block, a (512, 512, 3, 3) kernel has
rows of 4608). Where 256 does not divide the row, a block is a divisor of it from
128 to 256, else 256 with the last block shorter. Its scale ``s`` is its largest
magnitude, and element ``x`` is stored as the code ``q``, ``x * 127 / s``
rounded to an integer in ``[-127, 127]``, read back as ``q * (s / 127)``. The
codes shard exactly like the param and the scales along the same axes (their
length is 1 on the row's axes but the first), so a block never spans two
devices when the param is split along the axes before its row, or along the
row's first axis into whole blocks.

Exactness: the block's largest element is coded ±127 (see ``_encode``) and
±127 reads back as ±s by a select rather than a product (XLA may reassociate
products); so a zero block, a block of one magnitude and every block's
largest element are stored exactly. NaN has a code of its own, -128: a NaN
is stored as NaN. Its block's scale is that of the other elements where the
max skips NaN (XLA:CPU with jax 0.10); where the max propagates it (XLA:CPU
with jax 0.12), the whole block reads back as NaN. An infinity makes its
block's scale infinite, and the whole block reads back as NaN. Non-finite
values stay non-finite, so ``optax.apply_if_finite`` sees them and momentum
carries them on, as a float buffer does.

Stochastic quantization rounds ``t = x * 127 / s`` up with probability
``t - floor(t)``, drawing 24 uniform bits per element from the counter-based
hash of :mod:`momentum_jax._src._rounding`: its expectation is ``t`` to within
``2**-24`` of a code (and ``2**-20`` of ``t``, see ``_encode``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from momentum_jax._src import _checks, _rounding
from momentum_jax._src._checks import public

#: Elements per scale (at most; at least half as many where the shape allows).
BLOCK = 256
#: Arrays with fewer elements keep a float32 buffer.
MIN_SIZE = 4096
INT8 = np.dtype(np.int8)
_STEP, _WIDEN = np.float32(1 / 127), np.float32(1 + 2**-20)
_NAN = -128  # the code of NaN
# Below this largest magnitude a block is coded 0: 127 / s overflows to inf near 3.7e-37 (and
# 0 * inf is NaN), and below about 2**-119 the decoding's s / 127 is subnormal, which XLA:CPU
# flushes to 0.
_TINY = np.float32(2**-100)


class Int8Buffer(NamedTuple):
    """An array's eight-bit buffer: ``value ≈ code * scale / 127``, one scale per block.

    ``accumulator_dtype=jnp.int8`` gives each array of at least 4096 elements
    one of these; smaller arrays keep a float32 buffer. Read its values with
    :func:`momentum_jax.dequantize`.

    Attributes:
      codes: ``int8``, shaped like the param, in ``[-127, 127]`` (-128 is NaN).
      scales: ``float32``, one per block of 256 consecutive elements (a divisor
        of the row from 128 to 256 where 256 does not divide it, else 256 with
        the last block shorter), the block's largest magnitude. A row
        is the last axis when it holds 256 elements or more, else the fewest last
        axes that hold 256 together; the scales are shaped like the param with
        one entry per block on the row's first axis and length 1 on the others:
        (64, 512) has (64, 2) scales, (1024, 32) has (128, 1) and
        (512, 512, 3, 3) has (512, 18, 1, 1).
    """

    codes: jax.Array
    scales: jax.Array


def is_leaf(x: Any) -> bool:
    """``None`` or an :class:`Int8Buffer`: one array's buffer in a state's tree, or none."""
    return x is None or isinstance(x, Int8Buffer)


def quantizes(x: Any) -> bool:
    """True for the arrays whose int8 buffer is an :class:`Int8Buffer`."""
    shape = jnp.shape(x)
    return len(shape) > 0 and math.prod(shape) >= MIN_SIZE


class _Pending(NamedTuple):
    """A new int8 buffer before quantization: its float32 values and its blocks' scales."""

    values: jax.Array
    scales: jax.Array


_NODES = (optax.MaskedNode, _Pending)  # one position each in a tree of new buffers


def rows(shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """``shape`` with the axes that hold a block merged into one row, and the elements
    per block along it.

    The row is the fewest last axes ``shape[a:]`` that hold ``BLOCK`` elements or
    more (with a long last axis, that axis alone). A block is ``BLOCK`` consecutive
    elements of it, or all of a row up to ``BLOCK``; where ``BLOCK`` does not divide
    the row, ``BLOCK / 2`` or the largest divisor between them, else ``BLOCK`` with
    the last block shorter. Measured on XLA:CPU (benchmarks/int8_design.py): a
    padded last block makes the reduction over blocks 8x slower, a block that is not
    a power of two makes indexing slower in the other passes, and passes over axes of
    3 (a conv kernel's) do not vectorize: the blocks are reduced and spread over the
    merged row.
    """
    a = len(shape) - 1
    while a > 0 and math.prod(shape[a:]) < BLOCK:
        a -= 1
    length, half = math.prod(shape[a:]), BLOCK // 2
    divisors = (d for d in (BLOCK, half, *range(BLOCK - 1, half, -1)) if length % d == 0)
    return (*shape[:a], length), length if length <= BLOCK else next(divisors, BLOCK)


def _spread(per_block: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """One value per block (shaped like the scales) repeated over its elements, in the
    rows of ``shape`` (:func:`rows`; fused by XLA, never stored)."""
    (*lead, length), size = rows(shape)
    per_block = per_block.reshape(*lead, -1)
    spread = jnp.broadcast_to(per_block[..., None], (*per_block.shape, size))
    spread = spread.reshape(*lead, -1)
    return spread if spread.shape[-1] == length else spread[..., :length]


def _view(x: jax.Array) -> jax.Array:
    """``x`` as blocks, shape ``(*lead, blocks, size)`` (:func:`rows`), zero-padded to a
    whole last block.

    The optimization barrier keeps the reshape out of the fusion that reduces the
    blocks, which XLA:CPU then runs as one vectorized pass, 8x faster
    (benchmarks/int8_design.py); it moves no data. JAX 0.4 cannot ``vmap`` it: there
    the reshape goes without, for a slower reduction and the same numbers.
    """
    (*lead, length), size = rows(x.shape)
    x = x.reshape(*lead, length)
    if length % size:
        x = jnp.pad(x, [(0, 0)] * len(lead) + [(0, -length % size)])
    return _apart(x.reshape(*lead, -1, size))


def _apart(x: jax.Array) -> jax.Array:
    """``x`` behind an optimization barrier (where JAX can ``vmap`` one): the same buffer,
    but a value of its own, which XLA neither fuses through nor merges with another."""
    return jax.lax.optimization_barrier(x) if _barrier_batches() else x  # type: ignore[no-untyped-call]


@functools.cache
def _barrier_batches() -> bool:
    shape = jax.ShapeDtypeStruct((1,), jnp.float32)  # type: ignore[no-untyped-call]
    try:
        jax.eval_shape(jax.vmap(jax.lax.optimization_barrier), shape)
    except NotImplementedError:
        return False
    return True


def _decode(codes: jax.Array, scales: jax.Array) -> jax.Array:
    """Codes shaped like the param to values: ``code * (scale / 127)``, ±127 to ±scale
    exactly (XLA may reassociate any product meant to give it), -128 to NaN."""
    (*lead, length), size = rows(codes.shape)
    expected = (*lead, -(-length // size), *(1,) * (codes.ndim - len(lead) - 1))
    if scales.shape != expected:
        raise _checks.error(
            ValueError,
            f"an Int8Buffer's codes of shape {codes.shape} need scales of shape {expected}, "
            f"got {scales.shape}.",
        )
    spread = _spread(scales, codes.shape)
    values = codes.reshape(spread.shape).astype(jnp.float32)
    exact = jnp.where(jnp.abs(values) == 127, jnp.sign(values) * spread, values * _STEP * spread)
    return jnp.where(values == _NAN, jnp.nan, exact).reshape(codes.shape)


def _encode(x: jax.Array, scales: jax.Array, key: jax.Array | None) -> jax.Array:
    """``x`` (float32, shaped like its param) in codes for its blocks' ``scales``.

    ``x * 127 / s`` may miss 127 by an ulp for the largest element, and the scales
    come from a second run of the arithmetic that another compiler may round apart
    by an ulp (step_with_scales): scaled by ``1 + 2**-20`` and clipped, the largest
    element is coded ±127 for sure, at a cost of ``2**-20`` relative to the rest.
    """
    inverse = jnp.where(scales >= _TINY, 127 * _WIDEN / scales, 0.0)  # per block; 0/0 is 0
    spread = _spread(inverse, x.shape)
    shape, x = x.shape, x.reshape(spread.shape)
    t = jnp.clip(x * spread, -127, 127)
    if key is None:
        q = jnp.round(t)
    else:
        uniform = (_rounding.element_bits(x.shape, key) >> 8).astype(jnp.float32) * 2.0**-24
        low = jnp.floor(t)
        q = low + (uniform < t - low)
    return jnp.where(jnp.isnan(q), _NAN, q).astype(jnp.int8).reshape(shape)


def _scales(blocks: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """The largest magnitude of each of ``_view``'s ``blocks`` of an array of ``shape``,
    shaped like its scales: the row's axis holds the blocks, the axes after it length 1."""
    scales = jnp.max(jnp.abs(blocks), axis=-1)
    return scales.reshape(*scales.shape, *(1,) * (len(shape) - scales.ndim))


def _refuse_split_blocks(x: jax.Array) -> None:
    """Refuse an array split over explicit mesh axes inside its blocks: JAX cannot view
    such an array as blocks without an output sharding, and no block may span devices."""
    typeof = getattr(jax, "typeof", None)  # JAX 0.4 has no explicit axes
    sharding = getattr(typeof(x), "sharding", None) if typeof else None
    spec = tuple(getattr(sharding, "spec", None) or ())
    (*lead, length), size = rows(x.shape)
    a = len(lead)
    for axis in range(a, min(len(spec), x.ndim)):
        names = spec[axis] if isinstance(spec[axis], tuple) else (spec[axis],)
        devices = math.prod(sharding.mesh.shape[n] for n in names if n)  # type: ignore[union-attr]
        if devices == 1 or (axis == a and length // devices % size == 0):
            continue
        raise _checks.error(
            ValueError,
            f"an int8 buffer of shape {x.shape} split over explicit mesh axes {names} holds "
            f"{x.shape[axis] // devices} indices of axis {axis} per device, which cuts its "
            f"blocks of {size} consecutive elements from axis {a} on: split only axis {a}, "
            f"into whole blocks (a multiple of {size} of each row's elements per device), or use "
            "accumulator_dtype=jnp.bfloat16.",
        )


def quantize(x: jax.Array) -> Int8Buffer:
    """The :class:`Int8Buffer` of ``x``, rounded to nearest."""
    _refuse_split_blocks(x)
    x = x.astype(jnp.float32)
    scales = _scales(_view(x), x.shape)
    return Int8Buffer(_encode(x, scales, None), scales)


def step_with_scales(step: Any, g: jax.Array, p: Any, *buffers: Any) -> Any:
    """``step(g, p, *buffers)``, each new int8 buffer paired with its blocks' scales.

    The scales come from ``step`` run a second time on the arrays seen as blocks:
    XLA:CPU then reduces each block in one vectorized pass over the inputs (the
    optimization barrier in ``_view`` keeps the reshape out of that pass), and
    computes the codes in another, storing no float32 values in between; one
    reduction over the values as first computed runs 5-10x slower
    (benchmarks/int8_design.py). Both runs do the same arithmetic, which another
    compiler may round apart by an ulp: ``_encode`` allows for it. The scales
    the second run reads are kept apart from those the codes' pass spreads: merged
    into one broadcast, the XLA of JAX 0.12 stores it as a float32 array the size
    of the param, and the step takes twice as long (tests/test_int8.py checks the
    temporaries).
    """
    coded = [b.codes for b in buffers if isinstance(b, Int8Buffer)]
    for x in [g, *coded] if coded else []:  # placed by hand, or restored: not by init
        _refuse_split_blocks(x)
    wide, values, old = step(g, p, *buffers)
    if not coded:
        return wide, values, old
    # A NaN's code reads as the largest here: no select, which XLA:CPU would not fuse.
    codes = [jnp.maximum(_view(b.codes), -127).astype(jnp.float32) * _STEP for b in buffers]
    blocked = [
        c * _apart(b.scales).reshape(*c.shape[:-1], 1) for c, b in zip(codes, buffers, strict=True)
    ]
    _, again, _ = step(_view(g), None if p is None else _view(p), *blocked)
    paired = [_Pending(v, _scales(x, g.shape)) for v, x in zip(values, again, strict=True)]
    return wide, tuple(paired), old


@public("momentum_jax.dequantize")
def dequantize(tree: Any) -> Any:
    """``tree`` with each :class:`momentum_jax.Int8Buffer` replaced by its float32 values.

    A state's buffers are int8 codes with block scales when it was built with
    ``accumulator_dtype=jnp.int8``; this reads them as arrays shaped like the
    params. A mapping of the two fields (Flax NNX's ``Optimizer`` writes a
    buffer back that way) is read as the buffer. Other leaves (the float32
    buffers of small arrays, counts) come back as they are.

    Args:
      tree: a state, a field of one (``state.velocity``), or one buffer; its
        leaves may be ``jax.ShapeDtypeStruct`` (a state from ``jax.eval_shape``),
        which come back as float32 ones.

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

    def read(x: Any) -> Any:
        x = _from_fields(x)
        if not isinstance(x, Int8Buffer):
            return x
        abstract = isinstance(x.codes, jax.ShapeDtypeStruct)  # from jax.eval_shape
        return jax.eval_shape(_decode, *x) if abstract else _decode(*x)

    return jax.tree.map(read, tree, is_leaf=lambda x: is_leaf(_from_fields(x)))


def converted(old: Any, new: Any) -> Any:
    """``old``, a saved buffer, in the form of ``new``, a fresh one: a float buffer quantized
    (to nearest) for an int8 one, an int8 buffer (or its fields, read without a target)
    dequantized for a float one; anything else as it is."""
    old = _from_fields(old)
    if isinstance(new, Int8Buffer) and isinstance(old, jax.Array | np.ndarray):
        return quantize(jnp.asarray(old)) if old.shape == new.codes.shape else old
    if isinstance(old, Int8Buffer) and isinstance(new, jax.Array):
        return dequantize(Int8Buffer(*map(jnp.asarray, old)))
    return old


def as_buffers(tree: Any, grads: Any) -> Any:
    """``tree``, a buffer tree, with each mapping of an :class:`Int8Buffer`'s two fields that
    stands where ``grads`` has one array made an :class:`Int8Buffer` again (Flax NNX's
    ``Optimizer`` writes a new state back into its variables that way)."""
    treedef = jax.tree.structure(grads)
    try:
        subtrees = treedef.flatten_up_to(tree)  # type: ignore[attr-defined]
    except (ValueError, TypeError):
        return tree  # the gradients do not fit: the checks of update name how
    return jax.tree.unflatten(treedef, [_from_fields(x) for x in subtrees])


def _from_fields(x: Any) -> Any:
    """``x``, or the :class:`Int8Buffer` of a mapping of its two fields (int8 codes: not
    two params that happen to be named ``codes`` and ``scales``)."""
    is_fields = isinstance(x, Mapping) and set(x) == set(Int8Buffer._fields)
    return Int8Buffer(**x) if is_fields and getattr(x["codes"], "dtype", None) == INT8 else x


def store(new: Any, like: Any, seed: Any, count: Any) -> tuple[Any, Any]:
    """``new`` in ``like``'s buffers: int8 buffers quantized, others cast.

    Returns the stored tree and the values the output reads: an int8 buffer's
    float32 values before quantization (reading the stored codes back would make
    XLA compute them a third time); other leaves as stored or, with a ``seed``
    (``new`` then already rounded where 16-bit), as in ``new``, in float32. With a ``seed``
    the quantization is stochastic, its bits drawn as for the 16-bit buffers
    (:func:`momentum_jax._src._rounding.round_tree`: the same keys, by each
    array's position counting ``optax.MaskedNode``).
    """
    leaves, treedef = jax.tree.flatten(new, is_leaf=lambda x: isinstance(x, _NODES))
    likes = jax.tree.leaves(like, is_leaf=lambda x: isinstance(x, (*_NODES, Int8Buffer)))
    keys: list[Any] = [None] * len(leaves)
    if seed is not None:
        stage = _rounding.BUFFERS ^ _rounding.salt(new, lambda x: isinstance(x, _NODES))
        keys = _rounding.leaf_keys(seed, stage, count, len(leaves))
    stored: list[Any] = []
    read: list[Any] = []
    for x, b, key in zip(leaves, likes, keys, strict=True):
        if isinstance(x, _Pending):  # float32 scales, also from float64 arithmetic (x64)
            scales = x.scales.astype(jnp.float32)
            stored.append(Int8Buffer(_encode(x.values.astype(jnp.float32), scales, key), scales))
            read.append(x.values)
        else:
            stored.append(x if isinstance(b, optax.MaskedNode) else x.astype(b.dtype))
            read.append(x if seed is not None else stored[-1])
    return jax.tree.unflatten(treedef, stored), jax.tree.unflatten(treedef, read)
