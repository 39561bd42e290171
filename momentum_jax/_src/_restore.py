"""Carry a saved optimizer state into a transform's current state: every field, or an error."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from momentum_jax._src._layout import BUFFER_FIELDS, PackedState, _group
from momentum_jax._src._validation import is_traced

_NAME = "momentum_jax.restore_state"


def restore_state(
    old_state: Any, transform: optax.GradientTransformation, params: optax.Params
) -> optax.OptState:
    """Carry a saved state into ``transform.init(params)``: every field, or an error naming it.

    The saved state may be in the other layout (written with
    ``layout="packed"`` and resumed with ``layout="per_leaf"``, or the other
    way round), a checkpoint restored without a target (nested dicts and
    lists), or a momentum_jax 0.1.0 state (whose :func:`momentum_jax.qhm` and
    :func:`momentum_jax.aggmo` states were a bare stage state, not a chain).
    Every field of every stage is carried, momentum_jax's and optax's alike
    (``optax.inject_hyperparams``, ``MultiSteps``, ``apply_if_finite``,
    ``masked``, ``partition``...), matched by its name: each stage keeps its
    own count. Values take the dtypes of ``transform.init(params)`` and its
    placement (each buffer sharded like its param). A field the new state has
    and the old one lacks, a field that would be dropped, or a shape that
    differs raises a ``ValueError`` naming the field; the one exception is an
    ``inject_hyperparams`` hyperparameter that the old state did not inject
    (it was static then, like ``seed`` before 0.4.0), which takes the value
    ``transform`` is built with.

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
    template = _unpacked(fresh)
    param_leaves = dict(_named_leaves(params))
    carried = _carry(_from_0_1_0(old_state, template), template, param_leaves, "state")
    repacked = jax.tree.map(_repack, fresh, carried, is_leaf=_is_packed)
    return jax.tree.map(_place_like, repacked, fresh)


def _is_packed(x: Any) -> bool:
    return isinstance(x, PackedState)


def _unpack(state: PackedState) -> Any:
    """The block state with params-shaped buffers (read through :class:`PackedState`)."""
    fields = state.inner._fields
    return state.inner._replace(**{f: getattr(state, f) for f in BUFFER_FIELDS if f in fields})


def _unpacked(tree: Any) -> Any:
    return jax.tree.map(lambda x: _unpack(x) if _is_packed(x) else x, tree, is_leaf=_is_packed)


def _repack(fresh: Any, carried: Any) -> Any:
    if not _is_packed(fresh):
        return carried
    layout = fresh.layout

    def pack(buffer: Any) -> Any:
        return layout.pack(_NAME, buffer, "buffer", check_dtype=False)

    changes = {}
    for field in set(BUFFER_FIELDS) & set(carried._fields):
        value = getattr(carried, field)
        changes[field] = tuple(map(pack, value)) if field == "buffers" else pack(value)
    return PackedState(carried._replace(**changes), layout)


def _place_like(value: Any, fresh: Any) -> Any:
    # Each buffer where init puts it (sharded like its param), never gathered.
    if isinstance(fresh, jax.Array) and not is_traced(fresh) and not is_traced(value):
        return jax.device_put(value, fresh.sharding)
    return value


def _is_value(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic | int | float | complex)


def _children(node: Any) -> dict[str, Any] | None:
    """A pytree node's children by name, in tree order (``None`` for a leaf).

    Names are those a checkpoint read without a target keeps: a named
    tuple's fields, a dict's keys, a sequence's indices, a pytree node's keys.
    """
    pairs, _ = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)
    if len(pairs) == 1 and pairs[0][0] == ():
        return None
    return {_key_name(path[0]): child for path, child in pairs}


def _key_name(key: Any) -> str:
    for attribute in ("name", "key", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _named_leaves(tree: Any) -> list[tuple[tuple[str, ...], Any]]:
    pairs = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(tuple(_key_name(key) for key in path), leaf) for path, leaf in pairs]


def _where(path: str, name: str) -> str:
    return f"{path}[{name}]" if name.isdigit() else f"{path}.{name}"


def _carry(old: Any, new: Any, params: dict[tuple[str, ...], Any], path: str) -> Any:
    """``old``'s values in ``new``'s structure, dtypes cast to ``new``'s."""
    if isinstance(old, PackedState):
        old = _unpack(old)
    elif isinstance(old, Mapping) and "inner" in old and set(old) <= {"inner", "layout"}:
        old = _unpack_raw(old["inner"], new, params, path)
    new_children = _children(new)
    if new_children is None:
        return _carry_leaf(old, new, path)
    old_children = _children(old)
    if old_children is None:
        raise _error(
            path, f"of the old state is {_describe(old)}, but the new state has fields there"
        )
    lost = [name for name in old_children if name not in new_children]
    lost = [name for name in lost if jax.tree.leaves(old_children[name])]
    if lost == ["count"] and not new_children:
        # A stage that now keeps no state at all computes the same without its
        # count (0.1.0 counted steps in the stage of a constant learning rate).
        lost = []
    if lost:
        raise _error(
            _where(path, lost[0]),
            "of the old state has no place in the new state: restoring would drop it",
        )
    carried = {}
    for name, child in new_children.items():
        if name not in old_children:
            # optax.inject_hyperparams keeps its arguments in ``hyperparams``: one
            # that was static when the old state was saved (as 0.3.0's absent
            # ``seed``) takes the value the transform is built with, as init gives.
            if jax.tree.leaves(child) and not path.endswith(".hyperparams"):
                raise _error(_where(path, name), "is missing from the old state")
            carried[name] = child
            continue
        carried[name] = _carry(old_children[name], child, params, _where(path, name))
    _, treedef = jax.tree_util.tree_flatten(new, is_leaf=lambda x: x is not new)
    return jax.tree_util.tree_unflatten(treedef, list(carried.values()))


def _carry_leaf(old: Any, new: Any, path: str) -> Any:
    if not _is_value(old):
        raise _error(
            path, f"of the old state is {_describe(old)}, but the new state holds an array"
        )
    if jnp.shape(old) != jnp.shape(new):
        raise _error(
            path,
            f"of the old state has shape {jnp.shape(old)}, but the new state's has shape "
            f"{jnp.shape(new)}",
        )
    return jnp.asarray(old, jnp.result_type(new))


def _unpack_raw(inner: Any, new: Any, params: dict[tuple[str, ...], Any], path: str) -> Any:
    """A packed block state read without a target, with params-shaped buffers.

    Which arrays were packed is read from the state itself: a trainable
    param has its own buffer in ``rest``, or else lies in its dtype's pack,
    in tree order.
    """
    old = _children(inner)
    if old is None or not hasattr(new, "_fields"):
        raise _error(
            path, "of the old state is packed, but the new state has no buffer block there"
        )
    unpacked = dict(old)
    for field in set(BUFFER_FIELDS) & set(new._fields) & set(old):
        template = getattr(new, field)
        if field == "buffers":
            pairs = list((_children(old[field]) or {}).values())
            unpacked[field] = [
                _unpack_pair(pair, t, params, _where(_where(path, field), str(i)))
                for i, (pair, t) in enumerate(zip(pairs, template, strict=False))
            ]
        else:
            unpacked[field] = _unpack_pair(old[field], template, params, _where(path, field))
    return unpacked


def _unpack_pair(pair: Any, template: Any, params: dict[tuple[str, ...], Any], path: str) -> Any:
    parts = list((_children(pair) or {}).values())
    if len(parts) != 2:
        raise _error(path, "of the old state is not a packed buffer (rest, packs)")
    rest = dict(_named_leaves(parts[0]))
    packs = {name: jnp.asarray(flat) for name, flat in (_children(parts[1]) or {}).items()}
    used = dict.fromkeys(packs, 0)
    leaves, treedef = jax.tree.flatten(_keep_none(template))
    out: list[Any] = []
    for (name, _), leaf in zip(_named_leaves(_keep_none(template)), leaves, strict=True):
        if isinstance(leaf, _Empty):
            out.append(None)
            continue
        if name in rest:
            out.append(rest[name])
            continue
        group = _group(params.get(name, leaf))
        size = math.prod(jnp.shape(leaf))
        start = used.get(group)
        if start is None or start + size > packs[group].shape[-1]:
            raise _packs_error(path, packs)
        out.append(packs[group][start : start + size].reshape(jnp.shape(leaf)))
        used[group] = start + size
    if any(used[name] != flat.shape[-1] for name, flat in packs.items()):
        raise _packs_error(path, packs)
    return jax.tree.unflatten(treedef, [None if isinstance(x, _Empty) else x for x in out])


class _Empty:
    """Stands for a ``None`` buffer, so that it keeps its place in the names."""


def _keep_none(tree: Any) -> Any:
    return jax.tree.map(lambda x: _Empty() if x is None else x, tree, is_leaf=lambda x: x is None)


def _from_0_1_0(old: Any, template: Any) -> Any:
    """0.1.0's qhm and aggmo states were a bare stage state; today's are chains.

    The chain's other stages (``optax.scale_by_learning_rate``) hold only a
    count, which continues the stage's count.
    """
    children = _children(old)
    if (
        not isinstance(template, tuple)
        or hasattr(template, "_fields")
        or (isinstance(old, list | tuple) and not hasattr(old, "_fields"))
        or children is None
        or set(children) != set(getattr(template[0], "_fields", ()))
    ):
        return old
    rest = []
    for stage in template[1:]:
        fields = getattr(stage, "_fields", None)
        if fields is None or set(fields) - {"count"}:
            return old
        rest.append({"count": children["count"]} if fields else {})
    return [old, *rest]


def _describe(value: Any) -> str:
    if value is None:
        return "None"
    if _is_value(value):
        return f"an array of shape {jnp.shape(value)}"
    return f"a {type(value).__name__}"


def _error(path: str, what: str) -> ValueError:
    return ValueError(
        f"{_NAME}: the field {path} {what}. Rebuild the transform with the arguments the old "
        "state was made with, and pass the params it was made for."
    )


def _packs_error(path: str, packs: dict[str, Any]) -> ValueError:
    sizes = {name: int(flat.shape[-1]) for name, flat in packs.items()}
    return _error(
        path, f"of the old state packs {sizes} elements per dtype, which the params do not fill"
    )
