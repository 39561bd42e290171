"""The one-array arithmetic every transform is built from.

Each function works on one array; the transforms lift them to pytrees with
:func:`momentum_jax._src._tree.map_buffers`. Arithmetic happens in the wider
of the gradient and buffer dtypes, so a float32 buffer for bfloat16 params
really accumulates in float32, and each result is cast back to the dtype it
is stored in.

The arithmetic is written with ``jax.lax`` and explicit dtype promotion, not
with ``jax.numpy`` operators: the result is the same, bit for bit (every
operand is promoted exactly as ``jnp.multiply`` and ``jnp.add`` would), but
each ``jax.numpy`` operator is a small jitted function that costs about twice
as much to trace. With thousands of arrays that is a measurable part of a
training step's compile time (``benchmarks/compile_time.py``). A
hyperparameter is converted once per dtype it meets (:class:`Scalar`), not
once per array.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from momentum_jax._src import _tree


class Scalar:
    """A scalar hyperparameter, converted once for each dtype it meets.

    ``value`` is a Python number, a scalar array or a traced scalar; its own
    dtype and weak type decide promotion, as in ``jnp.multiply(value, x)``.
    Create one per update call (the converted values may be tracers).
    """

    __slots__ = ("_by_dtype", "value")

    def __init__(self, value: Any) -> None:
        self.value = value
        self._by_dtype: dict[tuple[Any, bool], tuple[Any, jax.Array]] = {}

    def promote(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``x`` and the scalar, both in the dtype of ``jnp.multiply(value, x)``."""
        key = (x.dtype, bool(getattr(x, "weak_type", False)))
        hit = self._by_dtype.get(key)
        if hit is None:
            dtype = jnp.result_type(self.value, x)
            hit = self._by_dtype[key] = (dtype, lax.convert_element_type(self.value, dtype))
        dtype, scalar = hit
        return cast(x, dtype), scalar


def as_scalar(value: Any) -> Scalar:
    return value if isinstance(value, Scalar) else Scalar(value)


def cast(x: jax.Array, dtype: Any) -> jax.Array:
    # A Python-level test on a static dtype: no cast traced when none is needed,
    # which keeps tracing cheap for models with thousands of arrays.
    return x if x.dtype == dtype else lax.convert_element_type(x, dtype)


def widen(g: jax.Array, *buffers: jax.Array) -> jax.Array:
    """``g`` in the widest dtype among it and ``buffers``."""
    dtype = g.dtype
    for b in buffers:
        if b.dtype != dtype:
            dtype = jnp.promote_types(dtype, b.dtype)
    return cast(g, dtype)


def multiply(scale: Any, x: jax.Array) -> jax.Array:
    """``jnp.multiply(scale, x)`` for a scalar ``scale`` (a value or a :class:`Scalar`)."""
    x, s = as_scalar(scale).promote(x)
    return lax.mul(x, s)


def add(a: jax.Array, b: jax.Array) -> jax.Array:
    """``jnp.add(a, b)``."""
    if a.dtype != b.dtype:
        dtype = jnp.result_type(a, b)
        a, b = cast(a, dtype), cast(b, dtype)
    return lax.add(a, b)


def subtract(a: jax.Array, b: jax.Array) -> jax.Array:
    """``jnp.subtract(a, b)``."""
    if a.dtype != b.dtype:
        dtype = jnp.result_type(a, b)
        a, b = cast(a, dtype), cast(b, dtype)
    return lax.sub(a, b)


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
    return wide if scale is None else multiply(scale, wide)


def decay_add_term(term: jax.Array, b: jax.Array, decay: Any, dtype: Any = None) -> jax.Array:
    """``decay * b + term`` cast to ``dtype`` (the buffer's by default).

    :func:`decay_add` with the ``scale * g`` term computed once and shared,
    as Nesterov's velocity and look-ahead do: one multiply fewer per array
    for XLA to compile.
    """
    return cast(add(multiply(decay, b), term), b.dtype if dtype is None else dtype)


def negated_look_ahead(term: jax.Array, v: jax.Array, neg_decay: Any, dtype: Any) -> jax.Array:
    """``-(decay * v + term)`` written as ``(-decay) * v - term``, cast to ``dtype``.

    Bit-identical (negation is exact and rounding is symmetric), and with
    ``-decay`` computed once by the caller it is two operations per array
    where a separate negation would be three.
    """
    return cast(subtract(multiply(neg_decay, v), term), dtype)


def negate(x: jax.Array, dtype: Any, minus_one: Scalar | None = None) -> jax.Array:
    """``-x`` cast to ``dtype``; ``minus_one`` is a ``Scalar(-1.0)`` shared by a whole tree.

    Written as a multiply by -1 (exact, bit-identical to a negation): XLA:CPU
    keeps the multiply, and compiles the param update p + v*(-1) that
    apply_updates then builds into a faster loop than p + (-v), about 10% on
    a 10M-param step. See benchmarks/xla_cpu_probes.py.
    """
    return cast(multiply(Scalar(-1.0) if minus_one is None else minus_one, x), dtype)


def mean(g: jax.Array, buffers: tuple[jax.Array, ...]) -> jax.Array:
    """``(1/K) * sum(buffers)`` in the widest dtype, cast to the gradient's dtype."""
    total = widen(buffers[0], g, *buffers[1:])
    for b in buffers[1:]:
        total = lax.add(total, widen(b, total))
    return cast(lax.div(total, np.asarray(len(buffers), total.dtype)), g.dtype)


def coupled_weight_decay(updates: Any, params: Any, weight_decay: Any) -> Any:
    """``g + weight_decay * theta`` in the gradient's dtype (coupled L2, torch's form)."""
    decay = as_scalar(weight_decay)
    return _tree.map_buffers(
        lambda g, p: cast(add(g, multiply(decay, p)), g.dtype), updates, params
    )
