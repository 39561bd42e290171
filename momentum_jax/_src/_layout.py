"""The packed state layout, opt-in, and :func:`restore_state`, which moves states between layouts.

The packed layout: the buffers of all small arrays in one flat array per dtype.

On a GPU every array of a per-array update is its own kernel launch, so a
model with many small arrays (biases, norms, small kernels) spends much of
its optimizer step launching kernels. :func:`packed` wraps an elementwise
buffer transform: its state keeps the buffers of small arrays in one flat
array per dtype, each update concatenates their gradients, runs the wrapped
transform once on the flat arrays, and slices the outputs back. Elementwise
arithmetic gives the same numbers in both layouts.

The layout is a pure function of the params (shapes, dtypes and, for arrays
split over explicit mesh axes, their sharding types), never of the backend:
:class:`Layout` is a pytree node with no leaves, static under ``jit``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from momentum_jax._src import _checks, _int8
from momentum_jax._src._checks import public

#: Arrays with at most this many elements are packed.
MAX_PACKED_SIZE = 2**16
# Uncommitted leaves with at most this many elements (counters, hyperparameters, keys):
# restore_state copies them through the host, which leaves them uncommitted.
_SMALL = 1024

#: The fields of momentum_jax's states that hold params-shaped buffers.
BUFFER_FIELDS = ("velocity", "buffer", "buffers")


class Slot(NamedTuple):
    """Where one packed array lives: its dtype group, offset in that group's array, and shape."""

    group: str
    offset: int
    shape: tuple[int, ...]


class Layout(NamedTuple):
    """Which arrays are packed, and where.

    ``slots`` has one entry per leaf of the params (``None`` leaves included,
    in ``jax.tree.flatten(params, is_leaf=lambda x: x is None)`` order):
    ``None`` for an array that keeps its own buffer, else a :class:`Slot`.
    ``groups`` gives each packed dtype's total size, in name order.
    """

    slots: tuple[Slot | None, ...]
    groups: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, params: Any, own: Any = None) -> Layout:
        """The layout packing each small floating-point array of ``params``; with ``own`` (leaf
        indices), each floating-point array but those, as a checkpoint's was written."""
        if type(params).__name__ == "_ParamsPlaceholder":
            raise _checks.error(
                TypeError, "tree_map_params cannot map a packed state; use layout='per_leaf'."
            )
        sizes: dict[str, int] = {}
        slots: list[Slot | None] = []
        for index, leaf in enumerate(jax.tree.leaves(params, is_leaf=_checks.is_none)):
            if not (_packs(leaf) if own is None else index not in own and _checks.trains(leaf)):
                slots.append(None)
                continue
            group, shape = _group(leaf), tuple(int(d) for d in jnp.shape(leaf))
            slots.append(Slot(group, sizes.get(group, 0), shape))
            sizes[group] = sizes.get(group, 0) + math.prod(shape)
        return cls(tuple(slots), tuple(sorted(sizes.items())))

    def pack(self, tree: Any, what: str = "buffer") -> tuple[Any, dict[str, Any]]:
        """``tree`` as ``(rest, packs)``, with ``None`` in ``rest`` where an array is packed.

        A gradient or param must have its param's dtype (``what`` names it in
        the error); buffers may have any. Shape-only leaves pack into a
        ``jax.ShapeDtypeStruct``.
        """
        leaves, treedef = jax.tree.flatten(tree, is_leaf=_checks.is_none)
        pieces: dict[str, list[Any]] = {name: [] for name, _ in self.groups}
        rest: list[Any] = []
        for index, (leaf, slot) in enumerate(zip(leaves, self.slots, strict=True)):
            rest.append(leaf if slot is None else None)
            if slot is None:
                continue
            if what != "buffer" and _group(leaf) != slot.group:
                at, dtype = _checks.path(tree, index), _group(leaf)
                fix = "cast it, or use layout='per_leaf'"
                raise _checks.error(
                    TypeError, f"the {what} at {at} is {dtype}, its param {slot.group}; {fix}."
                )
            pieces[slot.group].append(leaf)
        packs = {name: _concatenate(parts) for name, parts in pieces.items()}
        return jax.tree.unflatten(treedef, rest), packs

    def unpack(self, rest: Any, packs: Any, shapes_only: bool = False) -> Any:
        """The inverse of :meth:`pack` (leading axes of the packs, as under ``vmap``, are kept)."""

        def piece(slot: Slot) -> Any:
            flat = packs[slot.group]
            if shapes_only:
                return jax.ShapeDtypeStruct(slot.shape, flat.dtype)  # type: ignore[no-untyped-call]
            size = math.prod(slot.shape)
            if size != flat.shape[-1]:
                flat = lax.slice_in_dim(flat, slot.offset, slot.offset + size, axis=flat.ndim - 1)
            return flat.reshape((*flat.shape[:-1], *slot.shape))

        leaves, treedef = jax.tree.flatten(rest, is_leaf=_checks.is_none)
        return jax.tree.unflatten(
            treedef,
            [x if s is None else piece(s) for x, s in zip(leaves, self.slots, strict=True)],
        )


jax.tree_util.register_pytree_node(Layout, lambda layout: ((), layout), lambda layout, _: layout)


def _concatenate(parts: list[Any]) -> Any:
    if any(isinstance(p, jax.ShapeDtypeStruct) for p in parts):
        size = sum(math.prod(p.shape) for p in parts)
        return jax.ShapeDtypeStruct((size,), parts[0].dtype)  # type: ignore[no-untyped-call]
    flat = [lax.reshape(jnp.asarray(p), (math.prod(jnp.shape(p)),)) for p in parts]
    return flat[0] if len(flat) == 1 else lax.concatenate(flat, 0)


def _group(leaf: Any) -> str:
    """The dtype the arithmetic sees ``leaf`` in (float64 is float32 without x64)."""
    return np.dtype(jax.dtypes.canonicalize_dtype(jnp.result_type(leaf))).name


def _packs(leaf: Any) -> bool:
    # An array split over explicit mesh axes keeps its own buffer: packing it would
    # gather it every step. (Auto axes are invisible in the type, eagerly and under jit,
    # so the layout is the same for init and jax.jit(init).)
    if not _checks.trains(leaf) or math.prod(jnp.shape(leaf)) > MAX_PACKED_SIZE:
        return False
    typeof = getattr(jax, "typeof", None)  # JAX 0.4 has no explicit axes
    spec = getattr(getattr(typeof(leaf), "sharding", None), "spec", None) if typeof else None
    return not any(axis is not None for axis in spec or ())


class PackedState(NamedTuple):
    """State of a buffer transform built with ``layout="packed"``.

    Attributes:
      inner: the transform's own state (:class:`momentum_jax.MomentumState`,
        :class:`momentum_jax.QHMState` or :class:`momentum_jax.AggMoState`)
        with each buffer tree stored as ``(rest, packs)``: ``rest`` is shaped
        like the params with ``None`` where an array is packed, ``packs`` a
        dict from dtype name (``"float32"``) to one flat array holding the
        buffers of all packed arrays of that dtype.
      layout: the static :class:`Layout`.

    The inner state's fields read through: ``state.count`` is its count and
    ``state.velocity`` (``buffer``, ``buffers``) its buffers sliced back into
    params-shaped trees, so code that reads a state works in both layouts.
    """

    inner: Any
    layout: Layout

    def __getattr__(self, name: str) -> Any:
        if name not in getattr(self.inner, "_fields", ()):
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        return getattr(self.unpacked(), name)

    @property
    def count(self) -> Any:
        """The inner state's update count (``tuple.count`` would shadow it)."""
        return self.inner.count

    def unpacked(self) -> Any:
        """The inner state with params-shaped buffers."""
        return _map_buffers(self.inner, lambda tree: self.layout.unpack(*tree))


def _map_buffers(state: Any, fn: Any) -> Any:
    """``state`` with ``fn`` applied to each of its buffer trees."""
    changes = {f: getattr(state, f) for f in BUFFER_FIELDS if f in state._fields}
    return state._replace(
        **{f: tuple(map(fn, v)) if f == "buffers" else fn(v) for f, v in changes.items()}
    )


def repack(inner: Any, layout: Layout) -> PackedState:
    """A :class:`PackedState` of ``inner``, a state with params-shaped buffers."""
    return PackedState(_map_buffers(inner, layout.pack), layout)


def packed(block: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``block``, an elementwise buffer transform, with the buffers of small arrays packed."""

    def init_fn(params: Any) -> Any:
        if any(map(jnp.iscomplexobj, jax.tree.leaves(params))):  # errors name the param's path
            jax.eval_shape(block.init, params)
        layout = Layout.of(params)
        return PackedState(block.init(layout.pack(params, "param")), layout)

    def update_fn(updates: Any, state: Any, params: Any = None, **extra_args: Any) -> Any:
        _checks.check_state(state, PackedState, updates)
        layout, inner = state.layout, state.inner
        first = inner[1][0] if inner._fields[1] == "buffers" else inner[1]
        reference = layout.unpack(*first, shapes_only=True)
        _checks.check_tree(updates, reference)
        if params is not None:
            _checks.check_tree(params, reference, "param")
            params = layout.pack(params, "param")
        out, inner = block.update(layout.pack(updates, "gradient"), state.inner, params)
        return layout.unpack(*out), PackedState(inner, layout)  # type: ignore[misc]

    return optax.GradientTransformationExtraArgs(_checks.named(init_fn), _checks.named(update_fn))


def with_layout(block: optax.GradientTransformationExtraArgs, layout: str) -> Any:
    return packed(block) if layout == "packed" else block


# --- moving a saved state into a transform's layout ----------------------------


@public("momentum_jax.restore_state")
def restore_state(
    old_state: Any, tx: optax.GradientTransformation, params: optax.Params
) -> optax.OptState:
    """Carry a saved state into ``tx.init(params)``: every field, or an error naming it.

    The saved state may be in the other layout (written with
    ``layout="packed"`` and resumed with ``layout="per_leaf"``, or the other
    way round), or a checkpoint restored without a target (nested dicts and
    lists). Fields are matched by their key paths in the new state: a packed
    block is recognised where the new state has a block, never by a name, and
    its packs are sliced by the params' arrays: a layout saved with it (flax
    serialization keeps one, orbax does not) must be theirs, so pass the
    params it was written for.
    Every field of every stage is carried, momentum_jax's and optax's alike
    (``optax.inject_hyperparams``, ``MultiSteps``, ``apply_if_finite``,
    ``masked``, ``partition``...), matched by its name: each stage keeps its
    own count. Values take the dtypes (weak types included) of
    ``tx.init(params)`` and its placement: each buffer sharded like its
    param, unless it is split over the same devices already (a ZeRO-1
    velocity keeps its sharding), and counters, hyperparameters and keys left
    uncommitted where a fresh init leaves them (copied through the host). A
    field the new state has and the old one lacks, a field that would be
    dropped, or a shape that differs raises a ``ValueError`` naming the
    field; the one exception is an ``inject_hyperparams`` hyperparameter that
    the old state did not inject (it was static then), which takes the value
    ``tx`` is built with.

    Under ``jax.vmap`` (an ensemble's stacked states) map it over the members:
    ``jax.vmap(lambda s, p: restore_state(s, tx, p))(states, params)``.

    Args:
      old_state: the saved state, of the same optimizer for the same params.
      tx: the optimizer, rebuilt with the same arguments (its layout may
        differ).
      params: the params the state belongs to (only their structure, shapes,
        dtypes and shardings are used).

    Returns:
      A state for ``tx`` that continues the saved run step for step.

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
    if not callable(getattr(tx, "init", None)):
        raise _checks.error(
            TypeError,
            f"tx must be an optax transform, got {_describe(tx)}; "
            "call restore_state(old_state, tx, params).",
        )
    fresh = tx.init(params)
    try:
        carried = _carry(old_state, fresh, "state", params)
    except ValueError:
        counted = jax.tree.leaves(params, is_leaf=lambda x: "count" in getattr(x, "_fields", ()))
        if any(hasattr(x, "_fields") for x in counted):  # a state passed as the params
            fix = "call restore_state(old_state, tx, params)"
            raise _checks.error(TypeError, f"params holds an optimizer state; {fix}.") from None
        raise
    return jax.tree.map(_place_like, carried, fresh)


def _place_like(value: Any, fresh: Any) -> Any:
    if not isinstance(fresh, jax.Array) or _checks.is_traced(fresh) or _checks.is_traced(value):
        return value
    if getattr(fresh, "_committed", True):  # a buffer: where it was if split here (ZeRO-1),
        if _split_like(value, fresh):  # else sharded like its param
            return value
        return jax.device_put(value, fresh.sharding)
    # A counter, hyperparameter or key, or a value on other devices: uncommitted, as in init.
    if jnp.size(fresh) <= _SMALL or getattr(value, "sharding", fresh.sharding) != fresh.sharding:
        return _through_host(value, fresh)
    return jnp.asarray(value, fresh.dtype)


def _split_like(value: Any, fresh: jax.Array) -> bool:
    """``value`` is split over ``fresh``'s devices, with its shape and dtype: a state's own
    layout (ZeRO-1's velocity over the data axis), kept."""
    if not isinstance(value, jax.Array) or (value.shape, value.dtype) != (fresh.shape, fresh.dtype):
        return False
    sharding = value.sharding
    return sharding.device_set == fresh.sharding.device_set and not sharding.is_fully_replicated


def _on_this_host(x: Any) -> bool:
    return isinstance(x, jax.Array) and not _checks.is_traced(x) and x.is_fully_addressable


def _through_host(value: Any, fresh: Any) -> Any:
    """``value`` typed as ``fresh`` (weakly where it is) and uncommitted: a committed array's
    device copy would stay committed."""
    if not isinstance(fresh.dtype, np.dtype):  # a typed PRNG key
        data = jnp.asarray(np.asarray(jax.random.key_data(value)))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(fresh))
    host = np.asarray(value, fresh.dtype)
    weak = getattr(fresh, "weak_type", False) and host.ndim == 0
    return jnp.asarray(host.item() if weak else host)


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
    old = _int8.converted(old, new)
    raw = _packed_raw(old)
    if raw is not None and (isinstance(new, PackedState) or _is_block(new)):
        # A packed block read without a target: read in the layout it was written in (with
        # float buffers, the only ones a packed block has), then carried as an unpacked one.
        block = _int8.dequantize(new.unpacked() if isinstance(new, PackedState) else new)
        layout = _written_layout(raw, block, params)
        saved = (_children(old) or {}).get("layout")  # kept by flax serialization, not orbax
        if saved is not None and _nested(saved) != _nested(layout):
            fix = "restore it with the params it was written for"
            raise _error(path, "was packed for other params (shapes, names or dtypes)", fix)
        shape_of = jax.ShapeDtypeStruct  # the template's structure and shapes, not its values
        shapes = jax.tree.map(lambda x: shape_of(x.shape, x.dtype), block)  # type: ignore[no-untyped-call]
        # Sliced on the host: the packs may have been written on other devices than these.
        raw = jax.tree.map(lambda x: np.asarray(x) if _on_this_host(x) else x, raw)
        inner = _carry(raw, repack(shapes, layout).inner, f"{path}.inner", params)
        return _carry(PackedState(inner, layout).unpacked(), new, path, params)
    if isinstance(new, PackedState):
        return repack(_carry(old, new.unpacked(), path, params), new.layout)
    new_children = _children(new)
    if new_children is None:
        return _carry_leaf(old, new, path)
    old_children = _children(old)
    if old_children is None:
        raise _error(path, f"is {_describe(old)} in the old state, but has fields in the new one")
    if ("micro_step" in old_children) != ("micro_step" in new_children):  # AccumulationState
        fix = "rebuild the transform with the saved value"
        raise _error(path, "was saved with another gradient_accumulation_steps", fix)
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
    """The layout of a raw packed block: of the params at its buffers' key paths (all of them,
    or those a wrapper such as ``optax.masked`` passed it), but for the arrays that its
    ``rest`` holds, which were not packed."""
    field = block._fields[1]
    first = getattr(block, field)[0] if field == "buffers" else getattr(block, field)
    flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=_checks.is_none)[0]
    known = {jax.tree_util.keystr(keys): param for keys, param in flat}
    paths, treedef = jax.tree_util.tree_flatten_with_path(first, is_leaf=_checks.is_none)
    # Packs are grouped by the params' dtypes, not the buffers'.
    template = jax.tree.unflatten(
        treedef, [known.get(jax.tree_util.keystr(k), b) for k, b in paths]
    )
    rest = _lookup(raw, (field, "0", "0") if field == "buffers" else (field, "0"))
    own = [i for i, (keys, _) in enumerate(paths) if _is_value(_lookup(rest, map(_name, keys)))]
    return Layout.of(template, own)


def _nested(x: Any) -> Any:
    """A layout, or one read without a target, as nested dicts of Python values."""
    if isinstance(x, tuple) and hasattr(x, "_asdict"):
        x = x._asdict()
    if isinstance(x, Mapping | list | tuple):
        items = x.items() if isinstance(x, Mapping) else enumerate(x)
        return {str(k): _nested(v) for k, v in items}
    return None if x is None else np.asarray(x).item()


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
        fix = "a stacked state? jax.vmap restore_state over it" if stacked else None
        raise _error(path, f"has shape {jnp.shape(old)}, expected {jnp.shape(new)}", fix)
    return _place_like(jnp.asarray(old, jnp.result_type(new)), new)  # placed before any packing


def _where(path: str, name: str) -> str:
    return f"{path}[{name}]" if name.isdigit() else f"{path}.{name}"


def _describe(value: Any) -> str:
    name = type(value).__name__
    return "None" if value is None else f"a{'n' * (name[0] in 'AEIOUaeiou')} {name}"


def _error(path: str, what: str, fix: str | None = None) -> Exception:
    fix = fix or "rebuild the transform as it was saved"
    return _checks.error(ValueError, f"the field {path} {what}; {fix}.")
