"""Carry a saved optimizer state into a transform's current state: every field, or an error."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from momentum_jax._src import _checks
from momentum_jax._src._checks import public
from momentum_jax._src._layout import BUFFER_FIELDS, Layout, PackedState, repack


@public("momentum_jax.restore_state")
def restore_state(
    old_state: Any, transform: optax.GradientTransformation, params: optax.Params
) -> optax.OptState:
    """Carry a saved state into ``transform.init(params)``: every field, or an error naming it.

    The saved state may be in the other layout (written with
    ``layout="packed"`` and resumed with ``layout="per_leaf"``, or the other
    way round), or a checkpoint restored without a target (nested dicts and
    lists). Fields are matched by their key paths in the new state: a packed
    block is recognised where the new state has a block, never by a name.
    Every field of every stage is carried, momentum_jax's and optax's alike
    (``optax.inject_hyperparams``, ``MultiSteps``, ``apply_if_finite``,
    ``masked``, ``partition``...), matched by its name: each stage keeps its
    own count. Values take the dtypes of ``transform.init(params)`` and its
    placement: each buffer sharded like its param, and counters left
    uncommitted where a fresh init leaves them. A field the new state has
    and the old one lacks, a field that would be dropped, or a shape that
    differs raises a ``ValueError`` naming the field; the one exception is an
    ``inject_hyperparams`` hyperparameter that the old state did not inject
    (it was static then), which takes the value ``transform`` is built with.

    Under ``jax.vmap`` (an ensemble's stacked states) map it over the members:
    ``jax.vmap(lambda s, p: restore_state(s, tx, p))(states, params)``.

    Args:
      old_state: the saved state, of the same optimizer for the same params.
      transform: the optimizer, rebuilt with the same arguments (its layout may
        differ).
      params: the params the state belongs to (only their structure, shapes,
        dtypes and shardings are used).

    Returns:
      A state for ``transform`` that continues the saved run step for step.

    Example:
      >>> import jax.numpy as jnp
      >>> import momentum_jax
      >>> params = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}
      >>> packed = momentum_jax.qhm(0.1, 0.9, layout="packed")
      >>> state = packed.init(params)
      >>> for _ in range(3):
      ...   _, state = packed.update({"w": jnp.ones((2, 2)), "b": jnp.ones(2)}, state)
      >>> per_leaf = momentum_jax.qhm(0.1, 0.9)
      >>> moved = momentum_jax.restore_state(state, per_leaf, params)
      >>> print(moved[0].buffer["b"], moved[0].count)
      [0.271 0.271] 3
    """
    fresh = transform.init(params)
    return jax.tree.map(_place_like, _carry(old_state, fresh, "state", params), fresh)


def _place_like(value: Any, fresh: Any) -> Any:
    if not isinstance(fresh, jax.Array) or _checks.is_traced(fresh) or _checks.is_traced(value):
        return value
    if getattr(fresh, "_committed", True):  # a buffer: sharded like its param, never gathered
        return jax.device_put(value, fresh.sharding)
    return jnp.asarray(value, fresh.dtype)  # a counter: uncommitted, as init leaves it


def _children(node: Any) -> dict[str, Any] | None:
    """A pytree node's children by name (a field, key or index), or ``None`` for a leaf."""
    pairs = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)[0]
    if len(pairs) == 1 and pairs[0][0] == ():
        return None
    return {_name(path[0]): child for path, child in pairs}


def _name(key: Any) -> str:
    """A key path entry's field name, dict key or index."""
    return str(next((getattr(key, a) for a in ("name", "key", "idx") if hasattr(key, a)), key))


def _is_block(state: Any) -> bool:
    return bool(set(getattr(state, "_fields", ())) & set(BUFFER_FIELDS))


def _packed_raw(old: Any) -> Any:
    """A packed block read without a target: its ``inner``, else ``None``."""
    children = _children(old) if isinstance(old, Mapping | list | tuple) else None
    if children is not None and set(children) in ({"inner"}, {"inner", "layout"}):
        return children["inner"]
    return None


def _carry(old: Any, new: Any, path: str, params: Any) -> Any:
    """``old``'s values in ``new``'s structure, matched by name, cast to ``new``'s dtypes."""
    if isinstance(old, PackedState):
        old = old.unpacked()
    raw = _packed_raw(old)
    if raw is not None and (isinstance(new, PackedState) or _is_block(new)):
        # A packed block read without a target: carried in the layout it was written in.
        block = new.unpacked() if isinstance(new, PackedState) else new
        layout = _written_layout(raw, block, params)
        inner = _carry(raw, repack(block, layout).inner, f"{path}.inner", params)
        carried = PackedState(inner, layout).unpacked()
        return repack(carried, new.layout) if isinstance(new, PackedState) else carried
    if isinstance(new, PackedState):
        return repack(_carry(old, new.unpacked(), path, params), new.layout)
    new_children = _children(new)
    if new_children is None:
        return _carry_leaf(old, new, path)
    old_children = _children(old)
    if old_children is None:
        raise _error(path, f"is {_describe(old)} in the old state, but has fields in the new one")
    lost = [k for k in old_children if k not in new_children and jax.tree.leaves(old_children[k])]
    if lost:
        raise _error(_where(path, lost[0]), "has no place in the new state")
    carried = []
    for key, child in new_children.items():
        where = _where(path, key)
        if key in old_children:
            carried.append(_carry(old_children[key], child, where, params))
        elif not jax.tree.leaves(child) or path.endswith(".hyperparams"):
            carried.append(child)  # a hyperparameter injected now but static then: as built
        else:
            raise _error(where, "is missing from the old state")
    treedef = jax.tree_util.tree_structure(new, is_leaf=lambda x: x is not new)
    return jax.tree_util.tree_unflatten(treedef, carried)


def _written_layout(raw: Any, block: Any, params: Any) -> Layout:
    """The layout of a raw packed block: an array that its ``rest`` holds was not packed."""
    field = block._fields[1]
    first = getattr(block, field)[0] if field == "buffers" else getattr(block, field)
    structures = {str(jax.tree.structure(x, is_leaf=_checks.is_none)) for x in (first, params)}
    template = params if len(structures) == 1 else first  # packs are grouped by the params' dtypes
    rest = _lookup(raw, (field, "0", "0") if field == "buffers" else (field, "0"))
    paths = jax.tree_util.tree_flatten_with_path(template, is_leaf=_checks.is_none)[0]
    own = [i for i, (keys, _) in enumerate(paths) if _is_value(_lookup(rest, map(_name, keys)))]
    return Layout.of(template, own)


def _lookup(node: Any, names: Any) -> Any:
    for name in names:
        children = None if node is None else _children(node)
        node = None if children is None else children.get(name)
    return node


def _is_value(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic | int | float | complex | bool)


def _carry_leaf(old: Any, new: Any, path: str) -> Any:
    if not _is_value(old):
        raise _error(path, f"is {_describe(old)} in the old state, but an array in the new one")
    if jnp.shape(old) != jnp.shape(new):
        stacked = jnp.shape(old)[1:] == jnp.shape(new)
        hint = " (a stacked state: jax.vmap restore_state over it)" if stacked else ""
        raise _error(path, f"has shape {jnp.shape(old)}, expected {jnp.shape(new)}{hint}")
    return jnp.asarray(old, jnp.result_type(new))


def _where(path: str, name: str) -> str:
    return f"{path}[{name}]" if name.isdigit() else f"{path}.{name}"


def _describe(value: Any) -> str:
    return "None" if value is None else f"a {type(value).__name__}"


def _error(path: str, what: str) -> Exception:
    return _checks.error(
        ValueError, f"the field {path} {what}; rebuild the transform as it was saved."
    )
