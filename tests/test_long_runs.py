"""Long runs: the int32 step counter saturates, and a million steps stay finite.

The counter of every transform stops at int32's maximum instead of wrapping to
a negative count (which would fire first-step rules and schedules at step 0
again), and a million steps on a quadratic with curvatures spanning 20x stay
finite and converge to the minimum.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import momentum_jax
from momentum_jax import aggmo, compat, qhm
from tests.test_bad_input import Factory, _assert_trees_equal, _counts, _grads, _ids, _params, _step

INT32_MAX = int(np.iinfo(np.int32).max)


def _constant(value: float) -> Callable[[Any], Any]:
    # A schedule, so the presets keep a counter, but one whose value does not
    # depend on it: a saturated counter must then change nothing.
    return lambda count: jnp.asarray(value, jnp.float32) + 0.0 * count


SATURATION: dict[str, Factory] = {
    "momentum": lambda: momentum_jax.momentum(_constant(0.05), _constant(0.9)),
    "nesterov": lambda: momentum_jax.nesterov(_constant(0.05), _constant(0.9)),
    "scale_by_momentum": lambda: momentum_jax.scale_by_momentum(_constant(0.9), dampening=0.1),
    "torch_sgd": lambda: compat.torch_sgd(_constant(0.05), 0.9, dampening=0.1, weight_decay=1e-3),
    "torch_sgd_no_momentum": lambda: compat.torch_sgd(_constant(0.05)),
    "keras_sgd": lambda: compat.keras_sgd(_constant(0.05), 0.9, nesterov=True, weight_decay=0.1),
    "keras_sgd_no_momentum": lambda: compat.keras_sgd(_constant(0.05)),
    "tf1_momentum": lambda: compat.tf1_momentum(_constant(0.05), _constant(0.9)),
    "qhm": lambda: qhm(_constant(0.05), _constant(0.9), _constant(0.7)),
    "aggmo": lambda: aggmo(_constant(0.05), (0.0, 0.9)),
}


@pytest.mark.parametrize("factory", **_ids(SATURATION))
def test_step_counter_saturates_at_int32_max(factory: Factory) -> None:
    tx = factory()
    step = _step(tx)
    params = _params()
    state = tx.init(params)
    _, state = step(params, state, _grads(0))
    assert _counts(state), "this transform keeps no step counter"
    near_max = optax.tree_utils.tree_set(state, count=jnp.asarray(INT32_MAX - 2, jnp.int32))
    ordinary = optax.tree_utils.tree_set(state, count=jnp.asarray(1000, jnp.int32))
    p_near, p_ord = params, params
    seen = []
    for k in range(1, 6):
        p_near, near_max = step(p_near, near_max, _grads(k))
        p_ord, ordinary = step(p_ord, ordinary, _grads(k))
        seen.append(_counts(near_max))
    expected = [INT32_MAX - 1, INT32_MAX, INT32_MAX, INT32_MAX, INT32_MAX]
    assert [set(counts) for counts in seen] == [{c} for c in expected]
    for _, count in optax.tree_utils.tree_get_all_with_path(near_max, "count"):
        assert count.dtype == jnp.int32
    # Hyperparameters that ignore the counter: the saturated run is the
    # ordinary run, bit for bit (no wrap to a negative count, no first-step rule
    # firing again).
    _assert_trees_equal(p_near, p_ord, "params with a saturated counter")
    _assert_trees_equal(
        optax.tree_utils.tree_set(near_max, count=jnp.asarray(0, jnp.int32)),
        optax.tree_utils.tree_set(ordinary, count=jnp.asarray(0, jnp.int32)),
        "state with a saturated counter",
    )


def _quadratic_grad(x: jax.Array) -> jax.Array:
    # f(x) = 0.5 * sum(h * (x - c)**2): curvatures spanning 20x, minimum at c.
    h = jnp.array([0.5, 2.0, 10.0])
    c = jnp.array([1.0, -2.0, 0.5])
    return h * (x - c)


MILLION: dict[str, Factory] = {
    "momentum": lambda: momentum_jax.momentum(0.1, 0.9),
    "nesterov": lambda: momentum_jax.nesterov(0.1, 0.9),
    "torch_sgd": lambda: compat.torch_sgd(0.1, 0.9, nesterov=True),
    "tf1_momentum": lambda: compat.tf1_momentum(0.1, 0.9),
    "keras_sgd": lambda: compat.keras_sgd(0.1, 0.9, weight_decay=1e-6),
    "qhm": lambda: qhm(0.1, 0.9, 0.7),
    "aggmo": lambda: aggmo(0.05, (0.0, 0.9, 0.99)),
}


@pytest.mark.slow  # a million steps per transform
@pytest.mark.parametrize("factory", **_ids(MILLION))
def test_a_million_steps_stay_finite_and_converge(factory: Factory) -> None:
    tx = factory()
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
    assert set(_counts(state)) <= {steps}
