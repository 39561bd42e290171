"""Trees of buffers: zero buffers placed like their params, and the checks of ``update``.

Shapes and dtypes are static, so every check here costs only tracing time.
Integer and boolean params (Equinox keeps them in ``eqx.filter(model,
eqx.is_array)``) get no buffer: ``None`` in the state, as optax does.
"""

from __future__ import annotations

from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np
import optax

from momentum_jax._src._validation import caller, is_traced

# optax 0.2.4 (the floor) names it safe_int32_increment.
safe_increment = getattr(optax, "safe_increment", None) or optax.safe_int32_increment


def is_none(x: Any) -> bool:
    return x is None


def trains(leaf: Any) -> bool:
    """A floating (or complex) param trains; integer and boolean ones do not."""
    return leaf is not None and bool(jnp.issubdtype(jnp.result_type(leaf), jnp.inexact))


def zeros(param: Any, dtype: Any) -> Any:
    """A zero buffer for ``param`` (``None`` if it does not train), sharded like it.

    Under ``jit`` on a mesh with auto axes a constant would be replicated or put
    on one device, so the zeros are computed *from* the param, elementwise:
    ``param * 0`` is the one such expression XLA does not fold away before
    sharding propagation (it is not 0 for inf or NaN), and ``abs(where(isnan))``
    then makes it exactly +0. Eagerly, ``zeros_like`` copies the sharding.
    """
    if not trains(param):
        return None
    real = dtype is not None and not jnp.issubdtype(dtype, jnp.complexfloating)
    if real and jnp.issubdtype(jnp.result_type(param), jnp.complexfloating):
        raise TypeError(
            f"{caller()}: a param is complex; accumulator_dtype={np.dtype(dtype).name} "
            "would drop its imaginary part."
        )
    dtype = dtype or jnp.result_type(param)
    if not is_traced(param):
        buffer = jnp.zeros_like(param, dtype)
    else:
        product = param * jnp.zeros((), param.dtype)
        buffer = jnp.abs(jnp.where(jnp.isnan(product), 0, product)).astype(dtype)
    # A Python-scalar param gives a weakly typed buffer, which the first update would make strong.
    return jax.lax.convert_element_type(buffer, buffer.dtype)


def _path(tree: Any, index: int) -> str:
    paths = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)[0]
    return jax.tree_util.keystr(paths[index][0]) or "<root>"


def check_tree(tree: Any, reference: Any, what: str = "gradient") -> list[Any]:
    """``tree``'s leaves, paired with ``reference``'s (``None`` where no buffer); else an error.

    Checks the structure and each leaf's shape, that gradients are inexact, and
    that no gradient arrives for a param that does not train.
    """
    ref_leaves, ref_def = jax.tree.flatten(reference, is_leaf=is_none)
    try:
        leaves = ref_def.flatten_up_to(tree)  # type: ignore[attr-defined]
    except (ValueError, TypeError):
        _mismatch(tree, ref_def, what)
    for index, (x, ref) in enumerate(zip(leaves, ref_leaves, strict=True)):
        if ref is None:
            if x is not None and what == "gradient":
                raise TypeError(
                    f"{caller()}: the param at {_path(reference, index)} does not train "
                    "(integer or bool); give it a None gradient."
                )
            continue
        if not hasattr(x, "shape") and not isinstance(x, int | float | complex):
            _mismatch(tree, ref_def, what)
        dtype, shape = jnp.result_type(x), jnp.shape(x)
        if what == "gradient" and not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(f"{caller()}: the gradient at {_path(reference, index)} is {dtype}.")
        if (
            what == "gradient"
            and jnp.issubdtype(dtype, jnp.complexfloating)
            and not jnp.issubdtype(ref.dtype, jnp.complexfloating)
        ):
            raise TypeError(
                f"{caller()}: the gradient at {_path(reference, index)} is complex but its "
                f"buffer is {ref.dtype}; init with complex params."
            )
        if shape != ref.shape:
            raise ValueError(
                f"{caller()}: the {what} at {_path(reference, index)} has shape {shape}, "
                f"expected {ref.shape}."
            )
    return leaves


def _mismatch(tree: Any, ref_def: Any, what: str) -> NoReturn:
    raise ValueError(
        f"{caller()}: the {what}s do not match the state's params. {what.capitalize()}s: "
        f"{jax.tree.structure(tree, is_leaf=is_none)}; params: {ref_def}."
    )


def check_state(state: Any, expected: type, updates: Any) -> None:
    """Refuse a state that is not this transform's (or arguments passed in the wrong order)."""
    if not isinstance(state, expected):
        swapped = isinstance(updates, expected)
        raise TypeError(
            f"{caller()}: expected a {expected.__name__} from this transform's init, got "
            f"{type(state).__name__}"
            + ("; call update(updates, state, params)." if swapped else ".")
        )


def as_array(x: Any) -> Any:
    return x if x is None or isinstance(x, jax.Array) else jnp.asarray(x)
