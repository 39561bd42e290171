"""Trajectories pinned from momentum_jax 0.1.0 (commit 26c16e8).

``tests/golden/make_golden.py`` wrote the fixture on that commit; every later
version must reproduce it bit for bit, except where a documented change of
composition moves a rounding (listed in ``ULP_TOLERANCE`` with the reason).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

import momentum_jax
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


def test_restore_state_refuses_a_state_of_another_shape() -> None:
    tx = momentum_jax.momentum(0.1)
    old = {"count": np.int32(2), "velocity": np.zeros(3, np.float32)}
    with pytest.raises(
        ValueError,
        match=r"the field state\.velocity has shape \(3,\), expected \(2,\); rebuild the transform as it was saved\.",
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
