"""Quasi-hyperbolic momentum (QHM) and aggregated momentum (AggMo).

Each transform is checked against its paper's equations written out in numpy
(float64, on the shared quadratic with a non-diagonal Hessian), against the
special cases that reduce it to a known method run by another library. The
JAX contract (jit, scan, cond, inject_hyperparams, dtypes) is checked for both
by the table in tests/test_contract.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import momentum_jax
from momentum_jax import AggMoState, QHMState, aggmo, qhm
from tests import _problems
from tests._table import Row, ids, rows_named

STEPS = 40

# The shared problem's gradient written out in numpy, so the references below
# never go through JAX: d/dw = H (w - target), d/db = C * b.
NpTree = _problems.NpTree
_np_grad = _problems.np_grad
_np_initial = _problems.np_initial


def _zeros() -> NpTree:
    return {key: np.zeros_like(value) for key, value in _np_initial().items()}


def _lr_schedule(count: Any) -> Any:
    # Written with ** so the same function serves numpy (ints) and JAX (arrays).
    return 0.2 * 0.95**count


def test_numpy_gradient_is_the_problem_gradient() -> None:
    params = _problems.initial_params()
    ours = jax.grad(_problems.loss)(params)
    expected = _np_grad(_np_initial())
    for key in expected:
        np.testing.assert_allclose(ours[key], expected[key], rtol=1e-6)


def test_the_jitted_problem_gradient_has_the_eager_bits() -> None:
    """The trajectories use ``_problems.gradient()``; the golden ones were written with an
    eager ``jax.grad``, so the two must agree bit for bit, here and far from the start."""
    rng = np.random.default_rng(3)
    for scale in (0.0, 1e-3, 1.0, 1e2):
        params = {
            key: value + jnp.asarray(scale * rng.standard_normal(value.shape), jnp.float32)
            for key, value in _problems.initial_params().items()
        }
        _problems.assert_same_bits(_problems.gradient()(params), jax.grad(_problems.loss)(params))


# --------------------------------------------------------------------------
# QHM
# --------------------------------------------------------------------------


def _np_qhm(lr: Callable[[int], float], beta: float, nu: float, steps: int) -> list[NpTree]:
    """Ma & Yarats (2019): g <- beta g + (1 - beta) grad; theta -= lr [(1 - nu) grad + nu g]."""
    theta, buf, out = _np_initial(), _zeros(), []
    for t in range(1, steps + 1):
        grad = _np_grad(theta)
        for key in theta:
            buf[key] = beta * buf[key] + (1.0 - beta) * grad[key]
            theta[key] = theta[key] - lr(t - 1) * ((1.0 - nu) * grad[key] + nu * buf[key])
        out.append({key: value.copy() for key, value in theta.items()})
    return out


def test_qhm_three_steps_by_hand() -> None:
    lr, beta, nu = 0.1, 0.9, 0.7
    grads = [np.array([1.0, -2.0]), np.array([0.5, 1.0]), np.array([-1.5, 0.25])]
    tx = qhm(lr, beta, nu)
    state = tx.init(jnp.zeros(2))
    b = np.zeros(2)
    for g in grads:
        b = beta * b + (1 - beta) * g
        expected = -lr * ((1 - nu) * g + nu * b)
        updates, state = tx.update(jnp.asarray(g, jnp.float32), state)
        np.testing.assert_allclose(updates, expected, rtol=1e-6)
        np.testing.assert_allclose(state[0].buffer, b, rtol=1e-6)
    # Step two by hand: b = 0.9 * (0.1, -0.2) + 0.1 * (0.5, 1.0) = (0.14, -0.08);
    # u = -0.1 * (0.3 * (0.5, 1.0) + 0.7 * (0.14, -0.08)) = (-0.0248, -0.0244).
    state = tx.init(jnp.zeros(2))
    for g in grads[:2]:
        updates, state = tx.update(jnp.asarray(g, jnp.float32), state)
    np.testing.assert_allclose(updates, [-0.0248, -0.0244], rtol=1e-5)


@pytest.mark.parametrize(("beta", "nu"), [(0.9, 0.7), (0.95, 0.3), (0.999, 0.7)])
def test_qhm_general_nu_against_the_paper(beta: float, nu: float) -> None:
    lr = 0.15 if beta < 0.99 else 1.0
    ours = _problems.trajectory(qhm(lr, beta, nu), STEPS)
    _problems.assert_trajectories_close(ours, _np_qhm(lambda k: lr, beta, nu, STEPS))


def test_qhm_schedules_are_evaluated_at_the_number_of_updates_done() -> None:
    beta_schedule = lambda count: 0.5 + 0.4 * jnp.minimum(count / 10.0, 1.0)  # noqa: E731
    nu_schedule = lambda count: jnp.where(count < 7, 0.2, 0.9)  # noqa: E731
    theta, buf, reference = _np_initial(), _zeros(), []
    for t in range(1, STEPS + 1):
        k = t - 1
        beta, nu, lr = 0.5 + 0.4 * min(k / 10.0, 1.0), (0.2 if k < 7 else 0.9), _lr_schedule(k)
        grad = _np_grad(theta)
        for key in theta:
            buf[key] = beta * buf[key] + (1.0 - beta) * grad[key]
            theta[key] = theta[key] - lr * ((1.0 - nu) * grad[key] + nu * buf[key])
        reference.append({key: value.copy() for key, value in theta.items()})
    ours = _problems.trajectory(qhm(_lr_schedule, beta_schedule, nu_schedule), STEPS)
    _problems.assert_trajectories_close(ours, reference)


def test_qhm_nu_zero_is_plain_sgd() -> None:
    """nu = 0 ignores the buffer: theta <- theta - lr * g, whatever beta is."""
    theta, reference = _np_initial(), []
    for _ in range(STEPS):
        grad = _np_grad(theta)
        theta = {key: theta[key] - 0.2 * grad[key] for key in theta}
        reference.append(theta)
    for tx in (qhm(0.2, 0.9, 0.0), optax.sgd(0.2)):
        _problems.assert_trajectories_close(_problems.trajectory(tx, STEPS), reference)


@pytest.mark.parametrize("scheduled", [False, True], ids=["constant_lr", "lr_schedule"])
def test_qhm_nu_equal_to_beta_is_nesterov_with_a_rescaled_learning_rate(scheduled: bool) -> None:
    r"""QHM(alpha, beta, nu=beta) is PyTorch-form Nesterov with learning rate alpha (1 - beta).

    Write B_t = b_t / (1 - beta). QHM's buffer b_t = beta b_{t-1} + (1 - beta) g_t
    becomes B_t = beta B_{t-1} + g_t with B_0 = 0 (so B_1 = g_1, PyTorch's first
    step), and with nu = beta its update is

        -alpha ((1 - beta) g_t + beta (1 - beta) B_t) = -alpha (1 - beta) (g_t + beta B_t),

    which is the gradient-buffer Nesterov step g_t + beta B_t scaled by the
    learning rate alpha (1 - beta). The identity holds step by step, so it also
    holds for a learning-rate schedule alpha_t.
    """
    beta = 0.9
    alpha = _lr_schedule if scheduled else (lambda count: 0.5)
    rescaled = lambda count: (1.0 - beta) * alpha(count)  # noqa: E731

    theta, big_b, reference = _np_initial(), _zeros(), []
    for t in range(1, STEPS + 1):
        grad = _np_grad(theta)
        for key in theta:
            big_b[key] = beta * big_b[key] + grad[key]
            theta[key] = theta[key] - rescaled(t - 1) * (grad[key] + beta * big_b[key])
        reference.append({key: value.copy() for key, value in theta.items()})

    lr = _lr_schedule if scheduled else 0.5
    ours = _problems.trajectory(qhm(lr, beta, nu=beta), STEPS)
    _problems.assert_trajectories_close(ours, reference)
    nesterov_chain = optax.chain(
        momentum_jax.scale_by_momentum(beta, nesterov=True),
        optax.scale_by_learning_rate(rescaled),
    )
    _problems.assert_trajectories_close(ours, _problems.trajectory(nesterov_chain, STEPS))
    optax_nesterov = optax.sgd(rescaled, momentum=beta, nesterov=True)
    _problems.assert_trajectories_close(ours, _problems.trajectory(optax_nesterov, STEPS))


def test_qhm_nu_one_is_ema_buffer_momentum() -> None:
    """nu = 1 steps along the averaged buffer alone: b <- beta b + (1 - beta) g; theta -= lr b."""
    lr, beta = 1.0, 0.9
    theta, buf, reference = _np_initial(), _zeros(), []
    for _ in range(STEPS):
        grad = _np_grad(theta)
        for key in theta:
            buf[key] = beta * buf[key] + (1.0 - beta) * grad[key]
            theta[key] = theta[key] - lr * buf[key]
        reference.append({key: value.copy() for key, value in theta.items()})
    ours = _problems.trajectory(qhm(lr, beta, nu=1.0), STEPS)
    _problems.assert_trajectories_close(ours, reference)
    # The averaged buffer is a rescaled sum: b = (1 - beta) * (optax's trace),
    # so optax.sgd with learning rate lr (1 - beta) gives the same iterates.
    scaled_sum = optax.sgd(lr * (1.0 - beta), momentum=beta)
    _problems.assert_trajectories_close(ours, _problems.trajectory(scaled_sum, STEPS))


def test_qhm_nu_one_matches_torch_sgd_with_dampening() -> None:
    """QHM with nu = 1 is ``torch.optim.SGD(lr, momentum=beta, dampening=beta)``.

    PyTorch's buffer is ``b <- mu b + (1 - dampening) g``, so the averaging
    weight 1 - beta on the new gradient needs ``dampening = beta``. PyTorch
    also copies the first gradient into an empty buffer undamped (b_1 = g_1),
    whereas QHM starts from b_0 = 0 (b_1 = (1 - beta) g_1); seeding PyTorch's
    buffer with zeros before the first step removes that difference.
    """
    torch = pytest.importorskip("torch")
    lr, beta = 1.0, 0.9

    def torch_trajectory(seed_buffer: bool) -> list[dict[str, np.ndarray]]:
        w = torch.tensor(_problems.W0, requires_grad=True)
        b = torch.tensor(_problems.B0, requires_grad=True)
        hessian = torch.tensor(_problems.HESSIAN)
        target = torch.tensor(_problems.TARGET)
        curvature = torch.tensor(_problems.CURVATURE)
        opt = torch.optim.SGD([w, b], lr=lr, momentum=beta, dampening=beta)
        if seed_buffer:
            for p in (w, b):
                opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
        out = []
        for _ in range(STEPS):
            opt.zero_grad()
            d = w - target
            loss = 0.5 * d @ hessian @ d + 0.5 * torch.sum(curvature * b**2)
            loss.backward()
            opt.step()
            out.append({"w": w.detach().numpy().copy(), "b": b.detach().numpy().copy()})
        return out

    ours = _problems.trajectory(qhm(lr, beta, nu=1.0), STEPS)
    _problems.assert_trajectories_close(ours, torch_trajectory(seed_buffer=True))
    # Without the seed PyTorch's first step is a full SGD step, ten times QHM's.
    unseeded_first = torch_trajectory(seed_buffer=False)[0]["w"]
    grad_w = _np_grad(_np_initial())["w"]
    np.testing.assert_allclose(unseeded_first, _problems.W0 - lr * grad_w, rtol=1e-6)
    np.testing.assert_allclose(ours[0]["w"], _problems.W0 - lr * (1 - beta) * grad_w, rtol=1e-6)


def test_qhm_accepts_jax_scalars() -> None:
    direct = _problems.trajectory(qhm(0.15, 0.9, 0.7), 10)
    scalars = _problems.trajectory(qhm(jnp.float32(0.15), jnp.float32(0.9), jnp.float32(0.7)), 10)
    _problems.assert_trajectories_close(scalars, direct, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------
# AggMo
# --------------------------------------------------------------------------


def _np_aggmo(lr: Callable[[int], float], momenta: tuple[float, ...], steps: int) -> list[NpTree]:
    """Lucas et al. (2019): v_i <- beta_i v_i - grad; theta += (lr / K) sum_i v_i."""
    theta = _np_initial()
    velocities = [_zeros() for _ in momenta]
    out = []
    for t in range(1, steps + 1):
        grad = _np_grad(theta)
        for key in theta:
            for beta, v in zip(momenta, velocities, strict=True):
                v[key] = beta * v[key] - grad[key]
            total = sum(v[key] for v in velocities)
            theta[key] = theta[key] + lr(t - 1) / len(momenta) * total
        out.append({key: value.copy() for key, value in theta.items()})
    return out


def test_aggmo_three_steps_by_hand() -> None:
    lr, momenta = 0.1, (0.0, 0.5, 0.9)
    g1, g2, g3 = np.array([1.0, -2.0]), np.array([0.5, 1.0]), np.array([-1.5, 0.25])
    tx = aggmo(lr, momenta)
    state = tx.init(jnp.zeros(2))
    got = []
    for g in (g1, g2, g3):
        updates, state = tx.update(jnp.asarray(g, jnp.float32), state)
        got.append(np.asarray(updates))
    # Buffers after step 2: g2, 0.5 g1 + g2, 0.9 g1 + g2; after step 3 the
    # middle one is 0.25 g1 + 0.5 g2 + g3 and the last 0.81 g1 + 0.9 g2 + g3.
    np.testing.assert_allclose(got[0], -lr * g1, rtol=1e-6)
    np.testing.assert_allclose(got[1], -lr / 3 * (3 * g2 + 1.4 * g1), rtol=1e-6)
    expected_3 = -lr / 3 * (3 * g3 + 1.4 * g2 + 1.06 * g1)
    np.testing.assert_allclose(got[2], expected_3, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(state[0].buffers[1], 0.25 * g1 + 0.5 * g2 + g3, rtol=1e-6)


def test_aggmo_one_buffer_is_heavy_ball_momentum() -> None:
    """K = 1: b <- beta b + g; theta -= lr b, the form of optax.sgd(lr, momentum=beta)."""
    lr, beta = 0.05, 0.9
    theta, buf, reference = _np_initial(), _zeros(), []
    for _ in range(STEPS):
        grad = _np_grad(theta)
        for key in theta:
            buf[key] = beta * buf[key] + grad[key]
            theta[key] = theta[key] - lr * buf[key]
        reference.append({key: value.copy() for key, value in theta.items()})
    ours = _problems.trajectory(aggmo(lr, (beta,)), STEPS)
    _problems.assert_trajectories_close(ours, reference)
    _problems.assert_trajectories_close(
        ours, _problems.trajectory(optax.sgd(lr, momentum=beta), STEPS)
    )


def test_aggmo_first_step_is_sgd() -> None:
    params = _problems.initial_params()
    grads = jax.grad(_problems.loss)(params)
    tx = aggmo(0.1)
    updates, state = tx.update(grads, tx.init(params), params)
    sgd_updates, _ = optax.sgd(0.1).update(grads, optax.sgd(0.1).init(params))
    for key in params:
        np.testing.assert_allclose(updates[key], sgd_updates[key], rtol=1e-7)
    # The second step is not SGD any more: the buffers with momentum remember g_1.
    grads_2 = jax.grad(_problems.loss)(optax.apply_updates(params, updates))
    updates_2, _ = tx.update(grads_2, state, params)
    assert not np.allclose(updates_2["w"], -0.1 * np.asarray(grads_2["w"]), rtol=1e-3)


@pytest.mark.parametrize("momenta", [(0.0, 0.9, 0.99), (0.5, 0.7, 0.95)])
def test_aggmo_three_buffers_against_the_paper(momenta: tuple[float, ...]) -> None:
    ours = _problems.trajectory(aggmo(0.05, momenta), STEPS)
    _problems.assert_trajectories_close(ours, _np_aggmo(lambda k: 0.05, momenta, STEPS))


def test_aggmo_with_a_learning_rate_schedule() -> None:
    momenta = (0.0, 0.9, 0.99)
    schedule = lambda count: 0.08 * 0.9**count  # noqa: E731
    ours = _problems.trajectory(aggmo(schedule, momenta), STEPS)
    _problems.assert_trajectories_close(ours, _np_aggmo(schedule, momenta, STEPS))
    # A constant learning rate gives a different run, so the schedule is used.
    constant = _problems.trajectory(aggmo(0.08, momenta), STEPS)
    assert not np.allclose(constant[-1]["w"], ours[-1]["w"], rtol=1e-3)


def test_aggmo_float16_updates_are_the_mean_where_the_sum_overflows() -> None:
    # Three float16 buffers near 30000 sum past float16's largest value (65504); their
    # mean, and the update -(lr/K) sum b_i, fit.
    momenta, lr = (0.0, 0.5, 0.9), 1e-3
    grads = [np.array([30000.0, -20000.0]), np.array([25000.0, 30000.0]), np.array([-1.0, 2e4])]
    tx = aggmo(lr, momenta)
    state = tx.init(jnp.zeros(2, jnp.float16))
    buffers = [np.zeros(2) for _ in momenta]
    for g in grads:
        updates, state = tx.update(jnp.asarray(g, jnp.float16), state)
        buffers = [beta * b + g for beta, b in zip(momenta, buffers, strict=True)]
        expected = -lr / len(momenta) * sum(buffers)  # the paper's step, in float64
        assert updates.dtype == jnp.float16
        np.testing.assert_allclose(np.asarray(updates, np.float64), expected, rtol=2e-3)


def test_aggmo_accepts_an_array_of_momenta() -> None:
    momenta = (0.0, 0.9, 0.99)
    direct = _problems.trajectory(aggmo(0.05, momenta), 10)
    for as_array in (jnp.asarray(momenta), np.asarray(momenta), list(momenta)):
        _problems.assert_trajectories_close(
            _problems.trajectory(aggmo(0.05, as_array), 10), direct, rtol=1e-6, atol=1e-7
        )


@pytest.mark.slow  # property-based search
@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(
    beta=st.floats(0.0, 0.95),
    copies=st.integers(1, 4),
    lr=st.floats(0.005, 0.1),
)
def test_aggmo_with_equal_momenta_is_heavy_ball(beta: float, copies: int, lr: float) -> None:
    """K identical buffers average to one: AggMo(beta, ..., beta) is optax.sgd(momentum=beta)."""
    ours = _problems.trajectory(aggmo(lr, (beta,) * copies), 8)
    reference = _problems.trajectory(optax.sgd(lr, momentum=beta), 8)
    _problems.assert_trajectories_close(ours, reference, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# Both: state types, static or traced momenta, bfloat16 params
# --------------------------------------------------------------------------

VARIANTS = rows_named("qhm_lr_schedule", "aggmo")


def _step(tx: optax.GradientTransformation, params: Any, state: Any) -> tuple[Any, Any]:
    grads = _problems.gradient()(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def _signature(tree: Any) -> Any:
    return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]


def test_state_types() -> None:
    params = _problems.initial_params()
    # qhm and aggmo are chain(block, optax.scale_by_learning_rate): the block's
    # state comes first.
    qhm_state = qhm(0.1).init(params)[0]
    assert isinstance(qhm_state, QHMState)
    assert qhm_state.count.dtype == jnp.int32
    assert qhm_state.count.shape == ()
    aggmo_state = aggmo(0.1, (0.0, 0.5, 0.9, 0.99)).init(params)[0]
    assert isinstance(aggmo_state, AggMoState)
    assert aggmo_state.count.dtype == jnp.int32
    assert isinstance(aggmo_state.buffers, tuple)
    assert len(aggmo_state.buffers) == 4
    for buffer in aggmo_state.buffers:
        assert _signature(buffer) == _signature(params)


def test_inject_hyperparams_aggmo_keeps_momenta_static() -> None:
    momenta = (0.0, 0.9, 0.99)
    direct = _problems.trajectory(aggmo(0.05, momenta), 20)
    injected_tx = optax.inject_hyperparams(aggmo)(learning_rate=0.05, momenta=momenta)
    state = injected_tx.init(_problems.initial_params())
    # The integer seed is numeric, so it is injected too (and changes nothing here).
    assert set(state.hyperparams) == {"learning_rate", "seed"}
    assert len(state.inner_state[0].buffers) == 3
    _problems.assert_trajectories_close(
        _problems.trajectory(injected_tx, 20), direct, rtol=1e-6, atol=1e-7
    )
    # An array of momenta is numeric, so inject_hyperparams traces it instead.
    traced_tx = optax.inject_hyperparams(aggmo)(learning_rate=0.05, momenta=jnp.asarray(momenta))
    params = _problems.initial_params()
    state = traced_tx.init(params)
    assert set(state.hyperparams) == {"learning_rate", "momenta", "seed"}
    step = jax.jit(lambda p, s: _step(traced_tx, p, s))
    traced = []
    for _ in range(20):
        params, state = step(params, state)
        traced.append(jax.tree.map(np.asarray, params))
    _problems.assert_trajectories_close(traced, direct, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("row", VARIANTS, ids=ids(VARIANTS))
def test_bfloat16_params_with_float32_buffers(row: Row) -> None:
    tx = row.build(accumulator_dtype=jnp.float32)
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _problems.initial_params())
    state = tx.init(params)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state[0])[1:])
    before = _signature(state)
    step = jax.jit(lambda p, s: _step(tx, p, s))
    for _ in range(10):
        grads = _problems.gradient()(params)
        updates, _ = tx.update(grads, state, params)
        assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
        params, state = step(params, state)
        assert _signature(state) == before
    reference = _problems.trajectory(row.build(), 10)[-1]
    for key in reference:
        assert params[key].dtype == jnp.bfloat16
        np.testing.assert_allclose(
            np.asarray(params[key], np.float32), reference[key], rtol=3e-2, atol=3e-2
        )


def test_float32_buffer_keeps_small_qhm_increments_for_bfloat16_params() -> None:
    """With beta = 0.999 and g = 1 at every step, the buffer after n steps is 1 - 0.999^n.

    In bfloat16, 0.999 rounds to 1 and the increments fall below the spacing of
    the numbers, so only a float32 buffer follows the average.
    """
    tx = qhm(0.1, momentum=0.999, nu=0.7, accumulator_dtype=jnp.float32)
    params = jnp.zeros(4, jnp.bfloat16)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(300):
        _, state = update(jnp.ones(4, jnp.bfloat16), state)
    assert state[0].buffer.dtype == jnp.float32
    np.testing.assert_allclose(state[0].buffer, 1.0 - 0.999**300, rtol=1e-4)


def test_float32_buffers_for_bfloat16_params_aggmo() -> None:
    momenta = (0.0, 0.9, 0.99)
    tx = aggmo(0.1, momenta, accumulator_dtype=jnp.float32)
    state = tx.init(jnp.zeros(3, jnp.bfloat16))
    update = jax.jit(tx.update)
    for _ in range(100):
        updates, state = update(jnp.ones(3, jnp.bfloat16), state)
    assert updates.dtype == jnp.bfloat16
    for beta, buffer in zip(momenta, state[0].buffers, strict=True):
        assert buffer.dtype == jnp.float32
        np.testing.assert_allclose(buffer, (1.0 - beta**100) / (1.0 - beta), rtol=1e-5)
