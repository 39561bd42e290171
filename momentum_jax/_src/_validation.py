"""Build-time argument checks and their messages, shared by every transform.

Each check runs on Python values when a transform is built, or on static
facts (shapes, dtypes) while it is traced; none branches on a traced value.
A message names the function, the argument, the value, the valid range and,
where there is one, the fix.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence, Set
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
import optax

# A hyperparameter: a Python number, a scalar array, or a schedule
# ``count -> value`` evaluated at the number of updates already done.
ScalarOrSchedule: TypeAlias = optax.ScalarOrSchedule

INT32_MAX = int(np.iinfo(np.int32).max)

_MOMENTUM_HINT = "Values of 1 or more make the velocity grow without bound."


def is_traced(value: Any) -> bool:
    """True when ``value`` is abstract (inside jit, vmap, grad, ...)."""
    return isinstance(value, jax.core.Tracer)


def describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _is_real_dtype(dtype: Any) -> bool:
    # jnp.issubdtype knows bfloat16 and float8 (numpy kind 'V') are floats.
    return bool(jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating))


def _arithmetic_dtype(value: Any) -> np.dtype[Any]:
    """The dtype the update arithmetic will see ``value`` in.

    Python numbers are weakly typed and end up in the default float dtype
    (float32 unless ``jax_enable_x64``); a floating array keeps its own, as
    JAX sees it (a NumPy float64 is float32 unless ``jax_enable_x64``).
    """
    dtype = getattr(value, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jnp.floating):
        return np.dtype(jax.dtypes.canonicalize_dtype(dtype))
    return np.dtype(jnp.result_type(float))


def concrete_scalar(
    fn_name: str, arg: str, value: Any, *, schedule_ok: bool = True
) -> float | None:
    """Return ``value`` as a float when it is a concrete number, else None.

    Schedules (callables, when ``schedule_ok``) and traced arrays yield
    ``None``: they cannot be checked in Python. Anything else that is not a
    real scalar raises.
    """
    kinds = "a number, a scalar array or a schedule (a callable count -> value)"
    if not schedule_ok:
        kinds = "a number or a scalar array"
        if callable(value):
            raise TypeError(
                f"{fn_name}: {arg} must be {kinds}, got the callable {arg}={value!r}. "
                f"{arg} does not accept a schedule; pass a number."
            )
    if callable(value) or is_traced(value):
        return None
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"{fn_name}: {arg} must be {kinds}, got the boolean {arg}={value!r}.")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, jax.Array | np.ndarray | np.generic):
        dtype = np.asarray(value).dtype
        if not _is_real_dtype(dtype):
            raise TypeError(
                f"{fn_name}: {arg} must be a real number, got an array of dtype "
                f"{dtype} ({arg}={value!r})."
            )
        if np.shape(value) != ():
            raise ValueError(
                f"{fn_name}: {arg} must be a scalar, got an array of shape "
                f"{np.shape(value)}. Pass a scalar, or a schedule for values that "
                "change over steps."
            )
        return float(np.asarray(value, np.float64))
    raise TypeError(f"{fn_name}: {arg} must be {kinds}, got {describe(value)}.")


def check_range(
    fn_name: str,
    arg: str,
    value: Any,
    *,
    low: float,
    high: float = math.inf,
    high_inclusive: bool = False,
    hint_high: str = "",
    hint_low: str = "",
    schedule_ok: bool = True,
) -> float | None:
    """Check a concrete hyperparameter lies in ``[low, high)`` (or ``[low, high]``).

    The value is checked as the arithmetic will see it (rounded to float32
    unless x64 is enabled), so a momentum of 0.9999999999, which is 1.0 in
    float32, or a learning rate that overflows to inf, is refused. Returns the
    value as a float, or ``None`` for schedules and traced values.
    """
    number = concrete_scalar(fn_name, arg, value, schedule_ok=schedule_ok)
    if number is None:
        return None
    dtype = _arithmetic_dtype(value)
    with np.errstate(over="ignore"):
        rounded = float(np.asarray(number, np.float64).astype(dtype))

    def outside(x: float) -> bool:
        too_high = x > high if high_inclusive else x >= high
        return math.isnan(x) or x < low or too_high

    if outside(rounded):
        close = "]" if high_inclusive else ")"
        upper = "inf" if high == math.inf else f"{high:g}"
        shown = f"{arg}={value!r}"
        if not outside(number):
            shown += f", which is {rounded!r} in {dtype.name}, the dtype the update arithmetic uses"
        too_high = not rounded < low and not math.isnan(rounded)
        message = f"{fn_name}: {arg} must be in [{low:g}, {upper}{close}, got {shown}."
        hint = hint_low if rounded < low else hint_high if too_high else ""
        raise ValueError(f"{message} {hint}".rstrip())
    return number


# The valid range of each kind of hyperparameter, with the hints its errors give.
_RANGES: dict[str, dict[str, Any]] = {
    "momentum": {"low": 0.0, "high": 1.0, "hint_high": _MOMENTUM_HINT},
    "learning_rate": {
        "low": 0.0,
        "hint_low": "A negative learning rate ascends the loss; to maximise, negate the gradient.",
    },
    "weight_decay": {"low": 0.0, "schedule_ok": False},
    "dampening": {"low": 0.0, "high": 1.0, "schedule_ok": False},
    "nu": {
        "low": 0.0,
        "high": 1.0,
        "high_inclusive": True,
        "hint_high": "nu=0 is plain SGD and nu=1 steps along the averaged buffer alone.",
    },
}


def check_momentum(
    fn_name: str, value: Any, arg: str = "momentum", *, schedule_ok: bool = True
) -> float | None:
    return check_range(fn_name, arg, value, **{**_RANGES["momentum"], "schedule_ok": schedule_ok})


def check_learning_rate(fn_name: str, value: Any, arg: str = "learning_rate") -> float | None:
    return check_range(fn_name, arg, value, **_RANGES["learning_rate"])


def check_weight_decay(fn_name: str, value: Any, arg: str = "weight_decay") -> float | None:
    return check_range(fn_name, arg, value, **_RANGES["weight_decay"])


def check_dampening(fn_name: str, value: Any, arg: str = "dampening") -> float | None:
    return check_range(fn_name, arg, value, **_RANGES["dampening"])


def check_nu(fn_name: str, value: Any, arg: str = "nu") -> float | None:
    return check_range(fn_name, arg, value, **_RANGES["nu"])


def check_nesterov_dampening(fn_name: str, nesterov: bool, tau: float | None, value: Any) -> None:
    if nesterov and tau is not None and tau != 0.0:
        raise ValueError(
            f"{fn_name}: nesterov=True requires dampening=0, got dampening={value!r}. "
            "The Nesterov correction g + mu*b assumes an undamped buffer."
        )


def check_bool(fn_name: str, arg: str, value: Any) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(
            f"{fn_name}: {arg} must be True or False (it selects the update "
            f"equation when the transform is built), got {describe(value)}."
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


def check_positive_int(fn_name: str, arg: str, value: Any) -> int:
    """A step count: an exact integer in ``[1, 2**31 - 1]`` (counts are int32)."""
    # A float such as 2.5 would silently move every stage boundary.
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"{fn_name}: {arg} must be a positive integer, got the boolean {value!r}.")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{fn_name}: {arg} must be a positive integer, got {describe(value)}."
        ) from None
    if number < 1:
        raise ValueError(
            f"{fn_name}: {arg} must be a positive integer (>= 1), got {arg}={value!r}."
        )
    if number > INT32_MAX:
        raise ValueError(
            f"{fn_name}: {arg} must be a positive integer no larger than {INT32_MAX} "
            f"(update counts are int32 and saturate there), got {arg}={value!r}."
        )
    return number


def check_momenta(fn_name: str, momenta: Any) -> int:
    """Validate AggMo's ``momenta`` at build time and return how many there are."""
    example = "a tuple of numbers such as momenta=(0.0, 0.9, 0.99)"
    if is_traced(momenta) or isinstance(momenta, jax.Array | np.ndarray):
        # A 1-D array, for instance one that optax.inject_hyperparams traces.
        if np.ndim(momenta) != 1:
            raise ValueError(
                f"{fn_name}: momenta must be one-dimensional (one momentum per "
                f"buffer), got an array of shape {np.shape(momenta)}."
            )
        if not _is_real_dtype(momenta.dtype):
            raise TypeError(
                f"{fn_name}: momenta must hold real numbers, got an array of dtype {momenta.dtype}."
            )
        count = int(np.shape(momenta)[0])
        elements: Sequence[Any] = (
            [] if is_traced(momenta) else [float(beta) for beta in np.asarray(momenta)]
        )
    elif (
        callable(momenta)
        or isinstance(momenta, str | bytes | Mapping | Set)
        or not isinstance(momenta, Sequence)
    ):
        hint = ""
        if isinstance(momenta, int | float) and not isinstance(momenta, bool):
            hint = f" For a single buffer, write momenta=({momenta!r},)."
        raise TypeError(f"{fn_name}: momenta must be {example}, got {describe(momenta)}.{hint}")
    else:
        count = len(momenta)
        elements = momenta
    if count == 0:
        raise ValueError(
            f"{fn_name}: momenta must hold at least one momentum, got momenta={momenta!r}. "
            f"Pass {example}."
        )
    for index, beta in enumerate(elements):
        arg = f"momenta[{index}]"
        numeric = isinstance(beta, int | float | jax.Array | np.ndarray | np.generic)
        if isinstance(beta, bool | np.bool_) or not numeric:
            # Schedules are refused too: AggMo keeps each buffer's momentum fixed.
            raise TypeError(
                f"{fn_name}: {arg} must be a number in [0, 1), got "
                f"{arg}={beta!r} (a {type(beta).__name__})."
            )
        check_momentum(fn_name, beta, arg=arg)
    return count


def evaluate(fn_name: str, arg: str, value: ScalarOrSchedule, count: jax.typing.ArrayLike) -> Any:
    """Value of a hyperparameter for the update at ``count`` (0 for the first).

    What a schedule returns is checked on its static type, shape and dtype.
    """
    result = value(count) if callable(value) else value
    if not callable(value):
        return result
    where = f"the {arg} schedule {value!r} returned"
    if isinstance(result, bool | np.bool_) or not isinstance(
        result, int | float | jax.Array | np.ndarray | np.generic
    ):
        raise TypeError(
            f"{fn_name}: {where} {describe(result)}; a schedule must return a real "
            "scalar (a number or a 0-d float array)."
        )
    if not _is_real_dtype(jnp.result_type(result)):
        raise TypeError(
            f"{fn_name}: {where} a value of dtype {jnp.result_type(result)}; a schedule "
            "must return a real scalar (a number or a 0-d float array)."
        )
    if jnp.ndim(result) != 0:
        raise ValueError(
            f"{fn_name}: {arg} must evaluate to a scalar, but the schedule returned "
            f"an array of shape {jnp.shape(result)} at count={count}."
        )
    return result


def needs_params_error(fn_name: str, arg: str, value: Any) -> ValueError:
    """The error for a transform that uses the params but got ``params=None``."""
    return ValueError(
        f"{fn_name}: {arg}={value!r} needs the params, but update() was called with "
        "params=None. Pass params to update(); under optax.inject_hyperparams with no "
        f"{arg}, use static_args=('{arg}',) to keep it a Python zero."
    )


def is_python_zero(value: Any) -> bool:
    """True only for a Python ``0`` or ``0.0``.

    Transforms may drop a stage for it. Arrays are never dropped, even zero
    ones: ``optax.inject_hyperparams`` passes arrays that are concrete at
    ``init`` and traced under ``jit``, and both must build the same chain.
    """
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 0


def checked_schedule(fn_name: str, arg: str, value: ScalarOrSchedule) -> ScalarOrSchedule:
    """``value``, with a schedule wrapped so that what it returns is checked."""
    if not callable(value):
        return value
    return lambda count: evaluate(fn_name, arg, value, count)
