"""Momentum schedules: published values, the closed forms, and use as ``momentum=``.

The references are the formulas as printed in the papers, evaluated in numpy
float64; they never call the schedules under test.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import momentum_jax
from momentum_jax import qhm, schedules
from tests import _problems

STEPS = 40

NpTree = _problems.NpTree
_np_grad = _problems.np_grad
_np_initial = _problems.np_initial


def sutskever_formula(t: int, max_momentum: float, steps_per_stage: int = 250) -> float:
    """Sutskever et al. (2013): min(1 - 2^(-1 - log2(floor(t / 250) + 1)), mu_max)."""
    return min(1.0 - 2.0 ** (-1.0 - math.log2(math.floor(t / steps_per_stage) + 1)), max_momentum)


def demon_formula(t: int, init_momentum: float, total_steps: int) -> float:
    """Chen et al.: beta0 (1 - t/T) / ((1 - beta0) + beta0 (1 - t/T)), and 0 from t = T on."""
    if t >= total_steps:
        return 0.0
    remaining = 1.0 - t / total_steps
    return init_momentum * remaining / ((1.0 - init_momentum) + init_momentum * remaining)


def _value(schedule: Callable[[Any], Any], t: int) -> float:
    return float(schedule(jnp.asarray(t, jnp.int32)))


# --------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------


def test_sutskever_published_values() -> None:
    """0.5, 0.75, 0.833, 0.875, then the cap 0.9 from t = 1000 (Sutskever et al., 2013)."""
    schedule = schedules.sutskever(0.9)
    got = [_value(schedule, t) for t in (0, 250, 500, 750, 1000, 1250, 10_000)]
    np.testing.assert_allclose(got, [0.5, 0.75, 0.833333, 0.875, 0.9, 0.9, 0.9], atol=1e-6)
    assert round(got[2], 3) == 0.833
    # Counts below 0 (optax.join_schedules evaluates a later schedule there) read as 0.
    assert [_value(schedule, t) for t in (-1, -250, -(2**31))] == [0.5] * 3


@pytest.mark.parametrize(
    ("max_momentum", "steps_per_stage"), [(0.9, 250), (0.99, 250), (0.999, 3), (0.995, 1)]
)
def test_sutskever_closed_form_including_stage_boundaries(
    max_momentum: float, steps_per_stage: int
) -> None:
    schedule = schedules.sutskever(max_momentum, steps_per_stage=steps_per_stage)
    times = {0, 1, 2, 10**6, 2**31 - 1}
    for stage in range(0, 60):
        start = stage * steps_per_stage
        times.update({start, start + 1, max(start - 1, 0), start + steps_per_stage // 2})
    for t in sorted(times):
        expected = sutskever_formula(t, max_momentum, steps_per_stage)
        assert _value(schedule, t) == pytest.approx(expected, rel=1e-6, abs=1e-7), f"t={t}"


def test_sutskever_stage_values_before_the_cap() -> None:
    """Stage k (t in [250k, 250(k+1))) has 1 - 1/(2k + 2): the schedule is a step function."""
    schedule = schedules.sutskever(0.999)
    for k in range(12):
        for t in (250 * k, 250 * k + 124, 250 * k + 249):
            assert _value(schedule, t) == pytest.approx(1.0 - 1.0 / (2 * k + 2), abs=1e-7)


def test_demon_published_values() -> None:
    """beta0 = 0.9, T = 100: 0.9, 0.871, 0.818, 0.692, 0.0 at t = 0, 25, 50, 75, 100."""
    schedule = schedules.demon(0.9, 100)
    got = [round(_value(schedule, t), 3) for t in (0, 25, 50, 75, 100)]
    assert got == [0.9, 0.871, 0.818, 0.692, 0.0]
    # t = 0 gives beta0 itself, eagerly and under jit.
    assert _value(schedule, 0) == float(np.float32(0.9))
    assert float(jax.jit(schedule)(0)) == float(np.float32(0.9))


def test_demon_closed_form_and_clamp_beyond_the_horizon() -> None:
    for init_momentum, total_steps in ((0.9, 100), (0.99, 7), (0.5, 1), (0.0, 10)):
        schedule = schedules.demon(init_momentum, total_steps)
        for t in [*range(0, 3 * total_steps + 2), 10**6, 2**31 - 1]:
            expected = demon_formula(t, init_momentum, total_steps)
            got = _value(schedule, t)
            assert got == pytest.approx(expected, rel=1e-6, abs=1e-7), f"t={t}"
            if t >= total_steps:
                assert got == 0.0
        for t in (-1, -total_steps, -(2**31)):  # below 0: as at 0
            assert _value(schedule, t) == _value(schedule, 0), f"t={t}"


def test_demon_decays_the_total_future_weight_linearly() -> None:
    """The paper's motivation: mu_t / (1 - mu_t) = (1 - t/T) beta0 / (1 - beta0)."""
    schedule = schedules.demon(0.95, 50)
    for t in range(0, 50, 7):
        mu = _value(schedule, t)
        assert mu / (1.0 - mu) == pytest.approx((1.0 - t / 50) * 0.95 / 0.05, rel=1e-5)


@pytest.mark.parametrize(
    "schedule",
    [schedules.sutskever(0.99, 5), schedules.demon(0.9, 30)],
    ids=["sutskever", "demon"],
)
def test_schedules_are_jit_and_vmap_compatible_float32_scalars(
    schedule: Callable[[Any], Any],
) -> None:
    jitted = jax.jit(schedule)
    for t in (0, 4, 5, 29, 30, 31, 200):
        eager = schedule(t)
        traced = jitted(jnp.asarray(t, jnp.int32))
        for value in (eager, traced, schedule(jnp.asarray(t))):
            assert value.shape == ()
            assert value.dtype == jnp.float32
        assert float(traced) == pytest.approx(float(eager), rel=1e-6, abs=1e-7)
    counts = jnp.arange(60, dtype=jnp.int32)
    batched = jax.vmap(schedule)(counts)
    assert batched.dtype == jnp.float32
    expected = [float(schedule(int(t))) for t in counts]
    np.testing.assert_allclose(batched, expected, rtol=1e-6, atol=1e-7)


def test_schedules_accept_traced_hyperparameters() -> None:
    @jax.jit
    def values(max_momentum: jax.Array, init_momentum: jax.Array) -> jax.Array:
        return jnp.stack(
            [schedules.sutskever(max_momentum)(1000), schedules.demon(init_momentum, 100)(50)]
        )

    np.testing.assert_allclose(values(0.8, 0.9), [0.8, 0.45 / 0.55], rtol=1e-6)
    # Integer arguments too: a sweep over stage lengths and horizons, one program.
    sweep = jax.vmap(
        lambda s, t: jnp.stack([schedules.sutskever(0.99, s)(600), schedules.demon(0.9, t)(50)])
    )
    lengths, horizons = jnp.asarray([250, 100]), jnp.asarray([100, 200])
    expected = [
        [sutskever_formula(600, 0.99, s), demon_formula(50, 0.9, t)]
        for s, t in ((250, 100), (100, 200))
    ]
    np.testing.assert_allclose(sweep(lengths, horizons), expected, rtol=1e-6)


def test_traced_arguments_out_of_range_make_the_values_and_the_update_nan() -> None:
    # Built under vmap (a sweep), no argument is checked in Python: out of range is NaN.
    sweep = jax.vmap(
        lambda mu, s, b, t: jnp.stack([schedules.sutskever(mu, s)(600), schedules.demon(b, t)(50)])
    )
    got = sweep(
        jnp.asarray([0.99, 1.5, 0.99, -0.1]),
        jnp.asarray([100, 100, 0, 100]),
        jnp.asarray([0.9, -0.5, 0.9, 1.0]),
        jnp.asarray([100, 100, -9, 100]),
    )
    np.testing.assert_allclose(got[0], [sutskever_formula(600, 0.99, 100), 0.45 / 0.55], rtol=1e-6)
    assert np.isnan(np.asarray(got[1:])).all()

    @jax.jit
    def first_update(steps_per_stage: jax.Array) -> jax.Array:
        tx = momentum_jax.nesterov(0.1, schedules.sutskever(0.9, steps_per_stage))
        return tx.update(jnp.ones(3), tx.init(jnp.zeros(3)))[0]

    assert np.isfinite(np.asarray(first_update(250))).all()
    assert np.isnan(np.asarray(first_update(0))).all()


# --------------------------------------------------------------------------
# As the momentum of every transform
# --------------------------------------------------------------------------

SCHEDULES: dict[str, tuple[Callable[[Any], Any], Callable[[int], float]]] = {
    # Small stages and horizons, so the momentum changes many times in 40 steps
    # and Demon reaches 0 before the end.
    "sutskever": (
        schedules.sutskever(0.95, steps_per_stage=4),
        lambda t: sutskever_formula(t, 0.95, 4),
    ),
    "demon": (schedules.demon(0.9, total_steps=30), lambda t: demon_formula(t, 0.9, 30)),
}
each_schedule = pytest.mark.parametrize(
    ("schedule", "formula"), list(SCHEDULES.values()), ids=list(SCHEDULES)
)


def _run_numpy(
    rule: Callable[[int, str, NpTree, NpTree, dict[str, Any]], np.ndarray],
) -> list[NpTree]:
    """theta[key] <- rule(t, key, theta, grad, memory) for t = 1..STEPS."""
    theta, memory, out = _np_initial(), {}, []
    for t in range(1, STEPS + 1):
        grad = _np_grad(theta)
        theta = {key: rule(t, key, theta, grad, memory) for key in theta}
        out.append(theta)
    return out


@each_schedule
def test_heavy_ball_under_a_momentum_schedule(
    schedule: Callable[[Any], Any], formula: Callable[[int], float]
) -> None:
    """v_t = mu(t-1) v_{t-1} + lr g_t; theta -= v_t (the schedule sees count = t - 1)."""
    lr = 0.05

    def rule(t: int, key: str, theta: NpTree, grad: NpTree, memory: dict[str, Any]) -> np.ndarray:
        memory[key] = formula(t - 1) * memory.get(key, 0.0) + lr * grad[key]
        return theta[key] - memory[key]

    reference = _run_numpy(rule)
    ours = _problems.trajectory(momentum_jax.momentum(lr, momentum=schedule), STEPS)
    _problems.assert_trajectories_close(ours, reference)
    injected = optax.inject_hyperparams(momentum_jax.momentum)(learning_rate=lr, momentum=schedule)
    _problems.assert_trajectories_close(_problems.trajectory(injected, STEPS), reference)


@each_schedule
def test_gradient_buffer_under_a_momentum_schedule(
    schedule: Callable[[Any], Any], formula: Callable[[int], float]
) -> None:
    """PyTorch's form: b_1 = g_1, b_t = mu(t-1) b_{t-1} + g_t; theta -= lr b_t."""
    lr = 0.05

    def rule(t: int, key: str, theta: NpTree, grad: NpTree, memory: dict[str, Any]) -> np.ndarray:
        memory[key] = grad[key] if t == 1 else formula(t - 1) * memory[key] + grad[key]
        return theta[key] - lr * memory[key]

    tx = optax.chain(momentum_jax.scale_by_momentum(schedule), optax.scale_by_learning_rate(lr))
    _problems.assert_trajectories_close(_problems.trajectory(tx, STEPS), _run_numpy(rule))


@each_schedule
def test_qhm_under_a_momentum_schedule(
    schedule: Callable[[Any], Any], formula: Callable[[int], float]
) -> None:
    """b_t = beta(t-1) b_{t-1} + (1 - beta(t-1)) g_t; theta -= lr ((1 - nu) g_t + nu b_t)."""
    lr, nu = 0.3, 0.7

    def rule(t: int, key: str, theta: NpTree, grad: NpTree, memory: dict[str, Any]) -> np.ndarray:
        beta = formula(t - 1)
        memory[key] = beta * memory.get(key, 0.0) + (1.0 - beta) * grad[key]
        return theta[key] - lr * ((1.0 - nu) * grad[key] + nu * memory[key])

    ours = _problems.trajectory(qhm(lr, momentum=schedule, nu=nu), STEPS)
    _problems.assert_trajectories_close(ours, _run_numpy(rule))


@each_schedule
@pytest.mark.parametrize("decaying_lr", [False, True], ids=["constant_lr", "decaying_lr"])
def test_nesterov_under_a_schedule_is_sutskevers_look_ahead(
    schedule: Callable[[Any], Any], formula: Callable[[int], float], decaying_lr: bool
) -> None:
    """Sutskever et al. (2013), NAG computed literally, with the gradient at the look-ahead point.

        v_{t+1} = mu_t v_t - eps_t grad f(theta_t + mu_t v_t);  theta_{t+1} = theta_t + v_{t+1}

    momentum_jax.nesterov keeps Theta_t = theta_t + mu_t v_t in the params, so
    after the update with count t its params must equal theta_{t+1} + mu_{t+1} v_{t+1}.
    """
    eps = (lambda k: 0.05 * 0.97**k) if decaying_lr else (lambda k: 0.05)
    theta, v, reference = _np_initial(), {key: 0.0 for key in ("w", "b")}, []
    for t in range(STEPS):
        mu = formula(t)
        look_ahead = {key: theta[key] + mu * v[key] for key in theta}
        grad = _np_grad(look_ahead)
        v = {key: mu * v[key] - eps(t) * grad[key] for key in theta}
        theta = {key: theta[key] + v[key] for key in theta}
        reference.append({key: theta[key] + formula(t + 1) * v[key] for key in theta})
    ours = _problems.trajectory(momentum_jax.nesterov(eps, momentum=schedule), STEPS)
    _problems.assert_trajectories_close(ours, reference)
    # The schedule really moves within the run.
    assert len({round(formula(t), 6) for t in range(STEPS + 1)}) > 5


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (
            lambda: schedules.sutskever(1.0),
            ValueError,
            r"sutskever: max_momentum must be in \[0, 1\), got max_momentum=1\.0",
        ),
        (
            lambda: schedules.sutskever(-0.1),
            ValueError,
            r"sutskever: max_momentum must be in \[0, 1\), got max_momentum=-0\.1",
        ),
        (
            lambda: schedules.sutskever(0.9, 0),
            ValueError,
            r"sutskever: steps_per_stage must be in \[1, 2147483647\], got steps_per_stage=0\.",
        ),
        (
            lambda: schedules.sutskever(0.9, -250),
            ValueError,
            r"sutskever: steps_per_stage must be in \[1, 2147483647\], got steps_per_stage=-250\.",
        ),
        (
            lambda: schedules.sutskever(0.9, 2.5),
            TypeError,
            r"sutskever: steps_per_stage must be an integer, got 2\.5\.",
        ),
        (
            lambda: schedules.sutskever(0.9, True),
            TypeError,
            r"sutskever: steps_per_stage must be an integer, got True\.",
        ),
        (
            lambda: schedules.sutskever("0.9"),
            TypeError,
            r"sutskever: max_momentum must be a real number, got '0\.9'\.",
        ),
        (
            lambda: schedules.demon(1.0, 100),
            ValueError,
            r"demon: init_momentum must be in \[0, 1\), got init_momentum=1\.0",
        ),
        (
            lambda: schedules.demon(0.9, 0),
            ValueError,
            r"demon: total_steps must be in \[1, 2147483647\], got total_steps=0\.",
        ),
        (
            lambda: schedules.demon(0.9, 100.0),
            TypeError,
            r"demon: total_steps must be an integer, got 100\.0\.",
        ),
    ],
)
def test_bad_input(build: Callable[[], Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=r"^momentum_jax\.schedules\." + match):
        build()


def test_numpy_integers_are_accepted() -> None:
    assert _value(schedules.sutskever(0.9, np.int64(10)), 10) == 0.75
    assert _value(schedules.demon(0.9, np.int32(10)), 10) == 0.0


def test_injected_nesterov_keeps_the_exact_look_ahead_only_with_a_static_schedule() -> None:
    # Injected, the momentum is one number per step, so the look-ahead uses mu_t where
    # the schedule gives mu_{t+1} (the docstrings say so); static, it is the schedule.
    schedule = optax.linear_schedule(0.5, 0.95, 10)
    plain = _problems.trajectory(momentum_jax.nesterov(0.05, schedule), STEPS)
    static = optax.inject_hyperparams(momentum_jax.nesterov, static_args=("momentum",))
    _problems.assert_trajectories_close(
        _problems.trajectory(static(learning_rate=0.05, momentum=schedule), STEPS), plain
    )
    injected = optax.inject_hyperparams(momentum_jax.nesterov)(
        learning_rate=0.05, momentum=schedule
    )
    with pytest.raises(AssertionError):
        _problems.assert_trajectories_close(_problems.trajectory(injected, STEPS), plain)


@pytest.mark.parametrize("total_steps", [2**24 + 3, 50_000_000])
def test_demon_is_accurate_at_the_end_of_long_runs(total_steps: int) -> None:
    # Beyond 2**24 float32 holds no step count exactly: T - t must not round to 0 or double.
    schedule = schedules.demon(0.999, total_steps)
    for t in (total_steps - k for k in (1, 2, 3, 17, 1000)):
        left = 1 - t / total_steps
        expected = 0.999 * left / ((1 - 0.999) + 0.999 * left)
        np.testing.assert_allclose(float(schedule(jnp.int32(t))), expected, rtol=1e-3)
