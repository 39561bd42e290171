"""Small test problems and helpers shared by the test modules.

The quadratic has a non-diagonal Hessian and two param arrays, so gradients
change from step to step and differ between coordinates.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import momentum_jax

HESSIAN = np.array([[3.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.4]], np.float32)
TARGET = np.array([1.0, -2.0, 0.5], np.float32)
W0 = np.array([0.3, 0.7, -1.2], np.float32)
B0 = np.array([[0.5, -0.25], [1.5, 0.75]], np.float32)
CURVATURE = np.array([[1.0, 2.0], [0.5, 3.0]], np.float32)

NpTree = dict[str, np.ndarray]


def initial_params() -> dict[str, jax.Array]:
    return {"w": jnp.asarray(W0), "b": jnp.asarray(B0)}


def loss(params: dict[str, jax.Array]) -> jax.Array:
    """A convex quadratic in ``w`` plus a quartic-free bowl in ``b``."""
    d = params["w"] - TARGET
    return 0.5 * d @ HESSIAN @ d + 0.5 * jnp.sum(
        jnp.asarray([[1.0, 2.0], [0.5, 3.0]]) * params["b"] ** 2
    )


@functools.cache
def gradient(loss_fn: Callable[[Any], jax.Array] = loss) -> Callable[[Any], Any]:
    """``jax.grad(loss_fn)``, jitted once per loss function.

    An eager ``jax.grad`` traces and transposes the loss at every call (about 5 ms
    here, ten times an eager update); the jitted gradient gives the same bits for
    :func:`loss` on CPU and leaves the transform under test eager.
    """
    return jax.jit(jax.grad(loss_fn))


def trajectory(
    tx: optax.GradientTransformation,
    steps: int,
    params: Any = None,
    loss_fn: Callable[[Any], jax.Array] = loss,
) -> list[Any]:
    """Params after each of ``steps`` updates, run eagerly."""
    params = initial_params() if params is None else params
    state = tx.init(params)
    grad = gradient(loss_fn)
    out = []
    for _ in range(steps):
        grads = grad(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append(jax.tree.map(np.asarray, params))
    return out


def step_fn(
    tx: optax.GradientTransformation, loss_fn: Callable[[Any], jax.Array] = loss
) -> Callable[[Any, Any], tuple[Any, Any]]:
    """One training step on ``loss_fn``: ``(params, state) -> (params, state)``."""

    grad = gradient(loss_fn)

    def step(params: Any, state: Any) -> tuple[Any, Any]:
        grads = grad(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def assert_trajectories_close(
    ours: list[Any], reference: list[Any], *, rtol: float = 2e-5, atol: float = 2e-6
) -> None:
    assert len(ours) == len(reference)
    for step, (a, b) in enumerate(zip(ours, reference, strict=True)):
        for key in b:
            np.testing.assert_allclose(
                np.asarray(a[key]),
                np.asarray(b[key]),
                rtol=rtol,
                atol=atol,
                err_msg=f"param {key!r} differs after step {step + 1}",
            )


def np_grad(params: NpTree) -> NpTree:
    """The gradient of :func:`loss` written out in float64 numpy, never through JAX."""
    hessian = HESSIAN.astype(np.float64)
    return {
        "w": hessian @ (params["w"] - TARGET.astype(np.float64)),
        "b": CURVATURE.astype(np.float64) * params["b"],
    }


def np_initial() -> NpTree:
    return {"w": W0.astype(np.float64), "b": B0.astype(np.float64)}


def plain(state: Any) -> Any:
    """``state`` as nested dicts, lists and numpy arrays (a checkpoint read without a target)."""
    if hasattr(state, "_asdict"):
        return {key: plain(value) for key, value in state._asdict().items()}
    if isinstance(state, dict):
        return {key: plain(value) for key, value in state.items()}
    if isinstance(state, list | tuple):
        return [plain(value) for value in state]
    return None if state is None else np.asarray(state)


def packed_nodes(state: Any) -> list[Any]:
    """The :class:`momentum_jax.PackedState` nodes of a state (of a chain, a wrapper's...)."""
    is_packed = lambda x: isinstance(x, momentum_jax.PackedState)  # noqa: E731
    return [node for node in jax.tree.leaves(state, is_leaf=is_packed) if is_packed(node)]


def per_array(state: Any) -> Any:
    """``state`` with each :class:`momentum_jax.PackedState` read as its per-array inner state.

    Through the public attributes only: ``PackedState.velocity`` (``buffer``,
    ``buffers``) slices the packed buffers back into params-shaped trees.
    """

    def unpack(node: Any) -> Any:
        if not isinstance(node, momentum_jax.PackedState):
            return node
        return node.inner._replace(**{field: getattr(node, field) for field in node.inner._fields})

    is_packed = lambda x: isinstance(x, momentum_jax.PackedState)  # noqa: E731
    return jax.tree.map(unpack, state, is_leaf=is_packed)


# More than 2**16 elements: the packed layout keeps this array's buffer apart.
BIG = (257, 256)


def layout_params(complex_params: bool = True) -> dict[str, Any]:
    """Params that mix arrays the packed layout packs (small, several dtypes) with
    arrays that keep their own buffer (large, integer) and ``None``."""
    rng = np.random.default_rng(0)
    params: dict[str, Any] = {
        "kernel": jnp.asarray(rng.standard_normal(BIG), jnp.float32),
        "bias": jnp.asarray(rng.standard_normal(7), jnp.float32),
        "scale": jnp.asarray(rng.standard_normal((2, 3)), jnp.float32),
        "scalar": jnp.asarray(0.5, jnp.float32),
        "half": jnp.asarray(rng.standard_normal(5), jnp.bfloat16),
        "empty": jnp.zeros((0, 3), jnp.float32),
        "steps": jnp.arange(4, dtype=jnp.int32),
        "frozen": None,
    }
    if complex_params:
        params["c64"] = jnp.asarray(
            rng.standard_normal(3) + 1j * rng.standard_normal(3), "complex64"
        )
    return params


def layout_grads(params: Any, k: int) -> Any:
    """A different, coordinate-dependent gradient at every step (``None`` for integer leaves)."""

    def one(p: Any) -> Any:
        if p is None or not jnp.issubdtype(p.dtype, jnp.inexact):
            return None
        ramp = jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape)
        return (jnp.sin(ramp * (k + 1.3)) + 0.1 * k).astype(p.dtype)

    return jax.tree.map(one, params, is_leaf=lambda x: x is None)


def apply(params: Any, updates: Any) -> Any:
    """``optax.apply_updates`` that keeps params whose update is ``None``."""
    return jax.tree.map(
        lambda p, u: p if u is None else (p + u).astype(p.dtype),
        params,
        updates,
        is_leaf=lambda x: x is None,
    )


# --- a fixed gradient sequence, for what the transforms do with bad values ------------


def small_params() -> dict[str, jax.Array]:
    return {"w": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array([[0.25, -0.75]])}


def fixed_grads(k: int) -> dict[str, jax.Array]:
    """Step ``k``'s gradient for :func:`small_params`; it does not depend on the params,
    so only the optimizer can carry a NaN from one step to the next."""
    return {
        "w": jnp.array([1.0, -0.5, 0.25]) * (1.0 + 0.1 * k),
        "b": jnp.array([[-0.3, 0.7]]) / (1.0 + k),
    }


def with_bad_value(grads: dict[str, jax.Array], value: float) -> dict[str, jax.Array]:
    return {**grads, "w": grads["w"].at[1].set(value)}


def counts(state: Any) -> list[int]:
    """Every step counter in ``state`` (a chain has several)."""
    return [int(c) for _, c in optax.tree_utils.tree_get_all_with_path(state, "count")]


def jitted_step(tx: optax.GradientTransformation) -> Callable[..., Any]:
    """``(params, state, grads) -> (params, state)``, jitted."""

    @jax.jit
    def step(params: Any, state: Any, grads: Any) -> Any:
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def train(
    tx: optax.GradientTransformation,
    params: Any,
    state: Any,
    grads: Callable[[int], Any],
    ks: range,
) -> Any:
    """``(params, state)`` after the jitted steps of ``grads(k)`` for ``k`` in ``ks``."""
    step = jitted_step(tx)
    for k in ks:
        params, state = step(params, state, grads(k))
    return params, state


def assert_same_bits(a: Any, b: Any) -> None:
    """The same tree, dtypes and values (compared in float32: exact for 8- and 16-bit leaves)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


def assert_trees_equal(a: Any, b: Any, what: str) -> None:
    """Bit for bit, naming the first leaf that differs."""
    assert jax.tree.structure(a) == jax.tree.structure(b), what
    for path_leaf, other in zip(
        jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True
    ):
        path, leaf = path_leaf
        assert np.array_equal(leaf, other), f"{what}: {jax.tree_util.keystr(path)} changed"


def updates_like(grads: Any, state: Any, row_id: str) -> Any:
    """Arrays shaped and typed as the updates of the contract table's row ``row_id``: its
    gradients; Lion's, as optax.lion's, in the gradients' dtype promoted with the stored
    buffer's, but with int8 buffers, whose codes promote to the gradients' dtype (also where
    a small array keeps a float32 buffer)."""
    if not row_id.startswith("lion") or "int8" in row_id:
        return grads

    def promoted(g: jax.Array, b: Any) -> jax.Array:
        dtype = jnp.result_type(g, b)
        return g if dtype == g.dtype else jnp.zeros(g.shape, dtype)

    return jax.tree.map(promoted, grads, state[0].buffer)
