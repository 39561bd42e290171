"""Carry a saved state into a transform's current layout.

From momentum_jax 0.1.0, and between the packed and the per-array layouts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from momentum_jax._src._layout import Layout, PackedState
from momentum_jax._src._tree import _is_none

_BUFFER_FIELDS = ("velocity", "buffer", "buffers")
_NAME = "momentum_jax.restore_state"


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
    """Rebuild a saved optimizer state for ``transform``: from 0.1.0, or from the other layout.

    In 0.2.0 :func:`momentum_jax.qhm` and :func:`momentum_jax.aggmo` became
    chains (their buffer block, then ``optax.scale_by_learning_rate``) and the
    :mod:`momentum_jax.compat` presets changed stages, so a 0.1.0 state no
    longer has the structure ``transform.init`` returns. This copies the
    update count and the buffers of ``old_state`` into a fresh
    ``transform.init(params)``, keeping the new dtypes. ``old_state`` may be
    the 0.1.0 NamedTuples, or nested dicts and lists such as a checkpoint
    restored without a target.

    It also moves a state between layouts (:func:`momentum_jax.pack_small_leaves`):
    a state saved in the packed layout (on a GPU, say) restores into a
    per-array ``transform`` (on a CPU), and the other way round. A packed
    state restored without a target has lost its :class:`momentum_jax.Layout`;
    it is recovered from ``params`` and the sizes of the packed buffers.

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
      >>> tx = momentum_jax.qhm(0.1, 0.9, layout="per_leaf")  # as on a CPU
      >>> state = momentum_jax.restore_state(old, tx, params)
      >>> print(state[0].buffer, state[0].count)
      [ 0.5 -0.5] 3
    """
    treedef = jax.tree.structure(params, is_leaf=_is_none)
    old_state = _map_packed(old_state, lambda node: _unpacked(node, params, treedef))
    counts: list[Any] = []
    old_buffers: list[Any] = []
    _collect(old_state, counts, old_buffers)
    packed_fresh = transform.init(params)
    fresh = _map_packed(packed_fresh, lambda node: _unpacked(node, params, treedef))
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

    filled_state = jax.tree.map(replace, fresh, is_leaf=_is_stage_state)
    return _map_packed(filled_state, _repacked)


def _is_packed(node: Any) -> bool:
    """A packed state: the NamedTuple, or its dict from a checkpoint read without a target."""
    return isinstance(node, PackedState) or (
        isinstance(node, Mapping) and set(node) == {"inner", "layout"}
    )


def _map_packed(state: Any, fn: Any) -> Any:
    if _is_packed(state):
        return fn(state)
    if isinstance(state, Mapping):
        return type(state)({k: _map_packed(v, fn) for k, v in state.items()})  # type: ignore[call-arg]
    if hasattr(state, "_fields"):
        return type(state)(*(_map_packed(v, fn) for v in state))
    if isinstance(state, list | tuple):
        return type(state)(_map_packed(v, fn) for v in state)
    return state


def _map_buffers(state: Any, fn: Any) -> Any:
    """``state`` with ``fn`` applied to every buffer tree (each of AggMo's ``buffers``)."""
    if isinstance(state, Mapping) or hasattr(state, "_fields"):
        items = state._asdict() if hasattr(state, "_fields") else dict(state)
        changed = {}
        for key, child in items.items():
            if key == "buffers":
                changed[key] = type(child)(fn(b) for b in child)
            elif key in _BUFFER_FIELDS:
                changed[key] = fn(child)
            else:
                changed[key] = _map_buffers(child, fn)
        if hasattr(state, "_fields"):
            return type(state)(**changed)
        return type(state)(changed)
    if isinstance(state, list | tuple):
        return type(state)(_map_buffers(v, fn) for v in state)
    return state


def _unpacked(node: Any, params: Any, treedef: Any) -> PackedState:
    """A packed state with per-array buffers (its layout kept, or recovered from ``params``)."""
    inner = node.inner if isinstance(node, PackedState) else node["inner"]
    layout = node.layout if isinstance(node, PackedState) else None
    if layout is None:
        layout = _recover_layout(inner, params)
    return PackedState(_map_buffers(inner, lambda b: layout.unpack(tuple(b), treedef)), layout)


def _repacked(node: PackedState) -> PackedState:
    layout = node.layout
    return PackedState(
        _map_buffers(node.inner, lambda b: layout.pack(_NAME, b, "buffer", check_dtype=False)),
        layout,
    )


def _recover_layout(inner: Any, params: Any) -> Layout:
    """The layout whose packed sizes are those of the buffers in ``inner``."""
    found: list[Any] = []
    _map_buffers(inner, lambda b: found.append(b))
    if not found:
        return Layout.of(params, 0)
    packs = found[0][1]
    sizes = {str(name): int(jnp.shape(flat)[0]) for name, flat in packs.items()}
    leaf_sizes = sorted({int(jnp.size(x)) for x in jax.tree.leaves(params)})
    for max_size in [0, *leaf_sizes]:
        layout = Layout.of(params, max_size)
        if dict(layout.groups) == sizes:
            return layout
    raise ValueError(
        f"{_NAME}: the packed buffers hold {sizes} elements per dtype, which no "
        "max_size packs these params into. Pass the params the state was made for."
    )


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
