"""``compat.torch_sgd`` where PyTorch's semantics have edges.

* A momentum that is 0 at some steps (a schedule, or a value injected with
  ``optax.inject_hyperparams``): PyTorch leaves its buffer alone at such a step and
  starts it, undamped (``buf = clone(grad)``), at the first step whose momentum is
  not 0. Checked against the closed form and against ``torch.optim.SGD`` itself, also
  accumulating gradients, where the buffer holds the mean gradient until it starts, and
  stays PyTorch's past an accumulated update with momentum 0 (that update is NaN).
* Only a Python 0 keeps no buffer; a NumPy or JAX zero keeps one, with the same updates.
* Weight decay keeps the gradient's dtype (PyTorch adds it in place), so mixed
  precision params and a strongly typed decay work in the packed layout too.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from momentum_jax import compat

MOMENTA = [0.0, 0.0, 0.9, 0.9, 0.0, 0.8, 0.7]


def _schedule(count: jax.Array) -> jax.Array:
    return jnp.asarray(MOMENTA, jnp.float32)[count]


def _grads(step: int) -> np.ndarray:
    return np.array([1.0, -2.0, 0.5], np.float32) * (1.0 + 0.3 * step) + np.float32(step % 3)


def _ours(dampening: float, injected: bool, layout: str = "per_leaf") -> np.ndarray:
    if injected:
        tx = optax.inject_hyperparams(compat.torch_sgd, static_args=("layout",))(
            lr=0.1, momentum=0.0, dampening=dampening, layout=layout
        )
    else:
        tx = compat.torch_sgd(0.1, _schedule, dampening=dampening, layout=layout)
    params = jnp.zeros(3)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for t, mu in enumerate(MOMENTA):
        if injected:
            state.hyperparams["momentum"] = jnp.asarray(mu)
        updates, state = step(jnp.asarray(_grads(t)), state, params)
        params = optax.apply_updates(params, updates)
    return np.asarray(params)


def test_momentum_zero_then_not_matches_the_closed_form() -> None:
    # momentum 0, 0, 0.9, 0.9 on g = 1, lr 0.1: -0.1, -0.2, then buf = g: -0.3, then -0.49.
    tx = compat.torch_sgd(0.1, _schedule)
    params, state = jnp.zeros(1), tx.init(jnp.zeros(1))
    for _ in range(4):
        updates, state = tx.update(jnp.ones(1), state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params, [-0.49], rtol=1e-6)


@pytest.mark.parametrize("dampening", [0.0, 0.3])
@pytest.mark.parametrize("injected", [False, True], ids=["schedule", "injected"])
def test_momentum_zero_at_some_steps_matches_torch(dampening: float, injected: bool) -> None:
    torch = pytest.importorskip("torch")
    theta = torch.zeros(3, dtype=torch.float32, requires_grad=True)
    optimizer = torch.optim.SGD([theta], lr=0.1, momentum=0.0, dampening=dampening)
    for t, mu in enumerate(MOMENTA):
        optimizer.param_groups[0]["momentum"] = mu
        theta.grad = torch.from_numpy(_grads(t))
        optimizer.step()
    expected = theta.detach().numpy()
    np.testing.assert_allclose(_ours(dampening, injected), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(_ours(dampening, injected, "packed"), _ours(dampening, injected))


# Updates with momentum 0 before the buffer starts, as a warm-up from 0 gives.
WARM_UP = [0.0, 0.0, 0.9, 0.9, 0.8]


@pytest.mark.parametrize("dampening", [0.0, 0.3])
@pytest.mark.parametrize("injected", [False, True], ids=["schedule", "injected"])
def test_accumulating_from_momentum_zero_matches_torch_on_the_mean_gradient(
    dampening: float, injected: bool
) -> None:
    torch = pytest.importorskip("torch")
    k = 2
    if injected:  # as optax.inject_hyperparams passes the default momentum 0: an array
        inject = optax.inject_hyperparams(
            compat.torch_sgd, static_args=("gradient_accumulation_steps",)
        )
        tx = inject(lr=0.1, dampening=dampening, gradient_accumulation_steps=k)
    else:
        tx = compat.torch_sgd(
            0.1, lambda n: jnp.asarray(WARM_UP)[n], dampening, gradient_accumulation_steps=k
        )
    params = jnp.zeros(3)
    state = tx.init(params)
    theta = torch.zeros(3, dtype=torch.float32, requires_grad=True)
    optimizer = torch.optim.SGD([theta], lr=0.1, momentum=0.0, dampening=dampening)
    for n, mu in enumerate(WARM_UP):
        for call in range(k):
            if injected:
                state.hyperparams["momentum"] = jnp.asarray(mu)
            updates, state = tx.update(jnp.asarray(_grads(k * n + call)), state, params)
            params = optax.apply_updates(params, updates)
        optimizer.param_groups[0]["momentum"] = mu
        theta.grad = torch.from_numpy((_grads(k * n) + _grads(k * n + 1)) / k)
        optimizer.step()
        np.testing.assert_allclose(params, theta.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_accumulating_past_a_momentum_of_0_keeps_pytorchs_buffer() -> None:
    """Once the buffer has started, an update with momentum 0 is NaN (PyTorch's output is the
    mean gradient, which no buffer keeps), but the buffer stays PyTorch's, untouched, and
    the updates after it are PyTorch's again."""
    torch = pytest.importorskip("torch")
    k, momenta = 2, [0.9, 0.0, 0.9, 0.8]
    tx = compat.torch_sgd(0.1, lambda n: jnp.asarray(momenta)[n], gradient_accumulation_steps=k)
    state = tx.init(jnp.zeros(3))
    theta = torch.zeros(3, dtype=torch.float32, requires_grad=True)
    optimizer = torch.optim.SGD([theta], lr=0.1, momentum=0.0)
    for n, mu in enumerate(momenta):
        for call in range(k):
            updates, state = tx.update(jnp.asarray(_grads(k * n + call)), state)
        before = theta.detach().clone()
        optimizer.param_groups[0]["momentum"] = mu
        theta.grad = torch.from_numpy((_grads(k * n) + _grads(k * n + 1)) / k)
        optimizer.step()
        buffer = optimizer.state[theta]["momentum_buffer"].numpy()
        np.testing.assert_allclose(state[0].inner.velocity, buffer, rtol=1e-6)
        assert bool(state[0].inner.started)
        if mu == 0:
            assert np.isnan(updates).all()
        else:
            expected = (theta.detach() - before).numpy()
            np.testing.assert_allclose(updates, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("preset", [compat.torch_sgd, compat.keras_sgd], ids=["torch", "keras"])
def test_only_a_python_zero_momentum_keeps_no_buffer(preset: Any) -> None:
    """A Python 0 is plain SGD with an empty state (PyTorch and Keras keep no buffer); a
    NumPy or JAX zero keeps one, as optax.inject_hyperparams' array does, with the same
    updates."""
    params, grads = jnp.zeros(3), [jnp.asarray(_grads(t)) for t in range(3)]
    for zero, buffers in ((0, 0), (0.0, 0), (np.float32(0.0), 1), (jnp.asarray(0.0), 1)):
        tx = preset(0.1, zero)
        state = tx.init(params)
        assert sum(x.shape == (3,) for x in jax.tree.leaves(state)) == buffers, zero
        for g in grads:
            updates, state = tx.update(g, state, params)
            np.testing.assert_allclose(updates, -0.1 * g, rtol=1e-6)


def test_bfloat16_buffers_keep_pytorchs_momentum_when_it_is_given_in_float32() -> None:
    # One gradient, then none: the buffer decays by mu per step. PyTorch multiplies a
    # bfloat16 buffer by 0.9 in float32; a Python 0.9 meets a bfloat16 buffer as 0.8984375.
    torch = pytest.importorskip("torch")
    theta = torch.zeros(1, dtype=torch.bfloat16, requires_grad=True)
    optimizer = torch.optim.SGD([theta], lr=1.0, momentum=0.9)
    buffers = {}
    for name, mu in (("python", 0.9), ("float32", jnp.float32(0.9))):
        tx = compat.torch_sgd(1.0, mu)
        params = jnp.zeros(1, jnp.bfloat16)
        state = tx.init(params)
        for t in range(20):
            _, state = tx.update(jnp.full(1, float(t == 0), jnp.bfloat16), state, params)
        buffers[name] = float(state[0].velocity[0])
    for t in range(20):
        theta.grad = torch.full((1,), float(t == 0), dtype=torch.bfloat16)
        optimizer.step()
    expected = float(optimizer.state[theta]["momentum_buffer"][0])
    assert buffers["float32"] == expected
    assert buffers["python"] < expected  # 0.8984375 ** 19 against 0.9 ** 19, in bfloat16


def _mixed() -> dict[str, jax.Array]:
    return {"half": jnp.linspace(-1, 1, 6, dtype=jnp.bfloat16), "full": jnp.linspace(1, 2, 4)}


@pytest.mark.parametrize(
    "make",
    [
        lambda layout: compat.torch_sgd(0.1, 0.9, weight_decay=jnp.float32(1e-2), layout=layout),
        lambda layout: optax.inject_hyperparams(compat.torch_sgd, static_args=("layout",))(
            lr=0.1, momentum=0.9, layout=layout
        ),
    ],
    ids=["strongly_typed_decay", "injected"],
)
# The decay stage keeps the gradient's dtype; the learning-rate stage, optax's own, may
# promote under inject_hyperparams. Both layouts give the same dtypes and numbers.
def test_weight_decay_keeps_the_gradient_dtype_in_both_layouts(make: object) -> None:
    params = _mixed()
    results = {}
    for layout in ("per_leaf", "packed"):
        tx = make(layout)  # type: ignore[operator]
        p, state = params, tx.init(params)
        for t in range(4):
            grads = jax.tree.map(lambda x, t=t: (x * (t + 1) + 0.25).astype(x.dtype), p)
            updates, state = tx.update(grads, state, p)
            if layout == "per_leaf" and t == 0:
                dtypes = jax.tree.map(lambda u: u.dtype, updates)
            assert jax.tree.map(lambda u: u.dtype, updates) == dtypes
            p = optax.apply_updates(p, updates)
        results[layout] = p
    for a, b in zip(
        jax.tree.leaves(results["per_leaf"]), jax.tree.leaves(results["packed"]), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
