"""Build-time checks: one table of arguments and their valid values.

Every public factory is wrapped by :func:`public`, which binds its arguments,
checks each one named in :data:`CHECKS` (concrete values only: schedules and
traced arrays pass), and records the factory's name for the errors raised
later by the transform it builds (:func:`caller`). A factory called from
inside another one (a preset building its blocks) is not checked again.
"""

from __future__ import annotations

import contextvars
import difflib
import functools
import inspect
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

INT32_MAX = 2**31 - 1
LAYOUTS = ("per_leaf", "packed")
_CALLER: contextvars.ContextVar[str | None] = contextvars.ContextVar("caller", default=None)
F = TypeVar("F", bound=Callable[..., Any])


def caller() -> str:
    """The public function being built (for error messages)."""
    return _CALLER.get() or "momentum_jax"


def is_traced(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


def is_python_zero(value: Any) -> bool:
    """Only a Python ``0`` removes a stage: an array (inject_hyperparams) never does."""
    return type(value) in (int, float) and value == 0


def _fail(error: type[Exception], arg: str, message: str) -> None:
    raise error(f"{caller()}: {arg} {message}")


def _number(arg: str, value: Any, schedule: bool) -> float | None:
    """``value`` as a float, or None for a schedule or a traced array."""
    if callable(value) and schedule:
        return None
    if is_traced(value):
        return None
    if isinstance(value, bool | np.bool_) or not isinstance(
        value, int | float | np.ndarray | np.generic | jax.Array
    ):
        kind = "a number or a schedule" if schedule else "a number"
        _fail(TypeError, arg, f"must be {kind}, got {type(value).__name__} {value!r}.")
    dtype = np.result_type(value) if not isinstance(value, jax.Array) else value.dtype
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        _fail(TypeError, arg, f"must be a real number, got dtype {dtype}.")
    if np.ndim(value) != 0:
        _fail(ValueError, arg, f"must be a scalar, got shape {np.shape(value)}.")
    # Checked as the arithmetic sees it: a Python float in float32 unless x64 is on.
    seen = jnp.result_type(float) if isinstance(value, int | float) else dtype
    with np.errstate(over="ignore"):
        return float(np.asarray(value).astype(jax.dtypes.canonicalize_dtype(seen)))


def in_range(low: float, high: float, closed: bool = False, schedule: bool = True) -> Any:
    """A check that a hyperparameter lies in ``[low, high)`` (``[low, high]`` if closed)."""

    def check(arg: str, value: Any) -> None:
        number = _number(arg, value, schedule)
        if number is None or (low <= number and (number <= high if closed else number < high)):
            return
        shown = f"{arg}={value!r}"
        if (
            isinstance(value, np.ndarray | np.generic | jax.Array)
            and np.dtype(value.dtype).itemsize < 4
        ):
            shown += " (cast by inject_hyperparams? pass hyperparam_dtype=jnp.float32)"
        _fail(
            ValueError, arg, f"must be in [{low:g}, {high:g}{']' if closed else ')'}, got {shown}."
        )

    return check


def _flag(arg: str, value: Any) -> None:
    if not isinstance(value, bool | np.bool_):
        _fail(TypeError, arg, f"must be True or False, got {value!r}.")


def _dtype(arg: str, value: Any) -> None:
    try:
        ok = value is None or jnp.issubdtype(jnp.dtype(value), jnp.inexact)
    except TypeError:
        ok = False
    if not ok:
        _fail(TypeError, arg, f"must be None or a float dtype, got {value!r}.")


def _seed(arg: str, value: Any) -> None:
    if isinstance(value, np.ndarray | jax.Array):
        if value.shape != () or not jnp.issubdtype(value.dtype, jnp.integer):
            _fail(TypeError, arg, f"must be an integer scalar, got {value!r}.")
        if is_traced(value):
            return
    elif isinstance(value, bool) or not isinstance(value, int | np.integer):
        _fail(TypeError, arg, f"must be an integer in [0, {INT32_MAX}], got {value!r}.")
    if not 0 <= int(value) <= INT32_MAX:
        _fail(ValueError, arg, f"must be in [0, {INT32_MAX}], got {value!r}.")


def _layout(arg: str, value: Any) -> None:
    if value not in LAYOUTS:
        _fail(ValueError, arg, f"must be 'per_leaf' or 'packed', got {value!r}.")


def _momenta(arg: str, value: Any) -> None:
    if isinstance(value, np.ndarray | jax.Array):
        if value.ndim != 1 or value.size == 0:
            _fail(ValueError, arg, f"must be a non-empty 1-D array, got shape {value.shape}.")
        elements: Sequence[Any] = [] if is_traced(value) else list(value)
    elif isinstance(value, list | tuple):
        elements = value
    else:
        _fail(TypeError, arg, f"must be a tuple of numbers, e.g. (0.0, 0.9), got {value!r}.")
    if len(value) == 0:
        _fail(ValueError, arg, "must hold at least one momentum, got ().")
    for index, beta in enumerate(elements):
        _MOMENTUM_CONST(f"{arg}[{index}]", beta)


def steps(arg: str, value: Any) -> None:
    """A step count: an integer in ``[1, 2**31 - 1]``."""
    try:
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or isinstance(value, bool):
        _fail(TypeError, arg, f"must be a positive integer, got {value!r}.")
    elif not 1 <= number <= INT32_MAX:
        _fail(ValueError, arg, f"must be in [1, {INT32_MAX}], got {value!r}.")


_MOMENTUM_CONST = in_range(0.0, 1.0, schedule=False)
_RATE = in_range(0.0, math.inf)
_DECAY = in_range(0.0, math.inf, schedule=False)
CHECKS: dict[str, Callable[[str, Any], None]] = {
    "learning_rate": _RATE,
    "lr": _RATE,
    "momentum": in_range(0.0, 1.0),
    "max_momentum": _MOMENTUM_CONST,
    "init_momentum": _MOMENTUM_CONST,
    "dampening": _MOMENTUM_CONST,
    "weight_decay": lambda arg, v: v is None or _DECAY(arg, v),
    "nu": in_range(0.0, 1.0, closed=True),
    "b1": _MOMENTUM_CONST,
    "b2": _MOMENTUM_CONST,
    "momenta": _momenta,
    "nesterov": _flag,
    "use_nesterov": _flag,
    "maximize": _flag,
    "stochastic_rounding": _flag,
    "accumulator_dtype": _dtype,
    "seed": _seed,
    "layout": _layout,
    "steps_per_stage": steps,
    "total_steps": steps,
}


_SYNONYMS = {"learning_rate": "lr", "lr": "learning_rate", "use_nesterov": "nesterov"}


def _did_you_mean(kwargs: dict[str, Any], signature: inspect.Signature) -> str:
    for key in kwargs:
        if key not in signature.parameters:
            close = [_SYNONYMS.get(key, ""), *difflib.get_close_matches(key, signature.parameters)]
            close = [name for name in close if name in signature.parameters]
            if close:
                return f" Did you mean {close[0]}?"
    return ""


def public(name: str) -> Callable[[F], F]:
    """Check a public factory's arguments against :data:`CHECKS`, naming ``name`` in errors."""

    def wrap(factory: F) -> F:
        signature = inspect.signature(factory)

        @functools.wraps(factory)
        def checked(*args: Any, **kwargs: Any) -> Any:
            if _CALLER.get() is not None:  # built by another public factory: checked there
                return factory(*args, **kwargs)
            token = _CALLER.set(name)
            try:
                try:
                    bound = signature.bind(*args, **kwargs)
                except TypeError as error:
                    raise TypeError(f"{name}: {error}.{_did_you_mean(kwargs, signature)}") from None
                bound.apply_defaults()
                for arg, value in bound.arguments.items():
                    if arg in CHECKS:
                        CHECKS[arg](arg, value)
                return factory(*args, **kwargs)
            finally:
                _CALLER.reset(token)

        return checked  # type: ignore[return-value]

    return wrap
