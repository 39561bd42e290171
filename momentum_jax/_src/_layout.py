"""The packed state layout: the buffers of all small arrays in one flat array.

On a GPU every array of a per-array update is its own kernel launch (about
1.5-2 µs each), so a model with hundreds of small arrays (biases, norms,
small kernels) spends most of its optimizer step launching kernels. Packing
concatenates the gradients of the small arrays into one flat array per
dtype, runs the wrapped transform once on it, and slices the updates back.
The wrapped transform's buffers for those arrays then live in that flat
array too: packing only the arithmetic while keeping one buffer per array
gains nothing (measured on an H100; see BENCHMARKS.md).

The update of every momentum_jax transform is elementwise, so both layouts
evaluate the same expression for every element. They can still differ in
the last bit: XLA may contract a multiply and an add into one fused
multiply-add in one layout's loop and not in the other's (jit and eager
execution differ in the same way). ``tests/test_layout.py`` bounds the
difference in ulps. Large arrays keep their own buffer (and their sharding);
the packed buffers are computed from the concatenated small params.

On CPU the concatenation costs more than it saves: XLA:CPU compiles a
concatenate of 1000 operands slowly (``benchmarks/xla_cpu_probes.py
layout``), and its per-array loops are cheap. ``layout="auto"`` therefore
packs on GPU only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from momentum_jax._src._tree import _as_array, _is_none, _keystr

#: Arrays with at most this many elements are packed by default.
DEFAULT_MAX_PACKED_SIZE = 2**16

LAYOUTS = ("auto", "per_leaf", "packed")


#: Environment variable that decides what ``layout="auto"`` means.
LAYOUT_ENV = "MOMENTUM_JAX_LAYOUT"


def auto_packs() -> bool:
    """Whether ``layout="auto"`` packs: on a GPU, unless ``MOMENTUM_JAX_LAYOUT`` says otherwise.

    ``MOMENTUM_JAX_LAYOUT=per_leaf`` (or ``packed``) makes every ``"auto"``
    transform of the process use that layout, e.g. to keep checkpoints
    identical between GPU and CPU machines without changing code.
    """
    choice = os.environ.get(LAYOUT_ENV, "auto") or "auto"
    if choice not in LAYOUTS:
        raise ValueError(
            f"{LAYOUT_ENV}={choice!r}: it must be one of {', '.join(repr(x) for x in LAYOUTS)}."
        )
    if choice != "auto":
        return choice == "packed"
    return jax.default_backend() == "gpu"


class Slot(NamedTuple):
    """Where one packed array lives: its group, offset and shape."""

    group: str
    offset: int
    shape: tuple[int, ...]


@jax.tree_util.register_pytree_node_class
class Layout:
    """Which arrays are packed, and where: static, so a pytree node with no leaves.

    ``slots`` has one entry per leaf of the params (``None`` leaves included,
    in ``jax.tree.flatten(params, is_leaf=lambda x: x is None)`` order):
    ``None`` for an array that keeps its own buffer, else a named tuple
    ``(group, offset, shape)``: its dtype's name, where it starts in that
    dtype's flat array, and its shape.
    ``groups`` gives each packed dtype's total size, in name order, and
    ``treedef`` the params' tree structure (``None`` leaves counted as leaves).
    """

    __slots__ = ("_hash", "_key", "groups", "max_size", "slots", "treedef")

    def __init__(
        self,
        slots: tuple[Any, ...],
        groups: tuple[tuple[str, int], ...],
        max_size: int,
        treedef: Any,
    ) -> None:
        self.slots = slots
        self.groups = groups
        self.max_size = max_size
        self.treedef = treedef
        # The structure enters equality through its text: a treedef's own hash
        # needs every node's metadata to be hashable, which not all are.
        self._key = (slots, groups, max_size, str(treedef))
        self._hash = hash(self._key)

    @classmethod
    def of(cls, params: Any, max_size: int) -> Layout:
        """The layout packing each floating-point array of ``params`` (``<= max_size`` elements)."""
        leaves, treedef = jax.tree.flatten(params, is_leaf=_is_none)
        sizes: dict[str, int] = {}
        slots: list[Slot | None] = []
        for leaf in leaves:
            if leaf is None or not _packs(leaf, max_size):
                slots.append(None)
                continue
            group = np.dtype(jnp.result_type(leaf)).name
            offset = sizes.get(group, 0)
            shape = tuple(int(d) for d in jnp.shape(leaf))
            slots.append(Slot(group, offset, shape))
            sizes[group] = offset + math.prod(shape)
        return cls(tuple(slots), tuple(sorted(sizes.items())), max_size, treedef)

    @property
    def num_packed(self) -> int:
        return sum(slot is not None for slot in self.slots)

    def tree_flatten(self) -> tuple[tuple[()], Layout]:
        return (), self

    @classmethod
    def tree_unflatten(cls, aux: Layout, children: Sequence[Any]) -> Layout:
        del children
        return aux

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (
            isinstance(other, Layout) and self._hash == other._hash and self._key == other._key
        )

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}: {size}" for name, size in self.groups)
        return (
            f"Layout({self.num_packed} of {len(self.slots)} arrays packed "
            f"(<= {self.max_size} elements each) into {{{sizes}}})"
        )

    def pack(
        self, fn_name: str, tree: Any, what: str, *, check_dtype: bool = True
    ) -> tuple[Any, dict[str, jax.Array]]:
        """``tree`` as ``(rest, packs)``: ``None`` per packed array, one flat array per dtype."""
        # The leaves are matched by position, as jax.tree.map would: the
        # structure itself may differ in node types (Flax NNX inits with Param
        # variables and updates with plain arrays). Each packed leaf's shape and
        # dtype are checked below; the others meet the inner transform's checks.
        leaves, treedef = jax.tree.flatten(tree, is_leaf=_is_none)
        if len(leaves) != len(self.slots):
            raise ValueError(
                f"{fn_name}: the {what} tree does not match the optimizer state: it has "
                f"{len(leaves)} leaves, but the state was packed for params with "
                f"{len(self.slots)} ({self.treedef}). Call init with params shaped like "
                f"the {what}s."
            )
        pieces: dict[str, list[jax.Array]] = {name: [] for name, _ in self.groups}
        rest: list[Any] = []
        for index, (leaf, slot) in enumerate(zip(leaves, self.slots, strict=True)):
            if slot is None:
                rest.append(leaf)
                continue
            rest.append(None)
            if leaf is None:
                raise self._mismatch(fn_name, tree, index, what, "None", slot)
            leaf = _as_array(leaf)
            wrong_dtype = check_dtype and np.dtype(leaf.dtype).name != slot.group
            if wrong_dtype or tuple(leaf.shape) != slot.shape:
                found = f"a {leaf.dtype} array of shape {tuple(leaf.shape)}"
                raise self._mismatch(fn_name, tree, index, what, found, slot)
            pieces[slot.group].append(lax.reshape(leaf, (math.prod(slot.shape),)))
        packs = {
            name: parts[0] if len(parts) == 1 else lax.concatenate(parts, 0)
            for name, parts in pieces.items()
        }
        return jax.tree.unflatten(treedef, rest), packs

    def unpack(self, packed: tuple[Any, dict[str, Any]], treedef: Any = None) -> Any:
        """The inverse of :meth:`pack`: a tree with the params' structure (or ``treedef``'s)."""
        treedef = self.treedef if treedef is None else treedef
        rest, packs = packed
        rest_leaves = treedef.flatten_up_to(rest)
        out = []
        for leaf, slot in zip(rest_leaves, self.slots, strict=True):
            if slot is None:
                out.append(leaf)
                continue
            flat = packs[slot.group]
            size = math.prod(slot.shape)
            piece = flat
            if size != flat.shape[0]:
                piece = lax.slice(flat, (slot.offset,), (slot.offset + size,))
            out.append(lax.reshape(piece, slot.shape))
        return jax.tree.unflatten(treedef, out)

    def _mismatch(
        self, fn_name: str, tree: Any, index: int, what: str, found: str, slot: Slot
    ) -> Exception:
        paths, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)
        where = _keystr(paths[index][0]) if index < len(paths) else f"leaf {index}"
        return ValueError(
            f"{fn_name}: the {what} at {where} is {found}, but the optimizer state packs a "
            f"{slot.group} array of shape {slot.shape} there. In the packed layout each "
            f"{what} must have its param's shape and dtype (jax.grad's gradients do). Call "
            "init with params like these, or build the transform with layout='per_leaf'."
        )


def _packs(leaf: Any, max_size: int) -> bool:
    dtype = jnp.result_type(leaf)
    return (
        bool(jnp.issubdtype(dtype, jnp.inexact))
        and math.prod(jnp.shape(leaf)) <= max_size
        and not _explicitly_sharded(leaf)
    )


def _explicitly_sharded(leaf: Any) -> bool:
    """True for an array split over explicit mesh axes (its type says so, traced or not).

    Such an array keeps its own buffer: flattening it into a pack would need
    a resharding (a gather) at every step. Over auto axes the type carries
    no sharding, eagerly or under jit, so that the layout (part of the
    state's structure) is the same for ``init`` and ``jax.jit(init)``; XLA
    then lays the pack out as it propagates shardings.
    """
    typeof = getattr(jax, "typeof", None)  # JAX 0.4 has no explicit axes either
    if typeof is None:
        return False
    spec = getattr(getattr(typeof(leaf), "sharding", None), "spec", None) or ()
    return any(axis is not None for axis in spec)


class PackedState(NamedTuple):
    """State of a transform in the packed layout.

    Attributes:
      inner: the wrapped transform's state for the packed params ``(rest,
        packs)``: ``rest`` is the params tree with ``None`` where an array is
        packed, ``packs`` a dict from dtype name (``"float32"``) to one flat
        array holding all packed arrays of that dtype.
      layout: the static :class:`Layout`: which arrays are packed, and where.
        It holds no arrays (it is part of the tree structure).

    Other fields of the inner state read through: ``state.count`` is the
    inner count, and ``state.velocity`` (``buffer``, ``buffers``) is the
    inner buffer sliced back into a params-shaped tree, so code that reads a
    state works in both layouts. ``_replace`` and indexing see only
    ``inner`` and ``layout``.
    """

    inner: Any
    layout: Layout

    def __getattr__(self, name: str) -> Any:
        # Reading a field of the inner state (velocity, buffer, ...) works as on
        # a per-array state: buffers come back params-shaped.
        if name not in getattr(self.inner, "_fields", ()):
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        value = getattr(self.inner, name)
        if name in ("velocity", "buffer"):
            return self.layout.unpack(value)
        if name == "buffers":
            return tuple(self.layout.unpack(b) for b in value)
        return value

    @property
    def count(self) -> Any:
        """The inner state's update count (``tuple.count`` would shadow it)."""
        return self.__getattr__("count")


def check_layout(fn_name: str, layout: Any) -> str:
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(
            f"{fn_name}: layout must be one of {', '.join(repr(x) for x in LAYOUTS)}, "
            f"got {layout!r}."
        )
    return layout


def check_max_size(fn_name: str, max_size: Any) -> int:
    if isinstance(max_size, bool) or not isinstance(max_size, int | np.integer):
        raise TypeError(
            f"{fn_name}: max_size must be a Python int (a number of elements), got "
            f"{type(max_size).__name__} {max_size!r}."
        )
    if max_size < 0:
        raise ValueError(f"{fn_name}: max_size must be >= 0, got {max_size}.")
    return int(max_size)


def pack_small_leaves(
    inner: optax.GradientTransformation,
    *,
    max_size: int = DEFAULT_MAX_PACKED_SIZE,
    layout: str = "packed",
) -> optax.GradientTransformationExtraArgs:
    r"""Run an elementwise transform on one flat array per dtype for all small arrays.

    ``init(params)`` concatenates every floating-point param with at most
    ``max_size`` elements into one flat array per dtype and calls
    ``inner.init`` on ``(rest, packs)``, where ``rest`` is the params tree
    with ``None`` in place of each packed array. ``update`` packs the
    gradients (and the params, when given) the same way, calls
    ``inner.update`` once, and slices the updates back into the params'
    shapes. The state is a :class:`momentum_jax.PackedState`.

    On a GPU this turns hundreds of small per-array kernels into one, and
    the buffers of the small arrays into one flat buffer. Every momentum_jax
    transform does this itself with ``layout="auto"`` (on GPU) or
    ``layout="packed"``; this function is for other transforms, and for
    another ``max_size``.

    ``inner`` must treat each element independently (elementwise, like every
    momentum_jax transform and optax's ``sgd``, ``scale_by_adam`` or
    ``add_decayed_weights``): then each element gets the same expression as
    in the per-array layout (XLA may contract a multiply and an add into one
    rounding in one layout's loop and not the other's, so the last bit can
    differ, as between jit and eager execution). A transform that reduces
    over arrays (``clip_by_global_norm``) still works but rounds its sum
    differently, and one that looks at the tree's structure (``optax.masked``,
    ``multi_transform``) must go outside.

    Args:
      inner: the transform to run on the packed arrays.
      max_size: arrays with at most this many elements are packed.
      layout: ``"packed"``; ``"auto"`` packs only when JAX's default backend
        is a GPU; ``"per_leaf"`` returns ``inner``'s own state unchanged.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import momentum_jax
      >>> params = {"w": jnp.ones((512, 512)), "b": jnp.zeros(512), "scale": jnp.ones(512)}
      >>> tx = momentum_jax.pack_small_leaves(optax.sgd(0.1, momentum=0.9))
      >>> state = tx.init(params)
      >>> state.layout
      Layout(2 of 3 arrays packed (<= 65536 elements each) into {float32: 1024})
    """
    name = "momentum_jax.pack_small_leaves"
    if not isinstance(inner, optax.GradientTransformation):
        raise TypeError(
            f"{name}: inner must be an optax GradientTransformation (such as "
            f"optax.sgd(0.1, momentum=0.9)), got {type(inner).__name__} {inner!r}."
        )
    max_size = check_max_size(name, max_size)
    layout = check_layout(name, layout)
    return _wrap(name, inner, layout, max_size)


def with_layout(
    fn_name: str, inner: optax.GradientTransformation, layout: str
) -> optax.GradientTransformationExtraArgs:
    """``inner`` in the ``layout`` a public transform was built with."""
    return _wrap(fn_name, inner, check_layout(fn_name, layout), DEFAULT_MAX_PACKED_SIZE)


def _wrap(
    fn_name: str, inner: optax.GradientTransformation, layout: str, max_size: int
) -> optax.GradientTransformationExtraArgs:
    def init_fn(params: optax.Params) -> Any:
        if layout == "per_leaf" or (layout == "auto" and not auto_packs()):
            return inner.init(params)
        plan = Layout.of(params, max_size)
        return PackedState(inner.init(plan.pack(fn_name, params, "param")), plan)

    def update_fn(
        updates: optax.Updates,
        state: optax.OptState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, Any]:
        if not isinstance(state, PackedState):
            return _update(inner, updates, state, params, extra_args)
        plan = state.layout
        packed = plan.pack(fn_name, updates, "gradient")
        packed_params = None if params is None else plan.pack(fn_name, params, "param")
        out, inner_state = _update(inner, packed, state.inner, packed_params, extra_args)
        treedef = jax.tree.structure(updates, is_leaf=_is_none)
        return plan.unpack(out, treedef), PackedState(inner_state, plan)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _update(
    inner: optax.GradientTransformation,
    updates: Any,
    state: Any,
    params: Any,
    extra_args: dict[str, Any],
) -> tuple[Any, Any]:
    if isinstance(inner, optax.GradientTransformationExtraArgs):
        return inner.update(updates, state, params, **extra_args)
    return inner.update(updates, state, params)
