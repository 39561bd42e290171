"""The one skeleton that turns an update rule into an optax transform.

A rule is three pure functions: the coefficients of an update from the
state's count, the new buffer(s) of one array, and the output of one array.
:func:`buffer_transform` adds what every transform shares: zero buffers
placed like the params, the checks of ``update``, arithmetic in the wider of
the gradient's and the buffers' dtypes, stochastic rounding of 16-bit buffers
(one explicit step, when asked), casts back to the stored dtypes, the
saturating count and, when asked, gradient accumulation (:class:`AccumulationState`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from momentum_jax._src import _rounding, _tree
from momentum_jax._src._validation import caller, is_python_zero, is_traced, named, needs_params


class AccumulationState(NamedTuple):
    r"""State of a transform built with ``gradient_accumulation_steps=K``, ``K >= 2``.

    The buffers are linear in the gradient, :math:`b' = A b + B g`, so the mean
    of ``K`` gradients is added into them one at a time: on the first call of
    an update :math:`b \leftarrow A b + B g/K`, on the others
    :math:`b \leftarrow b + B g/K`. No param-sized accumulator is kept.

    Attributes:
      micro_step: how many gradients of the current update were added so far,
        in ``[0, K)``. ``shape=(), dtype=int32``.
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
        raise ValueError(
            f"{caller()}: the Nesterov step needs the mean gradient, which "
            f"gradient_accumulation_steps={k} does not keep; use optax.MultiSteps(transform, "
            f"every_k_schedule={k}) around the transform built without it."
        )
    if k > 1 and layout == "packed":
        raise ValueError(
            f"{caller()}: gradient_accumulation_steps={k} needs layout='per_leaf', got "
            "layout='packed'."
        )
    return k


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.ndarray | np.generic | jax.Array)


def hyper(value: Any, count: Any, high: float = math.inf, closed: bool = False) -> Any:
    """A hyperparameter's value for the update at ``count``: itself, or its schedule's value.

    A value not checked when the transform was built (an array, a schedule's
    output) that lies outside ``[0, high)`` (``[0, high]`` if closed) becomes NaN (a scalar select),
    so that the update is non-finite and ``optax.apply_if_finite`` sees it.
    """
    value = value(count) if callable(value) else value
    if type(value) in (int, float):
        return value
    if not _is_number(value):
        raise TypeError(f"{caller()}: a hyperparameter must be a real scalar, got {value!r}.")
    dtype = jnp.result_type(value)
    real = jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
    if isinstance(value, bool) or jnp.ndim(value) != 0 or not real:
        raise TypeError(f"{caller()}: a hyperparameter must be a real scalar, got {value!r}.")
    if not jnp.issubdtype(dtype, jnp.floating):
        return value
    inside = (value >= 0) & ((value <= high) if closed else (value < high))
    return jnp.where(inside, value, jnp.nan)


def buffer_transform(
    state_type: Any,
    coefficients: Callable[[Any], Any],
    buffers: Callable[..., Any],
    output: Callable[..., Any],
    accumulator_dtype: Any,
    stochastic_rounding: bool,
    seed: Any,
    accumulation_steps: int = 1,
    *,
    num_buffers: int | None = None,
    weight_decay: Any = 0.0,
    extra: Callable[[Any], tuple[Any, ...]] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """An optax transform from an update rule.

    The state is ``state_type(count, buffers, *fields)``: one params-shaped
    buffer tree (a tuple of ``num_buffers`` of them when that is given).
    ``coefficients(state)`` gives the update's hyperparameters; for each array,
    ``buffers(c, g, *b)`` the new buffer (a tuple when ``num_buffers``) and
    ``output(c, g, *new_b)`` its output. ``g`` arrives as ``g + weight_decay *
    theta`` (unless that is a Python 0), in the widest dtype of the gradient and
    the buffers. ``extra(c)``, if given, gives the state's fields after the
    buffers, and ``extra(None)`` their initial values.
    """
    dtype = None if accumulator_dtype is None else jnp.dtype(accumulator_dtype)
    decay = not is_python_zero(weight_decay)
    rounding = stochastic_rounding
    steps = accumulation_steps

    def init_fn(params: Any) -> Any:
        zeros = [
            jax.tree.map(lambda p: _tree.zeros(p, dtype), params) for _ in range(num_buffers or 1)
        ]
        if rounding and not any(_rounding.narrow(b.dtype) for b in jax.tree.leaves(zeros)):
            _rounding.warn_no_effect(
                "stochastic_rounding=True", "no buffer", "Pass accumulator_dtype=jnp.bfloat16"
            )
        fields = () if extra is None else extra(None)
        trees = zeros[0] if num_buffers is None else tuple(zeros)
        state = state_type(jnp.zeros([], jnp.int32), trees, *fields)
        return state if steps == 1 else AccumulationState(jnp.zeros([], jnp.int32), state)

    def update_fn(updates: Any, state: Any, params: Any = None, **extra_args: Any) -> Any:
        if steps > 1:
            _tree.check_state(state, AccumulationState, updates)
            micro, state = state.micro_step, state.inner
            first, last = micro == 0, micro == steps - 1
        _tree.check_state(state, state_type, updates)
        trees = (state[1],) if num_buffers is None else tuple(state[1])
        if len(trees) != (num_buffers or 1):
            raise ValueError(
                f"{caller()}: the state holds {len(trees)} buffers, expected {num_buffers}."
            )
        reference = trees[0]
        grads = _tree.check_tree(updates, reference)
        if decay:
            if params is None:
                raise needs_params()
            thetas = _tree.check_tree(params, reference, "param")
            wd = hyper(weight_decay, None)
        c = coefficients(state)
        leaves = [jax.tree.leaves(t, is_leaf=_tree.is_none) for t in trees]
        treedef = jax.tree.structure(reference, is_leaf=_tree.is_none)

        def step(g: Any, p: Any, *bs: Any) -> Any:
            if decay:
                g = (g + wd * p).astype(g.dtype)
            wide_bs = [
                b.astype(jnp.float32) if rounding and _rounding.narrow(b.dtype) else b for b in bs
            ]
            wide = g.astype(jnp.result_type(g.dtype, *(b.dtype for b in wide_bs)))
            if steps > 1:  # b' = A b + B g/K on an update's first call, b + B g/K on the others
                kept = [jnp.where(first, 0, b) for b in wide_bs]
                wide, wide_bs = wide / steps, [jnp.where(first, b, 0) for b in wide_bs]
            values = buffers(c, wide, *wide_bs)
            values = values if num_buffers else (values,)
            if steps > 1:
                values = tuple(v + b for v, b in zip(values, kept, strict=True))
            if rounding:  # the output comes after the rounding
                return wide, values, None
            values = tuple(v.astype(b.dtype) for v, b in zip(values, bs, strict=True))
            return wide, values, emit(output(c, wide, *values).astype(g.dtype))

        def finish(g: Any, wide: Any, *values: Any) -> Any:
            return emit(output(c, wide, *values).astype(g.dtype))

        def emit(out: Any) -> Any:  # zero before the last call of an update
            return out if steps == 1 else jnp.where(last, out, 0)

        if any(map(is_traced, grads)):
            # Traced once per shape and dtype, not once per array: tracing each jax.numpy
            # operator of a thousand arrays costs more than compiling them
            # (benchmarks/compile_time.py). The compiled program is the same.
            step, finish = jax.jit(step), jax.jit(finish)
        results = [
            None
            if leaves[0][i] is None
            else step(_tree.as_array(g), thetas[i] if decay else None, *(b[i] for b in leaves))
            for i, g in enumerate(grads)
        ]
        new_trees = tuple(
            jax.tree.unflatten(treedef, [None if r is None else r[1][k] for r in results])
            for k in range(len(trees))
        )
        outs = [None if r is None else r[2] for r in results]
        if rounding:
            at = state[0]
            if steps > 1:  # each call draws its own bits: count * K + micro step
                at = at.astype(jnp.uint32) * steps + micro.astype(jnp.uint32)
            new_trees = _rounding.round_tree(new_trees, trees, seed, _rounding.BUFFERS, at)
            new = [jax.tree.leaves(t, is_leaf=_tree.is_none) for t in new_trees]
            outs = [
                None if r is None else finish(_tree.as_array(g), r[0], *(n[i] for n in new))
                for i, (g, r) in enumerate(zip(grads, results, strict=True))
            ]
        stored = jax.tree.map(lambda n, b: n.astype(b.dtype), new_trees, trees)
        new_trees = stored[0] if num_buffers is None else stored
        fields = () if extra is None else extra(c)
        count = _tree.safe_increment(state[0])
        if steps > 1:  # an update is complete on its last call only
            count = jnp.where(last, count, state[0])
            fields = tuple(jnp.where(last, f, o) for f, o in zip(fields, state[2:], strict=True))
        new_state = state_type(count, new_trees, *fields)
        if steps > 1:
            new_state = AccumulationState(jnp.where(last, 0, micro + 1), new_state)
        return jax.tree.unflatten(treedef, outs), new_state

    return optax.GradientTransformationExtraArgs(named(init_fn), named(update_fn))


def scale_by_learning_rate(learning_rate: Any, steps: Any = None) -> optax.GradientTransformation:
    """``optax.scale_by_learning_rate``, with an out-of-range array or schedule value made NaN.

    Its count counts calls: with ``steps`` calls per update, a schedule sees ``count // steps``.
    """
    steps = int(steps or 1)
    if callable(learning_rate):
        return optax.scale_by_learning_rate(lambda count: hyper(learning_rate, count // steps))
    return optax.scale_by_learning_rate(hyper(learning_rate, None))
