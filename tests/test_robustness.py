"""Hostile input seen from the user's side: NaN/Inf gradients, wrong types, long runs.

Every public transform is exercised, compat presets included, and each bad
input must be refused with an error that says what is wrong and where.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import momentum_jax
from momentum_jax import compat

INT32_MAX = int(np.iinfo(np.int32).max)
Factory = Callable[[], optax.GradientTransformation]


QHM = momentum_jax.qhm
AGGMO = momentum_jax.aggmo

# Transforms that keep a param-shaped buffer.
STATEFUL: dict[str, Factory] = {
    "momentum": lambda: momentum_jax.momentum(0.05, 0.9, weight_decay=1e-3),
    "nesterov": lambda: momentum_jax.nesterov(0.05, 0.9),
    "scale_by_momentum": lambda: momentum_jax.scale_by_momentum(0.9, dampening=0.1),
    "scale_by_momentum_nesterov": lambda: momentum_jax.scale_by_momentum(0.9, nesterov=True),
    "torch_sgd": lambda: compat.torch_sgd(0.05, 0.9, dampening=0.1),
    "keras_sgd": lambda: compat.keras_sgd(0.05, 0.9, nesterov=True, weight_decay=1e-3),
    "tf1_momentum": lambda: compat.tf1_momentum(0.05, 0.9, use_nesterov=True),
}
STATEFUL["qhm"] = lambda: momentum_jax.qhm(0.05, 0.9, 0.7)
STATEFUL["aggmo"] = lambda: momentum_jax.aggmo(0.05, (0.0, 0.9, 0.99))

# With momentum=0 the presets keep no buffer, as PyTorch and Keras do.
STATELESS: dict[str, Factory] = {
    "torch_sgd_no_momentum": lambda: compat.torch_sgd(0.05, weight_decay=1e-3),
    "keras_sgd_no_momentum": lambda: compat.keras_sgd(0.05),
}
EVERY = {**STATEFUL, **STATELESS}


def _ids(table: dict[str, Any]) -> dict[str, Any]:
    return {"argvalues": list(table.values()), "ids": list(table)}


def _params() -> dict[str, jax.Array]:
    return {"w": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array([[0.25, -0.75]])}


def _grads(k: int) -> dict[str, jax.Array]:
    # A fixed sequence that does not depend on the params, so only the
    # optimizer can carry a NaN from one step to the next.
    return {
        "w": jnp.array([1.0, -0.5, 0.25]) * (1.0 + 0.1 * k),
        "b": jnp.array([[-0.3, 0.7]]) / (1.0 + k),
    }


def _with_nan(grads: dict[str, jax.Array], value: float) -> dict[str, jax.Array]:
    return {**grads, "w": grads["w"].at[1].set(value)}


def _counts(state: Any) -> list[int]:
    return [int(c) for _, c in optax.tree_utils.tree_get_all_with_path(state, "count")]


def _step(tx: optax.GradientTransformation) -> Callable[..., Any]:
    @jax.jit
    def step(params: Any, state: Any, grads: Any) -> Any:
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def _assert_trees_equal(a: Any, b: Any, what: str) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b), what
    for path_leaf, other in zip(
        jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True
    ):
        path, leaf = path_leaf
        assert np.array_equal(leaf, other), f"{what}: {jax.tree_util.keystr(path)} changed"


# --- NaN and Inf gradients ------------------------------------------------------


@pytest.mark.parametrize("factory", **_ids(EVERY))
def test_apply_if_finite_skips_bad_steps_without_touching_anything(factory: Factory) -> None:
    guarded = optax.apply_if_finite(factory(), max_consecutive_errors=5)
    step = _step(guarded)
    params = _params()
    state = guarded.init(params)
    reference_params, reference_state = params, state
    for k in range(3):
        params, state = step(params, state, _grads(k))
        reference_params, reference_state = step(reference_params, reference_state, _grads(k))
    counts_before = _counts(state.inner_state)
    for bad in (np.nan, np.inf, -np.inf):
        new_params, new_state = step(params, state, _with_nan(_grads(3), bad))
        _assert_trees_equal(new_params, params, f"params after a {bad} gradient")
        _assert_trees_equal(new_state.inner_state, state.inner_state, f"state after {bad}")
        params, state = new_params, new_state
    assert _counts(state.inner_state) == counts_before
    assert int(state.notfinite_count) == 3
    assert int(state.total_notfinite) == 3
    # The run then goes on exactly as if the bad steps never happened.
    for k in range(3, 6):
        params, state = step(params, state, _grads(k))
        reference_params, reference_state = step(reference_params, reference_state, _grads(k))
    _assert_trees_equal(params, reference_params, "params after recovering")
    _assert_trees_equal(state.inner_state, reference_state.inner_state, "state after recovering")
    assert int(state.notfinite_count) == 0
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params))


def test_apply_if_finite_gives_up_after_max_consecutive_errors() -> None:
    """optax's guard applies the bad update once the limit is exceeded: pick the limit with care."""
    guarded = optax.apply_if_finite(momentum_jax.momentum(0.05, 0.9), max_consecutive_errors=2)
    step = _step(guarded)
    params = _params()
    state = guarded.init(params)
    params, state = step(params, state, _grads(0))
    for _ in range(2):
        params, state = step(params, state, _with_nan(_grads(1), np.nan))
        assert np.all(np.isfinite(params["w"]))
    params, state = step(params, state, _with_nan(_grads(1), np.nan))
    assert np.isnan(params["w"][1])
    assert np.isnan(state.inner_state.velocity["w"][1])


@pytest.mark.parametrize("factory", **_ids(STATEFUL))
@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_without_a_guard_a_bad_gradient_poisons_the_velocity_for_good(
    factory: Factory, bad: float
) -> None:
    tx = factory()
    step = _step(tx)
    params = _params()
    state = tx.init(params)
    params, state = step(params, state, _grads(0))
    params, state = step(params, state, _with_nan(_grads(1), bad))
    for k in range(2, 12):
        params, state = step(params, state, _grads(k))
    # Momentum carries the bad value forever (mu * nan = nan, mu * inf = inf):
    # finite gradients never wash it out.
    assert not np.isfinite(params["w"][1])
    buffers = [leaf for leaf in jax.tree.leaves(state) if np.shape(leaf) == (3,)]
    assert buffers
    assert all(not np.isfinite(buffer[1]) for buffer in buffers)
    # The update is elementwise, so the other coordinates are unharmed (a real
    # loss couples coordinates, and then the NaN spreads through the gradient).
    assert np.all(np.isfinite(np.delete(np.asarray(params["w"]), 1)))
    assert np.all(np.isfinite(params["b"]))
    # The counter does not notice: it advanced once per call.
    assert set(_counts(state)) == {12}


@pytest.mark.parametrize("factory", **_ids(STATELESS))
def test_without_momentum_a_nan_stays_in_the_param(factory: Factory) -> None:
    tx = factory()
    step = _step(tx)
    params = _params()
    state = tx.init(params)
    params, state = step(params, state, _with_nan(_grads(0), np.nan))
    for k in range(1, 5):
        params, state = step(params, state, _grads(k))
    assert np.isnan(params["w"][1])
    assert np.all(np.isfinite(params["b"]))


# --- types the transforms cannot work with --------------------------------------


@pytest.mark.parametrize(
    "factory",
    [pytest.param(f, id=n) for n, f in EVERY.items()],
)
@pytest.mark.parametrize(
    ("leaf", "dtype"),
    [(jnp.zeros((), jnp.int32), "int32"), (jnp.zeros(2, jnp.bool_), "bool")],
    ids=["int32", "bool"],
)
def test_integer_and_boolean_params_get_no_buffer_and_a_none_update(
    factory: Factory, leaf: jax.Array, dtype: str
) -> None:
    # api.md "Leaves that do not train": as optax does for eqx.filter(model, eqx.is_array).
    tx = factory()
    params = {"w": jnp.zeros(3), "step": leaf}
    state = tx.init(params)
    assert len(jax.tree.leaves(state)) == len(jax.tree.leaves(tx.init({"w": jnp.zeros(3)})))
    updates, state = tx.update({"w": jnp.ones(3), "step": None}, state, params)
    assert updates["step"] is None
    assert np.all(np.asarray(updates["w"]) != 0)
    with pytest.raises(TypeError, match=r"gradient arrived for the param at \['step'\]"):
        tx.update({"w": jnp.ones(3), "step": jnp.ones_like(leaf, jnp.float32)}, state, params)


@pytest.mark.parametrize("factory", **_ids(EVERY))
def test_integer_gradients_are_refused(factory: Factory) -> None:
    tx = factory()
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    with pytest.raises(TypeError, match=r"gradient.*\['w'\].*int32"):
        tx.update({"w": jnp.ones(3, jnp.int32)}, state, params)


def _vector_schedule(count: Any) -> jax.Array:
    return jnp.full((3,), 0.05) + 0.0 * count


NON_SCALAR_SCHEDULES = [
    pytest.param(lambda s: momentum_jax.momentum(s, 0.9), "learning_rate", id="momentum-lr"),
    pytest.param(lambda s: momentum_jax.momentum(0.1, s), "momentum", id="momentum-momentum"),
    pytest.param(lambda s: momentum_jax.nesterov(s, 0.9), "learning_rate", id="nesterov-lr"),
    pytest.param(lambda s: momentum_jax.nesterov(0.1, s), "momentum", id="nesterov-momentum"),
    pytest.param(lambda s: momentum_jax.scale_by_momentum(s), "momentum", id="sbm-momentum"),
    pytest.param(lambda s: compat.torch_sgd(s, 0.9), "lr", id="torch_sgd-lr"),
    pytest.param(lambda s: compat.torch_sgd(0.1, s), "momentum", id="torch_sgd-momentum"),
    pytest.param(lambda s: compat.keras_sgd(s, 0.9), "learning_rate", id="keras_sgd-lr"),
    pytest.param(lambda s: compat.keras_sgd(s), "learning_rate", id="keras_sgd_no_mom-lr"),
    pytest.param(lambda s: compat.keras_sgd(0.1, s), "momentum", id="keras_sgd-momentum"),
    pytest.param(lambda s: compat.tf1_momentum(s, 0.9), "learning_rate", id="tf1-lr"),
    pytest.param(lambda s: compat.tf1_momentum(0.1, s), "momentum", id="tf1-momentum"),
]
NON_SCALAR_SCHEDULES += [
    pytest.param(lambda s: QHM(s, 0.9, 0.7), "learning_rate", id="qhm-lr"),
    pytest.param(lambda s: QHM(0.1, s, 0.7), "momentum", id="qhm-momentum"),
    pytest.param(lambda s: QHM(0.1, 0.9, s), "nu", id="qhm-nu"),
]
NON_SCALAR_SCHEDULES += [
    pytest.param(lambda s: AGGMO(s, (0.0, 0.9)), "learning_rate", id="aggmo-lr"),
]


@pytest.mark.parametrize(("build", "arg"), NON_SCALAR_SCHEDULES)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_schedule_returning_an_array_is_refused(
    build: Callable[[Any], optax.GradientTransformation], arg: str, jit: bool
) -> None:
    tx = build(_vector_schedule)
    params = jnp.zeros(3)
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    with pytest.raises(ValueError, match=rf"{arg} must evaluate to a scalar.*shape \(3,\)"):
        update(jnp.ones(3), state, params)


MISMATCH_CASES = {
    **STATEFUL,
    "torch_sgd_weight_decay": lambda: compat.torch_sgd(0.05, 0.9, weight_decay=1e-3),
}


@pytest.mark.parametrize(
    "factory",
    [pytest.param(f, id=n) for n, f in MISMATCH_CASES.items()],
)
@pytest.mark.parametrize(
    "grads",
    [{"w": jnp.ones(3)}, {"w": jnp.ones(3), "b": jnp.ones((1, 2)), "extra": jnp.ones(1)}],
    ids=["missing-leaf", "extra-leaf"],
)
def test_gradient_tree_that_does_not_match_the_state_names_both(
    factory: Factory, grads: dict[str, jax.Array]
) -> None:
    tx = factory()
    params = _params()
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"gradient tree does not match") as info:
        tx.update(grads, state, params)
    message = str(info.value)
    assert str(jax.tree.structure(grads)) in message
    assert str(jax.tree.structure(params)) in message


@pytest.mark.parametrize(
    "factory",
    [pytest.param(f, id=n) for n, f in MISMATCH_CASES.items()],
)
@pytest.mark.parametrize("shape", [(1,), (5,)], ids=["broadcastable", "incompatible"])
def test_gradient_leaf_of_the_wrong_shape_is_refused_by_name(
    factory: Factory, shape: tuple[int, ...]
) -> None:
    tx = factory()
    params = _params()
    state = tx.init(params)
    grads = {**_grads(0), "w": jnp.ones(shape)}
    # A (1,) gradient would broadcast against the (3,) buffer and reshape the
    # state; it must be refused, naming the leaf and both shapes.
    with pytest.raises(ValueError, match=rf"\['w'\].*{re.escape(str(shape))}.*\(3,\)"):
        tx.update(grads, state, params)


# --- long runs -------------------------------------------------------------------


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
}
SATURATION["qhm"] = lambda: QHM(_constant(0.05), _constant(0.9), _constant(0.7))
SATURATION["aggmo"] = lambda: AGGMO(_constant(0.05), (0.0, 0.9))


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
}
MILLION["qhm"] = lambda: QHM(0.1, 0.9, 0.7)
MILLION["aggmo"] = lambda: AGGMO(0.05, (0.0, 0.9, 0.99))


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
