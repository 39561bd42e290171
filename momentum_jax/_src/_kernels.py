"""The one-array arithmetic every transform is built from.

Each function works on one array; the transforms lift them to pytrees with
:func:`momentum_jax._src._tree.map_buffers`. Arithmetic happens in the wider
of the gradient and buffer dtypes, so a float32 buffer for bfloat16 params
really accumulates in float32, and each result is cast back to the dtype it
is stored in.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from momentum_jax._src import _tree


def cast(x: jax.Array, dtype: Any) -> jax.Array:
    # A Python-level test on a static dtype: no cast traced when none is needed,
    # which keeps tracing cheap for models with thousands of arrays.
    return x if x.dtype == dtype else x.astype(dtype)


def widen(g: jax.Array, *buffers: jax.Array) -> jax.Array:
    """``g`` in the widest dtype among it and ``buffers``."""
    dtype = g.dtype
    for b in buffers:
        dtype = jnp.promote_types(dtype, b.dtype)
    return cast(g, dtype)


def decay_add(
    g: jax.Array, b: jax.Array, decay: Any, scale: Any = None, dtype: Any = None
) -> jax.Array:
    """``decay * b + scale * g`` (``scale=None`` adds ``g`` itself), cast to ``dtype``.

    ``dtype`` defaults to the buffer's: the buffer update of every transform
    (velocity, gradient buffer, QHM's moving average, AggMo's buffers) and
    each look-ahead output are this one expression.
    """
    return decay_add_term(scaled(g, b, scale), b, decay, dtype)


def scaled(g: jax.Array, b: jax.Array, scale: Any = None) -> jax.Array:
    """``scale * g`` in the wider of the two dtypes (``g`` itself for ``scale=None``)."""
    wide = widen(g, b)
    return wide if scale is None else scale * wide


def decay_add_term(term: jax.Array, b: jax.Array, decay: Any, dtype: Any = None) -> jax.Array:
    """``decay * b + term`` cast to ``dtype`` (the buffer's by default).

    :func:`decay_add` with the ``scale * g`` term computed once and shared,
    as Nesterov's velocity and look-ahead do: one multiply fewer per array
    for XLA to compile.
    """
    return cast(decay * b + term, b.dtype if dtype is None else dtype)


def negated_look_ahead(term: jax.Array, v: jax.Array, neg_decay: Any, dtype: Any) -> jax.Array:
    """``-(decay * v + term)`` written as ``(-decay) * v - term``, cast to ``dtype``.

    Bit-identical (negation is exact and rounding is symmetric), and with
    ``-decay`` computed once by the caller it is two operations per array
    where a separate negation would be three.
    """
    return cast(neg_decay * v - term, dtype)


def negate(x: jax.Array, dtype: Any) -> jax.Array:
    """``-x`` cast to ``dtype``.

    Written as a multiply by -1 (exact, bit-identical to a negation): XLA:CPU
    keeps the multiply, and compiles the param update p + v*(-1) that
    apply_updates then builds into a faster loop than p + (-v), about 10% on
    a 10M-param step. See benchmarks/xla_cpu_probes.py.
    """
    return cast(x * -1.0, dtype)


def mean(g: jax.Array, buffers: tuple[jax.Array, ...]) -> jax.Array:
    """``(1/K) * sum(buffers)`` in the widest dtype, cast to the gradient's dtype."""
    total = widen(buffers[0], g, *buffers[1:])
    for b in buffers[1:]:
        total = total + widen(b, total)
    return cast(total / len(buffers), g.dtype)


def coupled_weight_decay(updates: Any, params: Any, weight_decay: Any) -> Any:
    """``g + weight_decay * theta`` in the gradient's dtype (coupled L2, torch's form)."""
    return _tree.map_buffers(lambda g, p: cast(g + weight_decay * p, g.dtype), updates, params)
