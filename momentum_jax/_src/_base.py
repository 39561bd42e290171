"""Shared machinery: hyperparameter checks, schedule evaluation, tree checks.

Everything here runs either at build time on Python values (the checks) or
inside traced code without ever branching on a traced value (the helpers).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
import optax

# A hyperparameter: a Python number, a scalar array, or a schedule
# ``count -> value`` evaluated at the number of updates already done.
ScalarOrSchedule: TypeAlias = optax.ScalarOrSchedule

_INT32_MAX = np.iinfo(np.int32).max


class MomentumState(NamedTuple):
    """State of :func:`momentum_jax.momentum` and :func:`scale_by_momentum`.

    Attributes:
      count: number of updates done so far. ``shape=(), dtype=int32``; it
        saturates at ``2**31 - 1`` instead of overflowing.
      velocity: the momentum buffer, a pytree shaped like the params. Its
        dtype is the ``accumulator_dtype`` given to the transform, or each
        param's own dtype when that is ``None``; it never changes between
        steps.
    """

    count: jax.Array  # type: ignore[assignment]  # shape=(), dtype=int32
    velocity: Any  # pytree shaped like params


def safe_increment(count: jax.typing.ArrayLike) -> jax.Array:
    """``count + 1``, saturating at the int32 maximum instead of wrapping."""
    count = jnp.asarray(count)
    return jnp.where(count < _INT32_MAX, count + 1, count).astype(jnp.int32)


def is_traced(value: Any) -> bool:
    """True when ``value`` is abstract (inside jit, vmap, grad, ...)."""
    return isinstance(value, jax.core.Tracer)


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def concrete_scalar(fn_name: str, arg: str, value: Any) -> float | None:
    """Return ``value`` as a float when it is a concrete number, else None.

    Schedules (callables) and traced arrays yield ``None``: they cannot be
    checked in Python. Anything else that is not a real scalar raises.
    """
    if callable(value) or is_traced(value):
        return None
    if isinstance(value, bool | np.bool_):
        raise TypeError(
            f"{fn_name}: {arg} must be a number, a scalar array or a schedule "
            f"(a callable count -> value), got the boolean {arg}={value!r}."
        )
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, jax.Array | np.ndarray | np.generic):
        array = np.asarray(value)
        if array.dtype.kind not in "iuf":
            raise TypeError(
                f"{fn_name}: {arg} must be a real number, got an array of dtype "
                f"{array.dtype} ({arg}={value!r})."
            )
        if array.shape != ():
            raise ValueError(
                f"{fn_name}: {arg} must be a scalar, got an array of shape "
                f"{array.shape}. Pass a scalar, or a schedule for values that "
                "change over steps."
            )
        return float(array)
    raise TypeError(
        f"{fn_name}: {arg} must be a number, a scalar array or a schedule "
        f"(a callable count -> value), got {_describe(value)}."
    )


def check_range(
    fn_name: str,
    arg: str,
    value: Any,
    *,
    low: float,
    high: float = math.inf,
    high_inclusive: bool = False,
    hint: str = "",
) -> float | None:
    """Check a concrete hyperparameter lies in ``[low, high)`` (or ``[low, high]``).

    Returns the value as a float, or ``None`` for schedules and traced values.
    """
    number = concrete_scalar(fn_name, arg, value)
    if number is None:
        return None
    above = number > high if high_inclusive else number >= high
    if math.isnan(number) or number < low or above:
        close = "]" if high_inclusive or high == math.inf else ")"
        upper = "inf" if high == math.inf else f"{high:g}"
        message = f"{fn_name}: {arg} must be in [{low:g}, {upper}{close}, got {arg}={value!r}."
        raise ValueError(f"{message} {hint}".rstrip())
    return number


def check_momentum(fn_name: str, value: Any, arg: str = "momentum") -> float | None:
    return check_range(
        fn_name,
        arg,
        value,
        low=0.0,
        high=1.0,
        hint="Values of 1 or more make the velocity grow without bound.",
    )


def check_learning_rate(fn_name: str, value: Any, arg: str = "learning_rate") -> float | None:
    return check_range(
        fn_name,
        arg,
        value,
        low=0.0,
        hint="A negative learning rate ascends the loss; to maximise, negate the gradient.",
    )


def check_weight_decay(fn_name: str, value: Any, arg: str = "weight_decay") -> float | None:
    return check_range(fn_name, arg, value, low=0.0)


def check_dampening(fn_name: str, value: Any, arg: str = "dampening") -> float | None:
    return check_range(fn_name, arg, value, low=0.0, high=1.0)


def check_bool(fn_name: str, arg: str, value: Any) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(
            f"{fn_name}: {arg} must be True or False (it selects the update "
            f"equation when the transform is built), got {_describe(value)}."
        )
    return bool(value)


def check_dtype(fn_name: str, arg: str, value: Any) -> jnp.dtype | None:
    if value is None:
        return None
    try:
        dtype = jnp.dtype(value)
    except TypeError as error:
        raise TypeError(
            f"{fn_name}: {arg} must be None or a floating-point dtype, got {value!r}."
        ) from error
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(
            f"{fn_name}: {arg} must be None or a floating-point (or complex) dtype, "
            f"got {arg}={dtype}."
        )
    return dtype


def evaluate(fn_name: str, arg: str, value: ScalarOrSchedule, count: jax.typing.ArrayLike) -> Any:
    """Value of a hyperparameter for the update at ``count`` (0 for the first)."""
    result = value(count) if callable(value) else value
    if jnp.ndim(result) != 0:
        raise ValueError(
            f"{fn_name}: {arg} must evaluate to a scalar, but the schedule returned "
            f"an array of shape {jnp.shape(result)} at count={count}."
        )
    return result


def check_params_dtypes(fn_name: str, params: Any) -> None:
    """Refuse integer or boolean params: momentum cannot move them."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or jnp.issubdtype(dtype, jnp.inexact):
            continue
        raise TypeError(
            f"{fn_name}: params must be floating-point, but the leaf at "
            f"{jax.tree_util.keystr(path) or '<root>'} has dtype {dtype}. "
            "Exclude such leaves with optax.masked or optax.set_to_zero."
        )


def check_same_structure(fn_name: str, updates: Any, state_tree: Any) -> None:
    """Raise a readable error when the gradients do not match the state (or params).

    Checks the tree structure, then each leaf's shape, and that every gradient
    is floating-point.
    """
    updates_def: Any = jax.tree.structure(updates)
    state_def = jax.tree.structure(state_tree)
    if updates_def != state_def:
        raise ValueError(
            f"{fn_name}: the gradient tree does not match the optimizer state. "
            f"Gradients have structure {updates_def}, but the state was built for "
            f"params with structure {state_def}. Call init with params shaped like "
            "the gradients."
        )
    # Shapes and dtypes are static, so these checks cost nothing at run time.
    # Without them a gradient that broadcasts against its buffer would silently
    # reshape the state (breaking a lax.scan carry several steps later), and an
    # integer gradient would come back as truncated integer updates.
    # Paths are looked up only for the error message: tracing a model with
    # thousands of arrays pays for the cheap comparisons alone.
    for index, (g, buffer) in enumerate(
        zip(jax.tree.leaves(updates), jax.tree.leaves(state_tree), strict=True)
    ):
        if not jnp.issubdtype(jnp.result_type(g), jnp.inexact):
            raise TypeError(
                f"{fn_name}: the gradient at {_leaf_path(updates, index)} has dtype "
                f"{jnp.result_type(g)}; gradients must be floating-point (or complex)."
            )
        if jnp.shape(g) != jnp.shape(buffer):
            raise ValueError(
                f"{fn_name}: the gradient at {_leaf_path(updates, index)} has shape "
                f"{jnp.shape(g)}, but the optimizer state holds shape {jnp.shape(buffer)} "
                "there. Call init with params shaped like the gradients."
            )


def _leaf_path(tree: Any, index: int) -> str:
    path, _ = jax.tree_util.tree_leaves_with_path(tree)[index]
    return jax.tree_util.keystr(path) or "<root>"


def zero_count() -> jax.Array:
    """The update counter of a fresh state."""
    return jnp.zeros([], jnp.int32)


def init_buffer(fn_name: str, params: Any, dtype: jnp.dtype | None) -> Any:
    """Refuse non-float params, then return a zero buffer per param."""
    check_params_dtypes(fn_name, params)
    return zeros_like_tree(params, dtype)


def zeros_like_tree(params: Any, dtype: jnp.dtype | None) -> Any:
    """A zero buffer per param, in ``dtype`` or in the param's own dtype.

    Each buffer gets its param's sharding, under ``jax.jit`` too (see
    :func:`_zeros_sharded_like`).
    """
    return jax.tree.map(lambda p: _zeros_sharded_like(p, dtype), params)


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
