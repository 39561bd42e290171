"""Carry a state saved by momentum_jax 0.1.0 into a transform's current state layout."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

_BUFFER_FIELDS = ("velocity", "buffer", "buffers")


def _children(node: Any) -> Iterable[tuple[Any, Any]]:
    if hasattr(node, "_asdict"):
        return tuple(node._asdict().items())
    if isinstance(node, Mapping):
        return tuple(node.items())
    if isinstance(node, list | tuple):
        return tuple(enumerate(node))
    return ()


def _collect(node: Any, counts: list[Any], buffers: list[Any]) -> None:
    for key, child in _children(node):
        if key in _BUFFER_FIELDS:
            buffers.append(child)
        elif key == "count":
            counts.append(child)
        else:
            _collect(child, counts, buffers)


def _is_stage_state(x: Any) -> bool:
    fields = getattr(x, "_fields", ())
    return "count" in fields or any(f in fields for f in _BUFFER_FIELDS)


def restore_state(
    old_state: Any, transform: optax.GradientTransformation, params: optax.Params
) -> optax.OptState:
    """Rebuild a momentum_jax 0.1.0 optimizer state for the current ``transform``.

    In 0.2.0 :func:`momentum_jax.qhm` and :func:`momentum_jax.aggmo` became
    chains (their buffer block, then ``optax.scale_by_learning_rate``) and the
    :mod:`momentum_jax.compat` presets changed stages, so a 0.1.0 state no
    longer has the structure ``transform.init`` returns. This copies the
    update count and the buffers of ``old_state`` into a fresh
    ``transform.init(params)``, keeping the new dtypes. ``old_state`` may be
    the 0.1.0 NamedTuples, or nested dicts and lists such as a checkpoint
    restored without a target.

    Args:
      old_state: the state saved by 0.1.0 for the same optimizer and params.
      transform: the optimizer rebuilt with the same arguments.
      params: the params the state belongs to (only their structure, shapes
        and dtypes are used).

    Returns:
      A state for ``transform`` that continues the 0.1.0 run step for step.

    Example:
      >>> import jax.numpy as jnp
      >>> import momentum_jax
      >>> params = jnp.zeros(2)
      >>> old = {"count": jnp.asarray(3), "buffer": jnp.array([0.5, -0.5])}  # 0.1.0 qhm
      >>> tx = momentum_jax.qhm(0.1, 0.9)
      >>> state = momentum_jax.restore_state(old, tx, params)
      >>> print(state[0].buffer, state[0].count)
      [ 0.5 -0.5] 3
    """
    counts: list[Any] = []
    old_buffers: list[Any] = []
    _collect(old_state, counts, old_buffers)
    fresh = transform.init(params)
    new_buffers: list[Any] = []
    jax.tree.map(
        lambda s: (
            new_buffers.extend(getattr(s, f) for f in _BUFFER_FIELDS if f in s._fields)
            if _is_stage_state(s)
            else None
        ),
        fresh,
        is_leaf=_is_stage_state,
    )
    if len(old_buffers) != len(new_buffers):
        raise ValueError(
            f"momentum_jax.restore_state: the old state holds {len(old_buffers)} buffer "
            f"trees but transform.init(params) holds {len(new_buffers)}. Rebuild the "
            "transform with the arguments the old state was made with."
        )
    filled = iter([_refill(old, new) for old, new in zip(old_buffers, new_buffers, strict=True)])

    def replace(s: Any) -> Any:
        if not _is_stage_state(s):
            return s
        changes = {f: next(filled) for f in _BUFFER_FIELDS if f in s._fields}
        if "count" in s._fields and counts:
            changes["count"] = jnp.asarray(counts[0], jnp.int32)
        return s._replace(**changes)

    return jax.tree.map(replace, fresh, is_leaf=_is_stage_state)


def _refill(old: Any, new: Any) -> Any:
    old_leaves = jax.tree.leaves(old)
    new_leaves, treedef = jax.tree.flatten(new)
    shapes_old = [jnp.shape(x) for x in old_leaves]
    shapes_new = [jnp.shape(x) for x in new_leaves]
    if shapes_old != shapes_new:
        raise ValueError(
            "momentum_jax.restore_state: the old buffers have shapes "
            f"{shapes_old}, but the transform's buffers have shapes {shapes_new}. Pass "
            "the params the old state was made for."
        )
    return jax.tree.unflatten(
        treedef, [jnp.asarray(x, y.dtype) for x, y in zip(old_leaves, new_leaves, strict=True)]
    )
