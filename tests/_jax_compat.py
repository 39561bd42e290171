"""The few JAX APIs the tests use that moved within the supported range (0.4.35 on)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import jax


def enable_x64(enabled: bool = True) -> AbstractContextManager[Any]:
    """``jax.enable_x64(enabled)``; ``jax.experimental.enable_x64`` before JAX 0.5."""
    context = getattr(jax, "enable_x64", None)
    if context is not None:
        return context(enabled)  # type: ignore[no-any-return]
    from jax import experimental

    return experimental.enable_x64() if enabled else experimental.disable_x64()


def is_weakly_typed(value: Any) -> bool:
    """Whether JAX treats ``value`` as weakly typed (``jax.typeof`` arrived after 0.4)."""
    typeof = getattr(jax, "typeof", None)
    aval = typeof(value) if typeof is not None else jax.core.get_aval(value)
    return bool(aval.weak_type)
