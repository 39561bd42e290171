"""The one skeleton that turns an update rule into an optax transform.

A rule is three pure functions: the coefficients of an update from the
state's count, the new buffer(s) of one array, and the output of one array.
:func:`buffer_transform` adds what every transform shares: zero buffers
placed like the params, the checks of ``update``, arithmetic in the wider of
the gradient's and the buffers' dtypes, stochastic rounding of 16-bit buffers
(one explicit step, when asked), casts back to the stored dtypes (int8
buffers: :mod:`momentum_jax._src._int8`), the saturating count and, when
asked, gradient accumulation (:class:`AccumulationState`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from momentum_jax._src import _checks, _int8, _rounding


class AccumulationState(NamedTuple):
    r"""State of a transform built with ``gradient_accumulation_steps=K``, ``K >= 2``.

    The buffers are linear in the gradient, :math:`b' = A b + B g`, so the mean
    of ``K`` gradients is added into them one at a time: on the first call of
    an update :math:`b \leftarrow A b + B g/K`, on the others
    :math:`b \leftarrow b + B g/K`. No param-sized accumulator is kept.

    Attributes:
      micro_step: how many gradients of the current update were added so far,
        in ``[0, K)`` (read modulo ``K``). ``shape=(), dtype=int32``.
      inner: the transform's own state (:class:`momentum_jax.MomentumState`,
        :class:`momentum_jax.AggMoState` or
        :class:`momentum_jax.compat.TorchMomentumState`), whose ``count``
        counts completed updates.
    """

    micro_step: jax.Array  # shape=(), dtype=int32
    inner: Any


def accumulation(steps: int | None, nesterov: bool = False, layout: str = "per_leaf") -> int:
    """``gradient_accumulation_steps`` as a number of calls per update (1 for ``None``).

    Refuses what one buffer cannot accumulate exactly: a Nesterov output adds
    the mean gradient itself, which no state keeps.
    """
    k = int(steps or 1)
    if k > 1 and nesterov:
        raise _checks.error(
            ValueError,
            f"the Nesterov step needs the mean gradient, which gradient_accumulation_steps={k} "
            f"does not keep; use optax.MultiSteps(transform, every_k_schedule={k}) instead.",
        )
    if k > 1 and layout == "packed":
        raise _checks.error(
            ValueError, f"gradient_accumulation_steps={k} needs layout='per_leaf', got 'packed'."
        )
    return k


def zeros(param: Any, dtype: Any, path: tuple[Any, ...] = ()) -> Any:
    """A zero buffer for ``param`` (``None`` if it does not train), sharded like it.

    Under ``jit`` on a mesh with auto axes a constant would be replicated or put
    on one device, so the zeros are computed *from* the param, elementwise:
    ``param * 0`` is the one such expression XLA does not fold away before
    sharding propagation (it is not 0 for inf or NaN), and ``abs(where(isnan))``
    then makes it exactly +0. Eagerly, ``zeros_like`` copies the sharding.
    An int8 buffer is the :class:`~momentum_jax._src._int8.Int8Buffer` of float32
    zeros for a large array, and those zeros for a small one.
    """
    if not _checks.trains(param):
        return None
    real = dtype is not None and not jnp.issubdtype(dtype, jnp.complexfloating)
    if real and jnp.issubdtype(jnp.result_type(param), jnp.complexfloating):
        at, name = jax.tree_util.keystr(path) or "<root>", np.dtype(dtype).name
        raise _checks.error(
            TypeError,
            f"the param at {at} is complex; accumulator_dtype={name} drops its imaginary part.",
        )
    int8 = dtype == _int8.INT8
    dtype = jnp.float32 if int8 else dtype or jnp.result_type(param)
    if not _checks.is_traced(param):
        buffer = jnp.zeros_like(param, dtype)
    else:
        product = param * jnp.zeros((), param.dtype)
        buffer = jnp.abs(jnp.where(jnp.isnan(product), 0, product)).astype(dtype)
    # A Python-scalar param gives a weakly typed buffer, which the first update would make strong.
    buffer = jax.lax.convert_element_type(buffer, buffer.dtype)
    return _int8.quantize(buffer) if int8 and _int8.quantizes(buffer) else buffer


def _refuse_other_buffers(grads: list[Any], buffers: list[Any], tree: Any, dtype: Any) -> None:
    """Refuse buffers this transform's init would not make: a state built with another
    ``accumulator_dtype`` would keep its own (restore_state moves it)."""
    for index, (g, b) in enumerate(zip(grads, buffers, strict=True)):
        if b is None:
            continue
        got = "int8 codes" if isinstance(b, _int8.Int8Buffer) else np.dtype(b.dtype).name
        if dtype == _int8.INT8:
            wanted = "int8 codes" if _int8.quantizes(g) else "float32"
        else:  # None: the param's dtype, which update does not know
            wanted = dtype and np.dtype(jax.dtypes.canonicalize_dtype(dtype)).name
        if got != wanted and (wanted or got == "int8 codes"):
            raise _checks.error(
                ValueError,
                f"the buffer at {_checks.path(tree, index)} is {got}, not "
                f"{wanted or 'a float array'}; move a state of another accumulator_dtype "
                "with restore_state.",
            )


def leaves_of(tree: Any) -> list[Any]:
    """``tree``'s leaves (an int8 buffer is one), with ``None`` where a param does not train."""
    return jax.tree.leaves(tree, is_leaf=_is_leaf)


def _is_leaf(x: Any) -> bool:  # _int8.is_leaf, kept here: a default update stays in 3 modules
    return x is None or isinstance(x, _int8.Int8Buffer)


def hyper(name: str, value: Any, count: Any, high: float = math.inf, closed: bool = False) -> Any:
    """The value of hyperparameter ``name`` for the update at ``count``: itself, or its
    schedule's value.

    A value not checked when the transform was built (an array, a schedule's
    output) that lies outside ``[0, high)`` (``[0, high]`` if closed) becomes NaN (a scalar select),
    so that the update is non-finite and an ``optax.apply_if_finite`` after the transform sees it.
    """
    scheduled = callable(value)
    value = value(count) if scheduled else value
    if type(value) in (int, float):  # checked when the transform was built, unless scheduled
        inside = value >= 0 and (value <= high if closed else value < high)
        return value if inside or not scheduled else math.nan
    what = f"the {name} schedule returned" if scheduled else f"{name} is"
    if not _checks.is_real(value):
        raise _checks.error(TypeError, f"{what} {value!r}, not a real number.")
    if jnp.ndim(value) != 0:
        shape = jnp.shape(value)
        raise _checks.error(ValueError, f"{what} an array of shape {shape}, not a scalar.")
    inside = (value >= 0) & ((value <= high) if closed else (value < high))
    return jnp.where(inside, value, jnp.nan)  # an integer becomes a weakly typed float


def buffer_transform(
    state_type: Any,
    coefficients: Callable[[Any], Any],
    buffers: Callable[..., Any],
    output: Callable[..., Any],
    options: Mapping[str, Any],
    *,
    num_buffers: int | None = None,
    weight_decay: Any = 0.0,
    extra: Callable[[Any], tuple[Any, ...]] | None = None,
    output_reads_old: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """An optax transform from an update rule.

    ``options`` holds the factory's state options, each of them
    (:class:`momentum_jax._src._checks.AccumulatingOptions`). The state is
    ``state_type(count, buffers, *fields)``: one params-shaped buffer tree (a
    tuple of ``num_buffers`` of them when that is given).
    ``coefficients(state)`` gives the update's hyperparameters; for each array,
    ``buffers(c, g, *b)`` the new buffer (a tuple when ``num_buffers``) and
    ``output(c, g, *new_b)`` its output (``output(c, g, *old_b)`` with
    ``output_reads_old``: Lion's reads the buffer before the update). ``g``
    arrives as ``g + weight_decay * theta`` (unless that is a Python 0), in the
    widest dtype of the gradient and the buffers (with ``output_reads_old``, in its
    own dtype, the output in that of the gradient and the stored buffers).
    ``extra(c)``, if given, gives the state's fields after the buffers, and
    ``extra(None)`` their initial values.
    """
    accumulator_dtype, seed = options["accumulator_dtype"], options["seed"]
    dtype = None if accumulator_dtype is None else jnp.dtype(accumulator_dtype)
    decay = not _checks.is_python_zero(weight_decay)
    rounding, size = options["stochastic_rounding"], num_buffers or 1
    steps = int(options.get(_checks.ACCUMULATION) or 1)
    int8 = dtype == _int8.INT8
    if int8 and options["layout"] == "packed":
        raise _checks.error(
            ValueError, "accumulator_dtype=int8 keeps one buffer per array; use layout='per_leaf'."
        )
    narrowed = rounding or int8  # the new buffers leave the step in float32, stored after it

    def init_fn(params: Any) -> Any:
        zero = functools.partial(
            jax.tree_util.tree_map_with_path, lambda at, p: zeros(p, dtype, at)
        )
        trees = tuple(zero(params) for _ in range(size))
        leaves = jax.tree.leaves(trees)
        if rounding and not any(_rounding.narrow(b.dtype) or b.dtype == _int8.INT8 for b in leaves):
            why = ", float16 or int8: int8 codes need 4096 elements or more" * int8
            why = f"no buffer is bfloat16{why or ' or float16'}"
            fix = "Pass accumulator_dtype=jnp.bfloat16"
            _rounding.warn_no_effect("stochastic_rounding=True", why, fix)
        fields = () if extra is None else extra(None)
        state = state_type(jnp.zeros([], jnp.int32), trees if num_buffers else trees[0], *fields)
        return state if steps == 1 else AccumulationState(jnp.zeros([], jnp.int32), state)

    def update_fn(updates: Any, state: Any, params: Any = None, **extra_args: Any) -> Any:
        if steps > 1:
            _checks.check_state(state, AccumulationState, updates)
            # Read modulo K, as optax.MultiSteps counts: a state saved with a larger K
            # (or edited) still completes an update within K calls.
            micro, state = state.micro_step % steps, state.inner
            first, last = micro == 0, micro == steps - 1
        _checks.check_state(state, state_type, updates)
        trees = tuple(state[1]) if num_buffers else (state[1],)
        if len(trees) != size:
            raise _checks.error(
                ValueError, f"the state holds {len(trees)} buffers, expected {size}."
            )
        if int8:
            trees = tuple(_int8.as_buffers(t, updates) for t in trees)
        # Shaped like the params: each Int8Buffer (this transform's or not) as its codes.
        reference = jax.tree.map(
            lambda b: b.codes if isinstance(b, _int8.Int8Buffer) else b, trees[0], is_leaf=_is_leaf
        )
        grads = _checks.check_tree(updates, reference)
        _refuse_other_buffers(grads, leaves_of(trees[0]), reference, dtype)
        thetas = [None] * len(grads)
        if decay:
            if params is None:
                raise _checks.needs_params()
            thetas = _checks.check_tree(params, reference, "param")
            wd = hyper("weight_decay", weight_decay, None)
        c = coefficients(state)
        leaves = [leaves_of(t) for t in trees]
        treedef = jax.tree.structure(trees[0], is_leaf=_is_leaf)

        def out(g: Any, wide: Any, *values: Any) -> Any:
            o = output(c, wide, *values).astype(g.dtype)
            return o if steps == 1 else jnp.where(last, o, 0)  # 0 before an update's last call

        def step(g: Any, p: Any, *bs: Any) -> Any:
            g = (g + wd * p).astype(g.dtype) if decay else g
            wide_bs = tuple(
                b.astype(jnp.float32) if rounding and _rounding.narrow(b.dtype) else b
                for b in (_int8.dequantize(bs) if int8 else bs)
            )
            wide = g.astype(jnp.result_type(g.dtype, *(b.dtype for b in wide_bs)))
            early = None
            if output_reads_old:  # Lion: optax.lion's arithmetic and dtypes (int8 keeps g's)
                wide, kept_as = g, [_int8.INT8] if int8 else [b.dtype for b in bs]
                early = output(c, g, *wide_bs).astype(jnp.result_type(g.dtype, *kept_as))
            if steps > 1:  # b' = A b + B g/K on an update's first call, b + B g/K on the others
                # Products by 0 or 1, not selects, which XLA:CPU's reduction of int8 blocks
                # would not fuse (each would be a float32 copy of the buffer).
                kept = [b * ~first for b in wide_bs]
                wide, wide_bs = wide / steps, tuple(b * first for b in wide_bs)
            values = buffers(c, wide, *wide_bs)
            values = values if num_buffers else (values,)
            if steps > 1:
                values = tuple(v + b for v, b in zip(values, kept, strict=True))
            if narrowed:  # the output comes after the rounding, unless it reads the old buffers
                return wide, values, early
            values = tuple(v.astype(b.dtype) for v, b in zip(values, bs, strict=True))
            return wide, values, early if output_reads_old else out(g, wide, *values)

        finish = out
        if any(map(_checks.is_traced, grads)):
            # Traced once per shape and dtype, not once per array: tracing each jax.numpy
            # operator of a thousand arrays costs more than compiling them
            # (benchmarks/compile_time.py). The compiled program is the same.
            step, finish = jax.jit(step), jax.jit(out)
        grads = [_checks.as_array(g) for g in grads]
        if int8:  # each new int8 buffer with its blocks' scales
            step = functools.partial(_int8.step_with_scales, step)
        results = [
            None if b[0] is None else step(g, p, *b)
            for g, p, *b in zip(grads, thetas, *leaves, strict=True)
        ]
        new = tuple(
            jax.tree.unflatten(treedef, [None if r is None else r[1][k] for r in results])
            for k in range(size)
        )
        outs = [None if r is None else r[2] for r in results]
        at = state[0]
        if steps > 1:  # each call draws its own bits: count * K + micro step
            at = at.astype(jnp.uint32) * steps + micro.astype(jnp.uint32)
        if int8:  # quantized; the output reads the values before quantization
            stored, read = _int8.store(new, trees, seed if rounding else None, at)
        else:
            if rounding:  # on trees, whose positions count optax.MaskedNode (see round_tree)
                new = _rounding.round_tree(new, trees, seed, _rounding.BUFFERS, at)
            stored, read = jax.tree.map(lambda n, b: n.astype(b.dtype), new, trees), new
        if narrowed and not output_reads_old:  # from the rounded values, in float32
            outs = [
                None if r is None else finish(g, r[0], *b)
                for g, r, *b in zip(grads, results, *map(leaves_of, read), strict=True)
            ]
        fields = () if extra is None else extra(c)
        count = _checks.safe_increment(state[0])
        if steps > 1:  # an update is complete on its last call only
            count = jnp.where(last, count, state[0])
            fields = tuple(jnp.where(last, f, o) for f, o in zip(fields, state[2:], strict=True))
        new_state = state_type(count, stored if num_buffers else stored[0], *fields)
        if steps > 1:
            new_state = AccumulationState(jnp.where(last, 0, micro + 1), new_state)
        return jax.tree.unflatten(treedef, outs), new_state

    return optax.GradientTransformationExtraArgs(_checks.named(init_fn), _checks.named(update_fn))


def scale_by_learning_rate(
    learning_rate: Any, steps: Any = None, name: str = "learning_rate"
) -> optax.GradientTransformation:
    """``optax.scale_by_learning_rate``, with an out-of-range array or schedule value made NaN
    and errors naming the factory that built it.

    Its count counts calls: with ``steps`` calls per update, a schedule sees ``count // steps``.
    """
    steps = int(steps or 1)
    if callable(learning_rate):
        inner = optax.scale_by_learning_rate(lambda n: hyper(name, learning_rate, n // steps))
    else:
        inner = optax.scale_by_learning_rate(hyper(name, learning_rate, None))
    return optax.GradientTransformation(inner.init, _checks.named(inner.update))
