"""Trajectories pinned from momentum_jax 0.1.0 (commit 26c16e8).

``tests/golden/make_golden.py`` wrote the fixture on that commit; every later
version must reproduce it bit for bit, except where a documented change of
composition moves a rounding (listed in ``ULP_TOLERANCE`` with the reason).
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import momentum_jax
from tests import _problems
from tests.golden import make_golden

pytestmark = pytest.mark.slow  # replays 0.1.0's recorded runs

# Transforms whose float32 rounding legitimately changed since 0.1.0, with the
# largest difference allowed, in units in the last place of the param.
# aggmo: 0.1.0 applied -(lr / K) to the sum of the buffers in one multiply;
# api.md makes it chain(scale_by_aggmo, scale_by_learning_rate), which divides
# the sum by K and then multiplies by -lr: two roundings instead of one. With
# K = 3 (the default) that moves one step by at most 1 ulp (see
# test_aggmo_step_moves_by_at_most_one_rounding); over 25 steps on this
# problem it reaches 56 ulp on params that pass close to zero. K = 1 and 2
# divide exactly and stay bit-identical.
ULP_TOLERANCE: dict[str, int] = {"aggmo": 64}


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(make_golden.FIXTURE) as data:
        return dict(data)


@pytest.mark.parametrize("name", sorted(make_golden.cases()))
def test_trajectory_matches_0_1_0(name: str, golden: dict[str, np.ndarray]) -> None:
    steps = make_golden.run(name)
    for key in steps[0]:
        ours = np.stack([step[key] for step in steps])
        expected = golden[f"{name}/{key}"]
        assert ours.dtype == expected.dtype
        ulps = ULP_TOLERANCE.get(name, 0)
        if ulps == 0:
            np.testing.assert_array_equal(ours, expected, err_msg=f"{name}: param {key}")
        else:
            np.testing.assert_array_max_ulp(ours, expected, maxulp=ulps)


@pytest.fixture(scope="module")
def old_states() -> dict[str, Any]:
    return make_golden.load_states(make_golden.STATES)


@pytest.mark.parametrize("name", sorted(make_golden.cases()))
def test_restore_state_continues_a_0_1_0_run(
    name: str, golden: dict[str, np.ndarray], old_states: dict[str, Any]
) -> None:
    # The state saved by 0.1.0 after STATE_STEP updates, restored into today's
    # layout, continues the 0.1.0 trajectory.
    start = make_golden.STATE_STEP
    params = {key: jnp.asarray(golden[f"{name}/{key}"][start - 1]) for key in ("w", "b")}
    tx = make_golden.cases()[name]()
    state = momentum_jax.restore_state(old_states[name], tx, params)
    chex.assert_trees_all_equal_structs(state, tx.init(params))
    for step in range(start, make_golden.STEPS):
        grads = jax.grad(_problems.loss)(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        for key in ("w", "b"):
            expected = golden[f"{name}/{key}"][step]
            ulps = ULP_TOLERANCE.get(name, 0)
            if ulps == 0:
                np.testing.assert_array_equal(params[key], expected, err_msg=f"{name} {key}")
            else:
                np.testing.assert_array_max_ulp(np.asarray(params[key]), expected, maxulp=ulps)


def test_restore_state_refuses_a_state_of_another_shape() -> None:
    tx = momentum_jax.momentum(0.1)
    old = {"count": np.int32(2), "velocity": np.zeros(3, np.float32)}
    with pytest.raises(
        ValueError, match=r"state.velocity of the old state has shape \(3,\).*\(2,\)"
    ):
        momentum_jax.restore_state(old, tx, jnp.zeros(2))
    with pytest.raises(ValueError, match=r"state.velocity is missing from the old state"):
        momentum_jax.restore_state({"count": np.int32(2)}, tx, jnp.zeros(2))


def test_aggmo_step_moves_by_at_most_one_rounding() -> None:
    # 0.1.0 computed -(lr / K) * sum; 0.2.0 is scale_by_aggmo's sum / K, then
    # optax.scale_by_learning_rate's -lr: one step differs by one rounding, plus
    # at most one more from the order XLA adds the three buffers in (jax 0.4.35
    # adds them in another order than this reference does).
    g = jnp.asarray(np.random.default_rng(0).normal(size=1000), jnp.float32)
    tx = momentum_jax.aggmo(0.05)
    state = tx.init(g)
    for _ in range(3):
        old_buffers = [0.0 * g, 0.9 * state[0].buffers[1], 0.99 * state[0].buffers[2]]
        updates, state = tx.update(g, state)
        total = sum(b + g for b in old_buffers)
        np.testing.assert_array_max_ulp(updates, -(0.05 / 3) * total, maxulp=2)


def test_restore_state_takes_the_0_1_0_namedtuples() -> None:
    # 0.1.0's qhm state was a bare QHMState; 0.2.0's is (QHMState, scale state).
    params = {"w": jnp.ones(2)}
    old = momentum_jax.QHMState(jnp.asarray(7, jnp.int32), {"w": jnp.array([0.5, -0.5])})
    tx = momentum_jax.qhm(optax.linear_schedule(0.1, 0.0, 10), 0.9)
    state = momentum_jax.restore_state(old, tx, params)
    assert isinstance(state[0], momentum_jax.QHMState)
    assert int(state[0].count) == 7
    assert int(state[1].count) == 7  # the learning-rate schedule continues too
    np.testing.assert_array_equal(state[0].buffer["w"], [0.5, -0.5])
