"""Long runs: the int32 step counter saturates, and a million steps stay finite.

The counter of every transform stops at int32's maximum instead of wrapping to
a negative count (which would fire first-step rules and schedules at step 0
again), and a million steps on a quadratic with curvatures spanning 20x stay
finite and converge to the minimum.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import momentum_jax
from momentum_jax import schedules
from tests._problems import assert_trees_equal, counts, fixed_grads, jitted_step, small_params
from tests._table import BUFFER_TRANSFORMS, STATELESS, Row, ids

INT32_MAX = int(np.iinfo(np.int32).max)


def _constant(value: float) -> Callable[[Any], Any]:
    # A schedule, so the presets keep a counter, but one whose value does not
    # depend on it: a saturated counter must then change nothing.
    return lambda count: jnp.asarray(value, jnp.float32) + 0.0 * count


def _counter_blind(row: Row) -> optax.GradientTransformation:
    """The row with each non-zero hyperparameter its transform takes a schedule for as a
    schedule that ignores the count (zero momenta stay numbers: no buffer for them)."""
    own = inspect.signature(row.public).parameters
    return row.build(
        **{
            name: _constant(value)
            for name, value in row.hyper.items()
            if name in ("learning_rate", "lr", "momentum", "nu") and name in own and value
        }
    )


# Stochastic rounding draws its bits from the count: not counter-blind.
SATURATION = BUFFER_TRANSFORMS + STATELESS


@pytest.mark.parametrize("row", SATURATION, ids=ids(SATURATION))
def test_step_counter_saturates_at_int32_max(row: Row) -> None:
    tx = _counter_blind(row)
    step = jitted_step(tx)
    params = small_params()
    state = tx.init(params)
    _, state = step(params, state, fixed_grads(0))
    assert counts(state), "this transform keeps no step counter"
    near_max = optax.tree_utils.tree_set(state, count=jnp.asarray(INT32_MAX - 2, jnp.int32))
    ordinary = optax.tree_utils.tree_set(state, count=jnp.asarray(1000, jnp.int32))
    p_near, p_ord = params, params
    seen = []
    for k in range(1, 6):
        p_near, near_max = step(p_near, near_max, fixed_grads(k))
        p_ord, ordinary = step(p_ord, ordinary, fixed_grads(k))
        seen.append(counts(near_max))
    expected = [INT32_MAX - 1, INT32_MAX, INT32_MAX, INT32_MAX, INT32_MAX]
    assert [set(c) for c in seen] == [{c} for c in expected]
    for _, count in optax.tree_utils.tree_get_all_with_path(near_max, "count"):
        assert count.dtype == jnp.int32
    # Hyperparameters that ignore the counter: the saturated run is the
    # ordinary run, bit for bit (no wrap to a negative count, no first-step rule
    # firing again).
    assert_trees_equal(p_near, p_ord, "params with a saturated counter")
    assert_trees_equal(
        optax.tree_utils.tree_set(near_max, count=jnp.asarray(0, jnp.int32)),
        optax.tree_utils.tree_set(ordinary, count=jnp.asarray(0, jnp.int32)),
        "state with a saturated counter",
    )


def test_a_schedule_reads_the_saturated_count() -> None:
    """At int32's largest count Nesterov's look-ahead reads the schedule at that count, not
    at a count wrapped to -2**31 (where Sutskever's momentum is its first stage's 0.5)."""
    tx = momentum_jax.nesterov(0.1, schedules.sutskever(0.9))
    _, state = tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))  # v = 0.1
    for count in (INT32_MAX - 1, INT32_MAX):
        at = state._replace(count=jnp.asarray(count, jnp.int32))
        updates, after = jax.jit(tx.update)(jnp.ones(2), at)
        # v = 0.9 * 0.1 + 0.1 * 1; the update -(0.9 * v + 0.1 * 1), the paper's look-ahead.
        np.testing.assert_allclose(updates, -(0.9 * 0.19 + 0.1), rtol=1e-6)
        assert int(after.count) == INT32_MAX


def _quadratic_grad(x: jax.Array) -> jax.Array:
    # f(x) = 0.5 * sum(h * (x - c)**2): curvatures spanning 20x, minimum at c.
    h = jnp.array([0.5, 2.0, 10.0])
    c = jnp.array([1.0, -2.0, 0.5])
    return h * (x - c)


# One row per public transform that keeps a buffer.
MILLION = BUFFER_TRANSFORMS


@pytest.mark.slow  # a million steps per transform
@pytest.mark.parametrize("row", MILLION, ids=ids(MILLION))
def test_a_million_steps_stay_finite_and_converge(row: Row) -> None:
    tx = row.build()
    if row.public is momentum_jax.lion:
        # A step of ±α in every coordinate settles within α of the minimum (and weight
        # decay moves the minimum): Lion converges as its learning rate decays.
        tx = row.build(learning_rate=optax.exponential_decay(0.05, 1000, 0.98), weight_decay=0.0)
    steps = 1_000_000

    @jax.jit
    def run(x: jax.Array) -> Any:
        def body(carry: Any, _: None) -> tuple[Any, None]:
            x, state = carry
            updates, state = tx.update(_quadratic_grad(x), state, x)
            return (optax.apply_updates(x, updates), state), None

        return jax.lax.scan(body, (x, tx.init(x)), length=steps, unroll=8)[0]

    x, state = run(jnp.array([3.0, 3.0, 3.0]))
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves((x, state)))
    target = np.array([1.0, -2.0, 0.5], np.float32)
    np.testing.assert_allclose(x, target, rtol=1e-5, atol=1e-6)
    assert set(counts(state)) <= {steps}
