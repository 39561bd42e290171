"""Trees of buffers: creation, checks against the state, the update counter.

Shapes and dtypes are static, so every check here costs only tracing time.
Leaves whose param is an integer or boolean array (Equinox keeps them in
``eqx.filter(model, eqx.is_array)``) get no buffer: ``None`` in the state,
as optax does, and their gradient must be ``None`` too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from momentum_jax._src._layout import Layout, PackedState
from momentum_jax._src._validation import INT32_MAX, is_traced

if TYPE_CHECKING:
    from momentum_jax._src._rounding import Rounding

State = TypeVar("State")


def safe_increment(count: jax.typing.ArrayLike) -> jax.Array:
    """``count + 1``, saturating at the int32 maximum instead of wrapping."""
    count = jnp.asarray(count)
    return jnp.where(count < INT32_MAX, count + 1, count).astype(jnp.int32)


def zero_count() -> jax.Array:
    """The update counter of a fresh state."""
    return jnp.zeros([], jnp.int32)


def _is_none(x: Any) -> bool:
    return x is None


def trains(leaf: Any) -> bool:
    """True for a floating (or complex) param leaf; integer and bool leaves do not train."""
    return bool(jnp.issubdtype(jnp.result_type(leaf), jnp.inexact))


def trainable_only(params: Any) -> Any:
    """``params`` with ``None`` where a leaf does not train."""
    return jax.tree.map(lambda p: p if trains(p) else None, params)


def check_accumulator_dtype(fn_name: str, params: Any, dtype: jnp.dtype | None) -> None:
    """Refuse a real ``accumulator_dtype`` for complex params (it would drop the imaginary part)."""
    if dtype is None or jnp.issubdtype(dtype, jnp.complexfloating):
        return
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.complexfloating):
            raise TypeError(
                f"{fn_name}: the param at {_keystr(path)} is complex "
                f"({jnp.result_type(leaf)}), but accumulator_dtype={dtype} is real: "
                "the buffer would drop the imaginary part. Pass a complex "
                "accumulator_dtype (e.g. jnp.complex64) or None."
            )


def zeros_for_trainable(params: Any, dtype: jnp.dtype | None) -> Any:
    """A zero buffer per trainable param, ``None`` for integer and bool leaves."""
    return jax.tree.map(lambda p: _zeros_sharded_like(p, dtype) if trains(p) else None, params)


def _zeros_sharded_like(param: Any, dtype: jnp.dtype | None) -> jax.Array:
    """``jnp.zeros_like(param, dtype)`` placed like ``param``, also when traced.

    Eagerly, ``zeros_like`` already copies a committed param's sharding, and
    on a mesh with explicit axes the traced param carries its sharding in its
    type, which ``zeros_like`` copies too. On a mesh with auto axes a tracer
    carries no sharding, and a constant depends on no input, so the
    partitioner would replicate the buffer or put all of it on one device:
    out of memory for a model that only fits sharded.

    The zeros are therefore computed *from* the param, elementwise, so that
    sharding propagation lays them out like it. ``param * 0`` is the one such
    expression that XLA does not fold away before propagation (it is not
    zero for inf or NaN, so it may not be folded); selecting 0 where it is
    NaN and taking the absolute value then gives exactly ``+0`` everywhere.
    This runs once, in ``init``: elementwise work on each param, and no
    communication. It uses only core ``jax.numpy``, so it works on every JAX
    version (``jax.experimental.shard_alike``, the earlier tool for this,
    was removed in JAX 0.11). Zero-size leaves hold no bytes and may come
    out replicated.
    """
    target = jnp.result_type(param) if dtype is None else dtype
    if not is_traced(param):
        zeros = jnp.zeros_like(param, dtype=target)
    else:
        product = param * jnp.zeros((), jnp.result_type(param))
        zeros = jnp.abs(jnp.where(jnp.isnan(product), jnp.zeros_like(product), product))
        zeros = zeros.astype(target)
    # A weakly typed param (a Python scalar) would give a weakly typed buffer
    # that the first update turns strong: one retrace and a changed carry type.
    return jax.lax.convert_element_type(zeros, zeros.dtype)


def _keystr(path: Any) -> str:
    return jax.tree_util.keystr(path) or "<root>"


def _leaf_path(tree: Any, index: int) -> str:
    paths, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)
    return _keystr(paths[index][0])


def _is_array_like(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic | int | float | complex)


def check_tree(
    fn_name: str,
    tree: Any,
    reference: Any,
    *,
    what: str = "gradient",
    against: str = "the optimizer state holds",
) -> None:
    """Raise a readable error when ``tree`` (gradients or params) does not fit ``reference``.

    ``reference`` is the state's buffer tree, or the updates: ``None`` where a
    param does not train. Checks the structure, each leaf's shape, that
    gradients are floating-point, that no complex gradient meets a real
    buffer, and that no gradient arrives where a param does not train.
    """
    ref_leaves, ref_def = jax.tree.flatten(reference, is_leaf=_is_none)
    try:
        leaves = ref_def.flatten_up_to(tree)  # type: ignore[attr-defined]
    except (ValueError, TypeError):
        leaves = None
    if leaves is None or any(
        (x is None) != (r is None) and (what == "gradient" or r is not None)
        for x, r in zip(leaves, ref_leaves, strict=True)
    ):
        _explain_mismatch(fn_name, tree, reference, ref_def, leaves, what)
    # Without these per-leaf checks a leaf that broadcasts against its buffer
    # would silently reshape the state (breaking a lax.scan carry several
    # steps later), and an integer gradient would come back as truncated
    # integer updates. Paths are looked up only for the error message.
    for index, (x, ref) in enumerate(zip(leaves, ref_leaves, strict=True)):
        if ref is None:
            continue
        if not _is_array_like(x):
            _explain_mismatch(fn_name, tree, reference, ref_def, None, what)
        dtype = jnp.result_type(x)
        if what == "gradient" and not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"{fn_name}: the gradient at {_leaf_path(reference, index)} has dtype "
                f"{dtype}; gradients must be floating-point (or complex)."
            )
        if what == "gradient" and jnp.issubdtype(dtype, jnp.complexfloating):
            ref_dtype = jnp.result_type(ref)
            if not jnp.issubdtype(ref_dtype, jnp.complexfloating):
                raise TypeError(
                    f"{fn_name}: the gradient at {_leaf_path(reference, index)} is complex "
                    f"({dtype}) but the optimizer state holds {ref_dtype} there, which "
                    "would drop the imaginary part. Init with complex params, or pass a "
                    "complex accumulator_dtype."
                )
        if jnp.shape(x) != jnp.shape(ref):
            raise ValueError(
                f"{fn_name}: the {what} at {_leaf_path(reference, index)} has shape "
                f"{jnp.shape(x)}, but {against} shape {jnp.shape(ref)} there. Call init "
                f"with params shaped like the {what}s, and pass those params to update."
            )


def _explain_mismatch(
    fn_name: str, tree: Any, reference: Any, ref_def: Any, leaves: list[Any] | None, what: str
) -> NoReturn:
    if leaves is not None:
        paths, _ = jax.tree_util.tree_flatten_with_path(reference, is_leaf=_is_none)
        for (path, ref), x in zip(paths, leaves, strict=True):
            if ref is None and x is not None:
                raise TypeError(
                    f"{fn_name}: a gradient arrived for the param at {_keystr(path)}, "
                    "which has an integer or boolean dtype and so has no buffer. Make "
                    "that param floating-point (e.g. x.astype(jnp.float32)) to train "
                    "it, or give it a None gradient (eqx.filter_grad does)."
                )
    tree_def: Any = jax.tree.structure(tree, is_leaf=_is_none)
    name = "gradient tree" if what == "gradient" else f"{what} tree"
    raise ValueError(
        f"{fn_name}: the {name} does not match the optimizer state. "
        f"{what.capitalize()}s have structure {tree_def}, but the state was built for "
        f"params with structure {ref_def}. Call init with params shaped like the "
        f"{what}s."
    )


def check_state(fn_name: str, state: Any, expected: type[State], updates: Any) -> State:
    """Return ``state`` when it is an ``expected``, else explain what was passed."""
    if isinstance(state, expected):
        return state
    swapped = ""
    if isinstance(updates, expected):
        swapped = (
            " The gradients argument holds that state: the arguments look swapped; "
            "call update(updates, state, params)."
        )
    raise TypeError(
        f"{fn_name}: update() expected the state returned by this transform's init, a "
        f"{expected.__name__}, but got {type(state).__name__}.{swapped} A state made by "
        "another optimizer (or another version) cannot be reused; call init, or see "
        "momentum_jax.restore_state for 0.1.0 checkpoints."
    )


def _as_array(x: Any) -> Any:
    return x if x is None or isinstance(x, jax.Array) else jnp.asarray(x)


def as_arrays(tree: Any) -> Any:
    """``tree`` with Python numbers and NumPy values made JAX arrays (in JAX's dtypes: float32
    for float64 unless x64 is on)."""
    return jax.tree.map(_as_array, tree, is_leaf=_is_none)


def map_buffers(fn: Any, *trees: Any) -> Any:
    """``jax.tree.map`` over param-shaped trees, skipping leaves that do not train."""
    return jax.tree.map(
        lambda first, *rest: None if first is None else fn(first, *rest),
        *trees,
        is_leaf=_is_none,
    )


def _unchanged(tree: Any) -> Any:
    return tree


def buffer_block(
    fn_name: str,
    state_type: type[Any],
    step: Callable[[Any, Any, Any, Callable[[Any], Any]], tuple[Any, Any]],
    *,
    dtype: jnp.dtype | None,
    layout: str,
    num_buffers: int | None = None,
    rounding: Rounding | None = None,
) -> optax.GradientTransformationExtraArgs:
    """The skeleton every buffer-holding transform shares.

    The state is ``state_type(count, buffers)``: one zero buffer tree shaped
    like the params (in ``dtype``, or each param's own), or a tuple of
    ``num_buffers`` of them. ``update`` refuses a foreign state, checks the
    gradients (and the params, when given) against the first buffer tree,
    then ``step(updates, state, params, store)`` returns the output and the new
    buffers, and the count is incremented. ``step`` passes its new buffers
    through ``store`` before it computes the output from them.

    With ``layout="packed"`` the state is a :class:`PackedState` and ``step``
    sees every tree (gradients, params, buffers) as ``(rest, packs)``; the
    checks run before packing, on the trees the caller passed.

    With a ``rounding``, ``step`` sees the 16-bit buffers in float32,
    ``store`` rounds the new ones stochastically to values of their dtypes
    (still in float32, so the output is computed in float32 too), and they
    are then cast, exactly, into the state; without one, ``store`` returns
    the buffers unchanged.
    """

    def run(updates: Any, inner: Any, params: Any) -> tuple[Any, Any]:
        if rounding is None:
            return step(updates, inner, params, _unchanged)
        wide = state_type(inner.count, rounding.widen(inner[1]))
        out, buffers = step(
            updates, wide, params, lambda new: rounding.store(new, inner[1], inner.count)
        )
        return out, rounding.narrow(buffers, inner[1])

    def init_fn(params: optax.Params) -> Any:
        check_accumulator_dtype(fn_name, params, dtype)
        plan = Layout.of(fn_name, params) if layout == "packed" else None
        tree = params if plan is None else plan.pack(fn_name, params, "param")
        buffers = zeros_for_trainable(tree, dtype)
        if num_buffers is not None:
            buffers = (buffers, *(zeros_for_trainable(tree, dtype) for _ in range(num_buffers - 1)))
        state = state_type(zero_count(), buffers)
        return state if plan is None else PackedState(state, plan)

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, Any]:
        del extra_args
        plan = None
        if layout == "packed":
            packed = check_state(fn_name, state, PackedState, updates)
            plan, state = packed.layout, packed.inner
        inner: Any = check_state(fn_name, state, state_type, updates)
        reference = inner[1]
        if num_buffers is not None:
            if len(reference) != num_buffers:
                raise ValueError(
                    f"{fn_name}: the state holds {len(reference)} buffers but the "
                    f"transform was built with {num_buffers} momenta. Call init again."
                )
            reference = reference[0]
        if plan is not None:
            reference = plan.abstract(*reference)
        check_tree(fn_name, updates, reference)
        updates = as_arrays(updates)
        if params is not None:
            check_tree(fn_name, params, reference, what="param")
            params = as_arrays(params)
        if plan is None:
            out, buffers = run(updates, inner, params)
            return out, state_type(safe_increment(inner.count), buffers)
        packed_params = None if params is None else plan.pack(fn_name, params, "param")
        out, buffers = run(plan.pack(fn_name, updates, "gradient"), inner, packed_params)
        new_state = state_type(safe_increment(inner.count), buffers)
        return plan.unpack(*out), PackedState(new_state, plan)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
