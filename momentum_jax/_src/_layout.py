"""The packed state layout, opt-in: the buffers of all small arrays in one flat array per dtype.

On a GPU every array of a per-array update is its own kernel launch, so a
model with hundreds of small arrays (biases, norms, small kernels) spends much
of its optimizer step launching kernels. With ``layout="packed"`` a buffer
block (:func:`momentum_jax.momentum`, :func:`momentum_jax.scale_by_momentum`,
:func:`momentum_jax.scale_by_qhm`, :func:`momentum_jax.scale_by_aggmo`, and
so every optimizer built from them) keeps the buffers of its small arrays in
one flat array per dtype, concatenates their gradients, runs its arithmetic
once, and slices the outputs back. Every update of these blocks is
elementwise, so both layouts compute the same numbers.

The layout is a pure function of the params (their shapes, dtypes and, for
explicitly sharded arrays, sharding types), never of the backend or the
environment. It is static: :class:`Layout` is a pytree node with no leaves.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

#: Arrays with at most this many elements are packed.
MAX_PACKED_SIZE = 2**16

LAYOUTS = ("per_leaf", "packed")


def _is_none(x: Any) -> bool:
    return x is None


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

    It holds only Python values: JAX sees a node without leaves (part of the
    tree structure, static under ``jit``); pickle and Flax serialization see
    a named tuple.
    """

    slots: tuple[Slot | None, ...]
    groups: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, fn_name: str, params: Any) -> Layout:
        """The layout packing each floating-point array of ``params`` with few elements."""
        if type(params).__name__ == "_ParamsPlaceholder":
            raise TypeError(
                f"{fn_name}: optax.tree_utils.tree_map_params cannot map a state in the "
                "packed layout: its small buffers are one flat array, not shaped like the "
                "params. Read params-shaped buffers with state.velocity (buffer, buffers), "
                "or build the transform with layout='per_leaf'."
            )
        sizes: dict[str, int] = {}
        slots: list[Slot | None] = []
        for leaf in jax.tree.leaves(params, is_leaf=_is_none):
            if leaf is None or not _packs(leaf):
                slots.append(None)
                continue
            group = _group(leaf)
            shape = tuple(int(d) for d in jnp.shape(leaf))
            slots.append(Slot(group, sizes.get(group, 0), shape))
            sizes[group] = sizes.get(group, 0) + math.prod(shape)
        return cls(tuple(slots), tuple(sorted(sizes.items())))

    def __repr__(self) -> str:
        packed = sum(slot is not None for slot in self.slots)
        sizes = ", ".join(f"{name}: {size}" for name, size in self.groups)
        return f"Layout({packed} of {len(self.slots)} arrays packed into {{{sizes}}})"

    def pack(
        self, fn_name: str, tree: Any, what: str, *, check_dtype: bool = True
    ) -> tuple[Any, dict[str, jax.Array]]:
        """``tree`` as ``(rest, packs)``: ``None`` in ``rest`` where an array is packed.

        Leaves pair with slots by position, as ``jax.tree.map`` would pair them
        (Flax NNX inits with ``Param`` variables and updates with plain arrays).
        Unless ``check_dtype`` is false (buffers, which may have another
        dtype), each packed leaf must have its param's dtype.
        """
        leaves, treedef = jax.tree.flatten(tree, is_leaf=_is_none)
        pieces: dict[str, list[jax.Array]] = {name: [] for name, _ in self.groups}
        rest: list[Any] = []
        for index, (leaf, slot) in enumerate(zip(leaves, self.slots, strict=True)):
            if slot is None:
                rest.append(leaf)
                continue
            rest.append(None)
            leaf = jnp.asarray(leaf)
            if check_dtype and _group(leaf) != slot.group:
                paths = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)[0]
                path = jax.tree_util.keystr(paths[index][0]) or "<root>"
                raise TypeError(
                    f"{fn_name}: the {what} at {path} has dtype {leaf.dtype}, but its param "
                    f"is {slot.group}. In the packed layout each {what} must have its "
                    "param's dtype; cast it, or build the transform with layout='per_leaf'."
                )
            pieces[slot.group].append(lax.reshape(leaf, (math.prod(slot.shape),)))
        packs = {
            name: parts[0] if len(parts) == 1 else lax.concatenate(parts, 0)
            for name, parts in pieces.items()
        }
        return jax.tree.unflatten(treedef, rest), packs

    def unpack(self, rest: Any, packs: Any) -> Any:
        """The inverse of :meth:`pack`: ``rest`` with each packed array sliced back in.

        Leading axes of the flat arrays (those of ``jax.vmap(init)``) are kept.
        """

        def piece(slot: Slot) -> jax.Array:
            flat = packs[slot.group]
            size = math.prod(slot.shape)
            if size != flat.shape[-1]:
                flat = lax.slice_in_dim(flat, slot.offset, slot.offset + size, axis=flat.ndim - 1)
            return flat.reshape((*flat.shape[:-1], *slot.shape))

        return self._fill(rest, piece)

    def abstract(self, rest: Any, packs: Any) -> Any:
        """``rest`` with a ``ShapeDtypeStruct`` for each packed array (for the checks)."""
        return self._fill(
            rest,
            lambda slot: jax.ShapeDtypeStruct(slot.shape, packs[slot.group].dtype),  # type: ignore[no-untyped-call]
        )

    def _fill(self, rest: Any, piece: Any) -> Any:
        leaves, treedef = jax.tree.flatten(rest, is_leaf=_is_none)
        filled = [
            leaf if slot is None else piece(slot)
            for leaf, slot in zip(leaves, self.slots, strict=True)
        ]
        return jax.tree.unflatten(treedef, filled)


jax.tree_util.register_pytree_node(Layout, lambda layout: ((), layout), lambda layout, _: layout)


def _group(leaf: Any) -> str:
    """The name of the dtype the arithmetic sees ``leaf`` in (float64 is float32 without x64)."""
    return np.dtype(jnp.result_type(leaf)).name


def _packs(leaf: Any) -> bool:
    return (
        bool(jnp.issubdtype(jnp.result_type(leaf), jnp.inexact))
        and math.prod(jnp.shape(leaf)) <= MAX_PACKED_SIZE
        and not _explicitly_sharded(leaf)
    )


def _explicitly_sharded(leaf: Any) -> bool:
    """True for an array split over explicit mesh axes (its type says so, traced or not).

    Such an array keeps its own buffer: flattening it into a pack would need
    a resharding (a gather) at every step. Over auto axes the type carries
    no sharding, eagerly or under jit, so that the layout (part of the
    state's structure) is the same for ``init`` and ``jax.jit(init)``.
    """
    typeof = getattr(jax, "typeof", None)  # JAX 0.4 has no explicit axes either
    if typeof is None:
        return False
    spec = getattr(getattr(typeof(leaf), "sharding", None), "spec", None) or ()
    return any(axis is not None for axis in spec)


#: The fields of momentum_jax's states that hold buffers (params-shaped trees).
BUFFER_FIELDS = ("velocity", "buffer", "buffers")


class PackedState(NamedTuple):
    """State of a buffer block built with ``layout="packed"``.

    Attributes:
      inner: the block's own state (:class:`momentum_jax.MomentumState`,
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
        value = getattr(self.inner, name)
        if name == "buffers":
            return tuple(self.layout.unpack(*b) for b in value)
        if name in BUFFER_FIELDS:
            return self.layout.unpack(*value)
        return value

    @property
    def count(self) -> Any:
        """The inner state's update count (``tuple.count`` would shadow it)."""
        return self.inner.count


def check_layout(fn_name: str, layout: Any) -> str:
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(
            f"{fn_name}: layout must be 'per_leaf' (the default, one buffer per param) or "
            f"'packed' (the buffers of small arrays in one flat array), got {layout!r}."
        )
    return layout
