"""Small test problems shared by the test modules.

The quadratic has a non-diagonal Hessian and two param arrays, so gradients
change from step to step and differ between coordinates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

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


def trajectory(
    tx: optax.GradientTransformation,
    steps: int,
    params: Any = None,
    loss_fn: Callable[[Any], jax.Array] = loss,
) -> list[Any]:
    """Params after each of ``steps`` updates, run eagerly."""
    params = initial_params() if params is None else params
    state = tx.init(params)
    out = []
    for _ in range(steps):
        grads = jax.grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append(jax.tree.map(np.asarray, params))
    return out


def step_fn(
    tx: optax.GradientTransformation, loss_fn: Callable[[Any], jax.Array] = loss
) -> Callable[[Any, Any], tuple[Any, Any]]:
    """One training step on ``loss_fn``: ``(params, state) -> (params, state)``."""

    def step(params: Any, state: Any) -> tuple[Any, Any]:
        grads = jax.grad(loss_fn)(params)
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
