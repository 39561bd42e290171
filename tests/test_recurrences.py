"""Each transform against its equations written out by hand.

Every test uses a non-zero momentum, several steps and gradients that change
from step to step, so momentum cannot be mistaken for plain SGD.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import momentum_jax
from momentum_jax import compat
from tests import _problems

GRADS = [
    np.array([1.0, -2.0], np.float32),
    np.array([0.5, 1.0], np.float32),
    np.array([-1.5, 0.25], np.float32),
]


def _updates(tx: optax.GradientTransformation, grads: list[np.ndarray]) -> list[np.ndarray]:
    params = jnp.zeros_like(grads[0])
    state = tx.init(params)
    out = []
    for g in grads:
        u, state = tx.update(jnp.asarray(g), state, params)
        out.append(np.asarray(u))
    return out


def test_heavy_ball_three_steps_by_hand() -> None:
    lr, mu = 0.1, 0.9
    g1, g2, g3 = GRADS
    v1 = lr * g1
    v2 = mu * v1 + lr * g2
    v3 = mu * v2 + lr * g3
    expected = [-v1, -v2, -v3]
    got = _updates(momentum_jax.momentum(lr, mu), GRADS)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # Concretely: the second update is -(0.09 + 0.05, -0.18 + 0.1).
    np.testing.assert_allclose(got[1], [-0.14, 0.08], rtol=1e-6)


def test_nesterov_three_steps_by_hand() -> None:
    lr, mu = 0.1, 0.9
    g1, g2, g3 = GRADS
    v1 = lr * g1
    v2 = mu * v1 + lr * g2
    v3 = mu * v2 + lr * g3
    expected = [-(mu * v1 + lr * g1), -(mu * v2 + lr * g2), -(mu * v3 + lr * g3)]
    np.testing.assert_allclose(_updates(momentum_jax.nesterov(lr, mu), GRADS), expected, rtol=1e-6)
    np.testing.assert_allclose(
        _updates(momentum_jax.momentum(lr, mu, nesterov=True), GRADS), expected, rtol=1e-6
    )


def test_schedules_three_steps_by_hand() -> None:
    lrs = [0.1, 0.05, 0.02]
    mus = [0.5, 0.8, 0.9, 0.95]
    g1, g2, g3 = GRADS
    v1 = lrs[0] * g1
    v2 = mus[1] * v1 + lrs[1] * g2
    v3 = mus[2] * v2 + lrs[2] * g3
    # Heavy ball: v_t = mu(t-1) v + lr(t-1) g; Nesterov looks ahead with mu(t).
    heavy = [-v1, -v2, -v3]
    look_ahead = [
        -(mus[1] * v1 + lrs[0] * g1),
        -(mus[2] * v2 + lrs[1] * g2),
        -(mus[3] * v3 + lrs[2] * g3),
    ]
    lr_schedule = lambda count: jnp.asarray(lrs)[count]  # noqa: E731
    mu_schedule = lambda count: jnp.asarray(mus)[count]  # noqa: E731
    np.testing.assert_allclose(
        _updates(momentum_jax.momentum(lr_schedule, mu_schedule), GRADS), heavy, rtol=1e-6
    )
    np.testing.assert_allclose(
        _updates(momentum_jax.nesterov(lr_schedule, mu_schedule), GRADS), look_ahead, rtol=1e-6
    )


def test_weight_decay_is_coupled_by_hand() -> None:
    lr, mu, wd = 0.1, 0.9, 0.5
    tx = momentum_jax.momentum(lr, mu, weight_decay=wd)
    theta = np.array([1.0, -1.0], np.float32)
    state = tx.init(jnp.asarray(theta))
    v = np.zeros(2, np.float32)
    for g in GRADS:
        v = mu * v + lr * (g + wd * theta)
        u, state = tx.update(jnp.asarray(g), state, jnp.asarray(theta))
        np.testing.assert_allclose(u, -v, rtol=1e-6)
        theta = theta - v


def test_scale_by_momentum_three_steps_by_hand() -> None:
    mu, tau = 0.9, 0.25
    g1, g2, g3 = GRADS
    # PyTorch's first step copies the gradient; dampening applies from step 2.
    b1 = g1
    b2 = mu * b1 + (1 - tau) * g2
    b3 = mu * b2 + (1 - tau) * g3
    got = _updates(momentum_jax.scale_by_momentum(mu, dampening=tau), GRADS)
    np.testing.assert_allclose(got, [b1, b2, b3], rtol=1e-6)

    c1 = g1
    c2 = mu * c1 + g2
    c3 = mu * c2 + g3
    got = _updates(momentum_jax.scale_by_momentum(mu, nesterov=True), GRADS)
    np.testing.assert_allclose(got, [g1 + mu * c1, g2 + mu * c2, g3 + mu * c3], rtol=1e-6)


def test_learning_rate_placement_witness() -> None:
    """Closed form: g = 1, mu = 0.9, lr 0.1 then 0.01 gives -0.2 inside, -0.119 outside."""
    lr = lambda count: jnp.where(count == 0, 0.1, 0.01)  # noqa: E731
    ones = [np.ones(1, np.float32)] * 2

    def theta_2(tx: optax.GradientTransformation) -> float:
        return float(np.sum(_updates(tx, ones)))

    assert theta_2(momentum_jax.momentum(lr, 0.9)) == pytest.approx(-0.2, abs=1e-7)
    assert theta_2(compat.keras_sgd(lr, 0.9)) == pytest.approx(-0.2, abs=1e-7)
    outside = [
        compat.torch_sgd(lr, 0.9),
        compat.tf1_momentum(lr, 0.9),
        optax.chain(momentum_jax.scale_by_momentum(0.9), optax.scale_by_learning_rate(lr)),
        optax.sgd(lr, momentum=0.9),
    ]
    for tx in outside:
        assert theta_2(tx) == pytest.approx(-0.119, abs=1e-7)
    # With a constant learning rate every placement agrees.
    for tx in (momentum_jax.momentum(0.1, 0.9), compat.torch_sgd(0.1, 0.9)):
        assert theta_2(tx) == pytest.approx(-0.29, abs=1e-7)


def _stage_schedule(count: jax.Array) -> jax.Array:
    # A momentum that rises in stages of four steps, capped at 0.95.
    stage = jnp.floor(count / 4)
    return jnp.minimum(1.0 - 2.0 ** (-1.0 - jnp.log2(stage + 1.0)), 0.95)


@pytest.mark.parametrize("lr_schedule", [False, True], ids=["constant_lr", "decaying_lr"])
def test_nesterov_is_sutskever_look_ahead_under_momentum_schedule(lr_schedule: bool) -> None:
    """Sutskever et al. (2013), eq. 3-4, computed literally with the gradient at theta + mu*v."""
    eps = (lambda k: 0.05 / (1.0 + 0.1 * k)) if lr_schedule else (lambda k: 0.05)
    grad = _problems.gradient()
    theta = _problems.initial_params()
    v = jax.tree.map(jnp.zeros_like, theta)
    reference = []
    for t in range(40):
        mu_t = float(_stage_schedule(jnp.asarray(t)))
        look = jax.tree.map(lambda th, vel: th + mu_t * vel, theta, v)  # noqa: B023
        g = grad(look)
        v = jax.tree.map(lambda vel, gr: mu_t * vel - eps(t) * gr, v, g)  # noqa: B023
        theta = jax.tree.map(jnp.add, theta, v)
        # The reparameterised iterate: Theta_t = theta_t + mu_t * v_t.
        mu_next = float(_stage_schedule(jnp.asarray(t + 1)))
        reference.append(jax.tree.map(lambda th, vel: np.asarray(th + mu_next * vel), theta, v))  # noqa: B023
    lr = eps if lr_schedule else 0.05
    ours = _problems.trajectory(momentum_jax.nesterov(lr, _stage_schedule), 40)
    _problems.assert_trajectories_close(ours, reference, rtol=1e-5, atol=1e-6)
    # The schedule really changes within the run.
    assert float(_stage_schedule(jnp.asarray(0))) == 0.5
    assert float(_stage_schedule(jnp.asarray(39))) == pytest.approx(0.95, abs=1e-6)


def test_tf1_momentum_matches_its_equations() -> None:
    """TF1 MomentumOptimizer: accum = mu*accum + g; var -= lr*accum (or lr*(g + mu*accum))."""
    decayed = lambda k: 0.1 * 0.9 ** (k / 3.0)  # noqa: E731 (exponential_decay, no staircase)
    for use_nesterov in (False, True):
        params = _problems.initial_params()
        accum = jax.tree.map(np.zeros_like, params)
        var = jax.tree.map(np.asarray, params)
        reference = []
        for k in range(30):
            g = jax.tree.map(np.asarray, _problems.gradient()(var))
            accum = jax.tree.map(lambda a, gr: 0.8 * a + gr, accum, g)
            lr_k = decayed(k)
            if use_nesterov:
                var = jax.tree.map(lambda x, gr, a: x - lr_k * (gr + 0.8 * a), var, g, accum)  # noqa: B023
            else:
                var = jax.tree.map(lambda x, a: x - lr_k * a, var, accum)  # noqa: B023
            reference.append(var)
        ours = _problems.trajectory(
            compat.tf1_momentum(decayed, 0.8, use_nesterov=use_nesterov), 30
        )
        _problems.assert_trajectories_close(ours, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nesterov", [False, True])
def test_scale_by_momentum_chain_equals_optax_sgd(nesterov: bool) -> None:
    schedule = optax.piecewise_constant_schedule(0.1, {10: 0.5, 20: 0.2})
    ours = optax.chain(
        momentum_jax.scale_by_momentum(0.9, nesterov=nesterov),
        optax.scale_by_learning_rate(schedule),
    )
    reference = optax.sgd(schedule, momentum=0.9, nesterov=nesterov)
    _problems.assert_trajectories_close(
        _problems.trajectory(ours, 30), _problems.trajectory(reference, 30), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("maximize", [False, True], ids=["minimize", "maximize"])
def test_torch_sgd_follows_pytorchs_written_algorithm(maximize: bool) -> None:
    """PyTorch's SGD as its documentation writes it, with a momentum that is 0 for two steps:
    g <- -g if maximize; g <- g + wd*theta; at a momentum other than 0, b <- g the first time
    (undamped), else b <- mu*b + (1 - dampening)*g, and g <- b; theta <- theta - lr*g. The
    buffer is untouched while the momentum is 0."""
    lr, wd, dampening = 0.1, 0.1, 0.3
    momenta = np.array([0.0, 0.0, 0.9, 0.9, 0.5], np.float32)
    grads = [np.array([1.0, -2.0]), np.array([2.0, 0.5]), np.array([3.0, 1.0])]
    grads += [np.array([4.0, -1.0]), np.array([-2.0, 3.0])]
    theta, buffer, expected = np.array([1.0, -0.5]), None, []
    for mu, g in zip(momenta.astype(np.float64), grads, strict=True):
        d = (-g if maximize else g) + wd * theta
        if mu != 0:
            buffer = d.copy() if buffer is None else mu * buffer + (1 - dampening) * d
            d = buffer
        theta = theta - lr * d
        expected.append(theta)
    schedule = lambda n: jnp.asarray(momenta)[jnp.minimum(n, len(momenta) - 1)]  # noqa: E731
    tx = compat.torch_sgd(lr, schedule, dampening=dampening, weight_decay=wd, maximize=maximize)
    params = jnp.asarray([1.0, -0.5])
    state = tx.init(params)
    for g, want in zip(grads, expected, strict=True):
        updates, state = tx.update(jnp.asarray(g, jnp.float32), state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(params, want, rtol=1e-6)
