"""Every check: one table of arguments and their valid values, and the checks of ``update``.

Every public factory is wrapped by :func:`public`, which binds its arguments,
checks each one named in :data:`CHECKS` (concrete values only: schedules and
traced arrays pass), and records the factory's name for the errors raised
later by the transform it builds (:func:`caller`). A factory called from
inside another one (a preset building its blocks) is not checked again. The
state options every buffer transform shares are written once, in
:class:`StateOptions`: a factory takes them as ``**options`` and :func:`public`
gives it a signature that lists them, keyword-only, with their defaults.

``update`` checks trees, shapes and dtypes, which are static: they cost only
tracing time. Integer and boolean params (Equinox keeps them in
``eqx.filter(model, eqx.is_array)``) get no buffer: ``None`` in the state, as
optax does.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import inspect
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypedDict, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

if TYPE_CHECKING:
    from typing_extensions import Unpack as Unpack  # Python 3.10: not in typing

# optax 0.2.4 (the floor) names it safe_int32_increment.
safe_increment = getattr(optax, "safe_increment", None) or optax.safe_int32_increment
ACCUMULATION: Final = "gradient_accumulation_steps"
LAYOUTS = ("per_leaf", "packed")
_CALLER: contextvars.ContextVar[str | None] = contextvars.ContextVar("caller", default=None)
F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def calling(name: str) -> Iterator[None]:
    """Name ``name`` in the errors raised inside (a transform's ``init`` and ``update``)."""
    token = _CALLER.set(name)
    try:
        yield
    finally:
        _CALLER.reset(token)


def named(fn: F) -> F:
    """``fn``, a transform's ``init`` or ``update``, naming the factory that built it in errors."""
    return calling(caller())(fn)


def caller() -> str:
    """The public function being built (for error messages)."""
    return _CALLER.get() or "momentum_jax"


def is_traced(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


def is_real(value: Any) -> bool:
    """A real number, or an array of them (not bool, not complex)."""
    if not isinstance(value, int | float | np.ndarray | np.generic | jax.Array):
        return False
    dtype = jnp.result_type(value)
    return bool(jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer))


def is_python_zero(value: Any) -> bool:
    """Only a Python ``0`` removes a stage: an array (inject_hyperparams) never does."""
    return type(value) in (int, float) and value == 0


def concrete(value: Any) -> float | None:
    """``value`` as a float when it is a concrete number, else ``None``."""
    if callable(value) or is_traced(value) or value is None:
        return None
    return float(np.asarray(value).real)


class StateOptions(TypedDict, total=False):
    """The keyword-only state options of every buffer transform and preset."""

    accumulator_dtype: Any | None
    stochastic_rounding: bool
    seed: int | jax.Array
    layout: str


class AccumulatingOptions(StateOptions, total=False):
    """:class:`StateOptions` and gradient accumulation."""

    gradient_accumulation_steps: int | None


_DEFAULTS = {"stochastic_rounding": False, "seed": 0, "layout": "per_leaf"}


def needs_params() -> Exception:
    return error(
        ValueError,
        "weight_decay needs the params: pass them to update(), or "
        "static_args=('weight_decay',) under inject_hyperparams if it is 0.",
    )


def error(kind: type[Exception], message: str) -> Exception:
    """A ``kind`` error whose message names the public function being built or run."""
    return kind(f"{caller()}: {message}")


def _fail(kind: type[Exception], arg: str, message: str) -> NoReturn:
    raise error(kind, f"{arg} {message}")


def in_range(high: float, closed: bool = False, schedule: bool = True) -> Any:
    """A check that a concrete hyperparameter lies in ``[0, high)`` (``[0, high]`` if closed).

    It is checked as the arithmetic sees it: a Python float in float32 (unless x64
    is on), so 0.9999999999, which is 1.0 there, is refused.
    """

    def check(arg: str, value: Any) -> None:
        if (callable(value) and schedule) or is_traced(value):
            return
        if not is_real(value):
            kind = "a real number" + " or a schedule" * schedule
            _fail(TypeError, arg, f"must be {kind}, got {value!r}.")
        if np.ndim(value) != 0:
            _fail(ValueError, arg, f"must be a scalar, got shape {np.shape(value)}.")
        dtype = getattr(value, "dtype", jnp.result_type(float))  # a Python number: float32
        seen = jax.dtypes.canonicalize_dtype(dtype)
        with np.errstate(over="ignore"):
            number = float(np.asarray(value).astype(seen))
        if number >= 0 and (number <= high if closed else number < high):
            return
        cast = " (cast to 16 bits? use hyperparam_dtype=jnp.float32)" * (seen.itemsize < 4)
        interval = f"[0, {high:g}{']' if closed else ')'}"
        _fail(ValueError, arg, f"must be in {interval}, got {arg}={value!r}{cast}.")

    return check


def _kind(test: Callable[[Any], bool], wanted: str, kind: type[Exception] = TypeError) -> Any:
    def check(arg: str, value: Any) -> None:
        if not test(value):
            _fail(kind, arg, f"must be {wanted}, got {value!r}.")

    return check


def _dtype(arg: str, value: Any) -> None:
    """A float dtype or int8, never an array: ``optax.inject_hyperparams`` takes a dtype, a
    callable, for a schedule of one unless it is static."""
    try:
        dtype = None if isinstance(value, np.ndarray | jax.Array) else jnp.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or not (dtype == np.int8 or jnp.issubdtype(dtype, jnp.inexact)):
        fix = f"; under optax.inject_hyperparams pass static_args=({arg!r},)"
        fix *= isinstance(value, np.ndarray | jax.Array)
        _fail(TypeError, arg, f"must be None, a float dtype or jnp.int8, got {value!r}{fix}.")


def _integer(low: int, high: int = 2**31 - 1) -> Any:
    """A check for an integer (or integer scalar array, which may be traced) in ``[low, high]``."""

    def check(arg: str, value: Any) -> None:
        if isinstance(value, np.ndarray | jax.Array):
            if value.shape != () or not jnp.issubdtype(value.dtype, jnp.integer):
                _fail(TypeError, arg, f"must be an integer scalar, got {value!r}.")
        elif isinstance(value, bool) or not isinstance(value, int | np.integer):
            _fail(TypeError, arg, f"must be an integer, got {value!r}.")
        if not is_traced(value) and not low <= int(value) <= high:
            _fail(ValueError, arg, f"must be in [{low}, {high}], got {arg}={value!r}.")

    return check


def _steps(arg: str, value: Any) -> None:
    """An integer in ``[1, 2**31 - 1]``, never an array: the state's structure depends on it."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        fix = f"; under optax.inject_hyperparams pass static_args=({arg!r},)"
        fix *= isinstance(value, np.ndarray | jax.Array)
        _fail(
            TypeError, arg, f"must be an integer in [1, {2**31 - 1}] or None, got {value!r}{fix}."
        )
    _integer(1)(arg, value)


def _momenta(arg: str, value: Any) -> None:
    if not (isinstance(value, list | tuple) or (np.ndim(value) == 1 and hasattr(value, "dtype"))):
        _fail(TypeError, arg, f"must be a non-empty tuple of numbers, got {value!r}.")
    if len(value) == 0:
        _fail(ValueError, arg, f"must hold at least one momentum, got {arg}={value!r}.")
    for index, beta in enumerate([] if is_traced(value) else value):
        _CONSTANT(f"{arg}[{index}]", beta)


_CONSTANT, _DECAY = in_range(1.0, schedule=False), in_range(math.inf, schedule=False)
_FLAG = _kind(lambda v: isinstance(v, bool | np.bool_), "True or False")
CHECKS: dict[str, Callable[[str, Any], object]] = {
    **dict.fromkeys(("learning_rate", "lr"), in_range(math.inf)),
    **dict.fromkeys(("max_momentum", "init_momentum", "dampening"), _CONSTANT),
    **dict.fromkeys(("momentum", "b1", "b2"), in_range(1.0)),
    "nu": in_range(1.0, closed=True),
    "weight_decay": _DECAY,
    "momenta": _momenta,
    **dict.fromkeys(("nesterov", "use_nesterov", "maximize", "stochastic_rounding"), _FLAG),
    "accumulator_dtype": _dtype,
    "seed": _integer(0),
    "layout": _kind(lambda v: v in LAYOUTS, "'per_leaf' or 'packed'", ValueError),
    **dict.fromkeys(("steps_per_stage", "total_steps"), _integer(1)),
    ACCUMULATION: _steps,
}
_SYNONYMS = {
    "learning_rate": "lr",
    "lr": "learning_rate",
    "use_nesterov": "nesterov",
    "transform": "tx",  # restore_state's name for it before 0.5.0
}


def _unknown(kwargs: dict[str, Any], parameters: Any) -> str | None:
    """An unexpected keyword argument, with the parameter it may stand for."""
    for key in kwargs:
        if key not in parameters:
            close = [_SYNONYMS.get(key, ""), *difflib.get_close_matches(key, parameters)]
            hint = next((f" Did you mean {c}?" for c in close if c in parameters), "")
            if key == ACCUMULATION:  # an output that needs the mean gradient itself
                hint = " Wrap the transform in optax.MultiSteps instead."
            return f"got an unexpected keyword argument {key!r}.{hint}"
    return None


def public(name: str, options: type[StateOptions] | None = None) -> Callable[[F], F]:
    """Check a public factory's arguments against :data:`CHECKS`, naming ``name`` in errors.

    A factory taking ``options`` (a :class:`StateOptions` type) as ``**options``
    is given a signature that lists them, and always receives every one of them.
    """

    def wrap(factory: F) -> F:
        signature = inspect.signature(factory)
        if options is not None:
            *own, last = signature.parameters.values()  # the last one is **options
            listed = [
                inspect.Parameter(
                    key,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=_DEFAULTS.get(key),
                    annotation=getattr(hint, "__forward_arg__", hint),  # the text, as elsewhere
                )
                for key, hint in options.__annotations__.items()
            ]
            signature = signature.replace(parameters=[*own, *listed])
            # typing.get_type_hints reads the options one by one, as the signature lists them.
            hints = {k: v for k, v in factory.__annotations__.items() if k != last.name}
            factory.__annotations__ = hints | {p.name: p.annotation for p in listed}

        @functools.wraps(factory)
        def checked(*args: Any, **kwargs: Any) -> Any:
            nested = _CALLER.get() is not None  # built by another public factory: checked there
            with contextlib.nullcontext() if nested else calling(name):
                try:
                    bound = signature.bind(*args, **kwargs)
                except TypeError as error:
                    why = _unknown(kwargs, signature.parameters) or f"{error}."
                    raise TypeError(f"{name}: {why}") from None
                bound.apply_defaults()
                for arg, value in bound.arguments.items():
                    # None is valid where it is the default (accumulator_dtype, Keras' decay).
                    as_default = value is None and signature.parameters[arg].default is None
                    if arg in CHECKS and not nested and not as_default:
                        CHECKS[arg](arg, value)
                return factory(*bound.args, **bound.kwargs)

        checked.__signature__ = signature  # type: ignore[attr-defined]
        return checked  # type: ignore[return-value]

    return wrap


# --- the checks of update ----------------------------------------------------


def is_none(x: Any) -> bool:
    return x is None


def trains(leaf: Any) -> bool:
    """A floating (or complex) param trains; integer and boolean ones do not."""
    return leaf is not None and bool(jnp.issubdtype(jnp.result_type(leaf), jnp.inexact))


def path(tree: Any, index: int) -> str:
    """The key path of ``tree``'s ``index``-th leaf (``None`` leaves counted)."""
    paths = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)[0]
    return jax.tree_util.keystr(paths[index][0]) or "<root>"


def _leaf_problem(x: Any, ref: Any, what: str) -> tuple[type[Exception], str] | None:
    gradient = what == "gradient"
    if ref is None:
        wrong = gradient and x is not None
        return (
            (TypeError, "does not train (integer or bool); give it a None gradient.")
            if wrong
            else None
        )
    if not hasattr(x, "shape") and not isinstance(x, int | float | complex):
        return ValueError, f"is {'None' if x is None else f'a {type(x).__name__}'}, not an array."
    dtype, shape = jnp.result_type(x), jnp.shape(x)
    if gradient and not jnp.issubdtype(dtype, jnp.inexact):
        return TypeError, f"is {dtype}, not floating point."
    if gradient and jnp.iscomplexobj(x) and not jnp.issubdtype(ref.dtype, jnp.complexfloating):
        fix = "init with complex params and accumulator_dtype None or complex"
        return TypeError, f"is complex but its buffer is {ref.dtype}; {fix}."
    return None if shape == ref.shape else (ValueError, f"has shape {shape}, expected {ref.shape}.")


def check_tree(tree: Any, reference: Any, what: str = "gradient") -> list[Any]:
    """``tree``'s leaves, paired with ``reference``'s (``None`` where no buffer); else an error.

    Checks the structure and each leaf's shape, that gradients are inexact, and
    that no gradient arrives for a param that does not train.
    """
    ref_leaves, ref_def = jax.tree.flatten(reference, is_leaf=is_none)
    try:
        leaves = ref_def.flatten_up_to(tree)  # type: ignore[attr-defined]
    except (ValueError, TypeError):
        leaves = None
    if leaves is None:
        raise error(
            ValueError,
            f"the {what}s do not match the state's params. {what.capitalize()}s: "
            f"{jax.tree.structure(tree, is_leaf=is_none)}; params: {ref_def}.",
        )
    for index, (x, ref) in enumerate(zip(leaves, ref_leaves, strict=True)):
        if problem := _leaf_problem(x, ref, what):
            kind = "param" if ref is None else what
            raise error(problem[0], f"the {kind} at {path(reference, index)} {problem[1]}")
    return leaves


def check_state(state: Any, expected: type, updates: Any) -> None:
    """Refuse a state that is not this transform's (or arguments passed in the wrong order)."""
    if not isinstance(state, expected):
        hint = "; call update(updates, state, params)" * isinstance(updates, expected)
        raise error(
            TypeError,
            f"expected a {expected.__name__} from this transform's init, got "
            f"{type(state).__name__}{hint}.",
        )


def as_array(x: Any) -> Any:
    return x if x is None or isinstance(x, jax.Array) else jnp.asarray(x)
