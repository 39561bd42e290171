"""Stochastic rounding of 16-bit buffers and params.

What is checked, and against what: the mean of many roundings of one value
converges to that value within a 5-sigma binomial bound (round-to-nearest,
the biased reference, misses it by a third of an ulp); representable values,
NaN and infinities come back unchanged; float32 buffers are bit-identical to
the option off; resumed runs, jit, ``lax.scan`` and ``vmap`` reproduce the
same bits; the bits differ across steps, buffers, elements and seeds; the
params stage makes ``optax.apply_updates`` and ``eqx.apply_updates`` store
the stochastically rounded sum, exactly. The contract table
(tests/_table.py) has a row per transform with the option on, and
tests/test_sharding.py checks that it adds no communication.
"""

from __future__ import annotations

import math
import re
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import momentum_jax
from tests import _problems
from tests._table import BUFFER_TRANSFORMS, Row, ids

BF16, F16 = jnp.bfloat16, jnp.float16
# Each format's ulp at 1.0.
ULP = {BF16: 2.0**-7, F16: 2.0**-10}

pytestmark = pytest.mark.slow  # the fast tier runs the contract table's stochastic_round_params row

SR = {"stochastic_rounding": True}


def _buffer(dtype: Any, values: jax.Array, **kwargs: Any) -> jax.Array:
    """The buffer after one step of ``scale_by_momentum``: the gradient itself, rounded."""
    tx = momentum_jax.scale_by_momentum(0.5, accumulator_dtype=dtype, **kwargs)
    _, state = tx.update(values, tx.init(values))
    return state.velocity


def _bound(p: float, n: int) -> float:
    """Five standard deviations of the mean of ``n`` draws of a {0, 1} variable with mean p."""
    return 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_rounding_is_unbiased_across_elements_and_across_steps(dtype: Any) -> None:
    ulp, n = ULP[dtype], 200_000
    x = 1.0 + ulp / 3  # a third of the way from 1 to the next representable value
    values = jnp.full(n, x, jnp.float32)
    rounded = np.asarray(_buffer(dtype, values, **SR), np.float64)
    assert set(np.unique(rounded)) == {1.0, 1.0 + ulp}
    error = abs(rounded.mean() - x) / ulp
    assert error < _bound(1 / 3, n), error
    # Round-to-nearest misses by a third of an ulp: the bound can fail.
    nearest = np.asarray(_buffer(dtype, values), np.float64)
    assert abs(nearest.mean() - x) / ulp > 0.3

    # One element over many steps (momentum 0: the buffer is each new gradient).
    tx = momentum_jax.scale_by_momentum(0.0, accumulator_dtype=dtype, **SR)
    g = jnp.full(3, x, jnp.float32)

    def step(state: Any, _: Any) -> tuple[Any, jax.Array]:
        _, state = tx.update(g, state)
        return state, state.velocity[0]

    steps = 2000
    _, history = jax.lax.scan(step, tx.init(g), None, length=steps)
    error = abs(np.asarray(history, np.float64).mean() - x) / ulp
    assert error < _bound(1 / 3, steps), error


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_representable_values_nan_and_infinities_are_unchanged(dtype: Any) -> None:
    rng = np.random.default_rng(0)
    finfo = jnp.finfo(dtype)
    special = [0.0, float(finfo.max), -float(finfo.max), float(finfo.tiny), np.inf, -np.inf]
    values = np.concatenate(
        [rng.standard_normal(1000) * 10.0 ** rng.integers(-3, 3, 1000), special]
    )
    exact = jnp.asarray(values, dtype).astype(jnp.float32)  # representable in dtype
    got = _buffer(dtype, exact, **SR)
    np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), np.asarray(exact))
    assert bool(jnp.isnan(_buffer(dtype, jnp.asarray([np.nan, -np.nan]), **SR)).all())


@pytest.mark.parametrize("row", BUFFER_TRANSFORMS, ids=ids(BUFFER_TRANSFORMS))
def test_float32_buffers_are_bit_identical_to_the_option_off(row: Row) -> None:
    for kwargs in ({}, {"accumulator_dtype": jnp.float32}):
        expected = _problems.trajectory(row.build(**kwargs), 4)
        got = _problems.trajectory(row.build(**kwargs, **SR, seed=5), 4)
        for a, b in zip(got, expected, strict=True):
            for key in b:
                np.testing.assert_array_equal(a[key], b[key])


def _bf16_model() -> dict[str, jax.Array]:
    rng = np.random.default_rng(3)
    return {
        "w": jnp.asarray(rng.standard_normal((16, 8)), BF16),
        "b": jnp.zeros(8, BF16),
        "scale": jnp.asarray(1.5, BF16),
    }


def _bf16_grads(k: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(100 + k)
    params = _bf16_model()
    return {
        key: jnp.asarray(rng.standard_normal(p.shape) * 1e-2, BF16) for key, p in params.items()
    }


def _full_sr(seed: Any = 0, layout: str = "per_leaf") -> optax.GradientTransformation:
    return optax.chain(
        momentum_jax.nesterov(0.01, 0.99, layout=layout, **SR, seed=seed),
        momentum_jax.stochastic_round_params(seed=seed),
    )


def _train(tx: optax.GradientTransformation, params: Any, state: Any, ks: range) -> Any:
    return _problems.train(tx, params, state, _bf16_grads, ks)


@pytest.mark.parametrize("layout", ["per_leaf", "packed"])
def test_a_resumed_run_is_bit_identical_to_an_uninterrupted_one(layout: str) -> None:
    tx = _full_sr(seed=11, layout=layout)
    params = _bf16_model()
    straight = _train(tx, params, tx.init(params), range(12))
    half_params, half_state = _train(tx, params, tx.init(params), range(6))
    # As from a checkpoint: host copies, and the transform built anew.
    saved = jax.device_get((half_params, half_state))
    tx_again = _full_sr(seed=11, layout=layout)
    resumed = _train(tx_again, *jax.tree.map(jnp.asarray, saved), range(6, 12))
    _problems.assert_same_bits(resumed, straight)
    # The state is what it is without the option: nothing for the random bits.
    plain = optax.chain(momentum_jax.nesterov(0.01, 0.99, layout=layout))
    plain_leaves = jax.tree.leaves(plain.init(params))
    sr_leaves = jax.tree.leaves(tx.init(params)[0])
    assert [(x.shape, x.dtype) for x in sr_leaves] == [(x.shape, x.dtype) for x in plain_leaves]


def test_jit_and_scan_give_the_eager_bits() -> None:
    tx = _full_sr(seed=4)
    params = _bf16_model()
    state = tx.init(params)
    eager = (params, state)
    for k in range(5):
        updates, new_state = tx.update(_bf16_grads(k), eager[1], eager[0])
        eager = (optax.apply_updates(eager[0], updates), new_state)
    grads = jax.tree.map(lambda *g: jnp.stack(g), *[_bf16_grads(k) for k in range(5)])

    def body(carry: Any, g: Any) -> tuple[Any, None]:
        p, s = carry
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    scanned, _ = jax.jit(lambda c, gs: jax.lax.scan(body, c, gs))((params, state), grads)
    _problems.assert_same_bits(scanned, eager)
    _problems.assert_same_bits(_train(tx, params, state, range(5)), eager)


def _round_up_pattern(tx: optax.GradientTransformation, steps: int = 1) -> Any:
    """Which elements rounded up, per step: each gradient element sits half-way between."""
    half = 1.0 + ULP[BF16] / 2
    params = {"a": jnp.zeros((40, 25), BF16), "b": jnp.zeros((40, 25), BF16)}
    g = jax.tree.map(lambda p: jnp.full(p.shape, half, jnp.float32), params)
    state, patterns = tx.init(params), []
    for _ in range(steps):
        _, state = tx.update(g, state, params)
        buffers = state[0] if isinstance(state, tuple) and not hasattr(state, "count") else state
        trees = getattr(buffers, "buffers", None) or (buffers.velocity,)
        patterns.append([jax.tree.map(lambda b: np.asarray(b, np.float32) > 1.0, t) for t in trees])
    return patterns


def test_bits_differ_across_steps_buffers_elements_and_seeds() -> None:
    def block(seed: int = 0) -> optax.GradientTransformation:
        return momentum_jax.scale_by_momentum(0.0, accumulator_dtype=BF16, **SR, seed=seed)

    first, second = _round_up_pattern(block(), steps=2)
    a, b = first[0]["a"], first[0]["b"]
    n = a.size

    def agreement(x: np.ndarray, y: np.ndarray) -> float:
        return float((x == y).mean())

    # Independent fair coins agree half of the time.
    for x, y, what in [
        (a, b, "two buffers"),
        (a, second[0]["a"], "two steps"),
        (a, _round_up_pattern(block(seed=1))[0][0]["a"], "two seeds"),
        (a[:20], a[20:], "two halves of one array"),
    ]:
        assert abs(agreement(x, y) - 0.5) < _bound(0.5, x.size), what
    assert abs(a.mean() - 0.5) < _bound(0.5, n)
    # AggMo's buffers are positions of their own too.
    aggmo = momentum_jax.scale_by_aggmo((0.0, 0.0), accumulator_dtype=BF16, **SR)
    (trees,) = _round_up_pattern(aggmo)
    assert abs(agreement(trees[0]["a"], trees[1]["a"]) - 0.5) < _bound(0.5, n)
    # The same build arguments draw the same bits.
    (again,) = _round_up_pattern(block())
    np.testing.assert_array_equal(again[0]["a"], a)


def test_the_velocity_and_the_params_of_one_step_draw_unrelated_bits() -> None:
    """Same seed, same step, same elements: the velocity's rounding and the params' must not
    decide alike. v = 1 + 2**-8 lies halfway between two bfloat16 values, and so does
    4 - (1 + 2**-7) = 3 - 2**-7, the param after a velocity rounded up: with the same bits
    every such param would round to 3; with unrelated bits about half do."""
    n = 8192
    tx = optax.chain(
        momentum_jax.momentum(1.0, 0.0, accumulator_dtype=jnp.bfloat16, stochastic_rounding=True),
        momentum_jax.stochastic_round_params(),
    )
    params = jnp.full(n, 4.0, jnp.bfloat16)
    updates, state = tx.update(jnp.full(n, 1 + 2**-8, jnp.float32), tx.init(params), params)
    velocity = np.asarray(state[0].velocity, np.float32)
    up = velocity == 1 + 2**-7
    assert 0.45 < up.mean() < 0.55  # the velocity's own rounding: a fair coin
    after = np.asarray(optax.apply_updates(params, updates), np.float32)[up]
    assert set(after) <= {3.0, 3 - 2**-6}
    assert 0.45 < (after == 3.0).mean() < 0.55


def test_vmap_over_an_ensemble_and_over_seeds() -> None:
    members = 3
    params = jax.tree.map(lambda p: jnp.stack([p] * members), _bf16_model())
    grads = jax.tree.map(lambda *g: jnp.stack(g), *[_bf16_grads(k) for k in range(members)])
    tx = _full_sr(seed=2)
    updates, _ = jax.vmap(tx.update)(grads, jax.vmap(tx.init)(params), params)
    for i in range(members):
        member = jax.tree.map(lambda x, i=i: x[i], (grads, params))
        expected, _ = tx.update(member[0], tx.init(member[1]), member[1])
        _problems.assert_same_bits(jax.tree.map(lambda x, i=i: x[i], updates), expected)

    # One seed per member, traced: the members draw different bits.
    def one(seed: jax.Array) -> Any:
        (first,) = _round_up_pattern(
            momentum_jax.scale_by_momentum(0.0, accumulator_dtype=BF16, **SR, seed=seed)
        )
        return first[0]["a"]

    patterns = [one(jnp.asarray(s)) for s in range(members)]
    assert abs(float((patterns[0] == patterns[1]).mean()) - 0.5) < _bound(0.5, patterns[0].size)


def test_inject_hyperparams_injects_the_seed() -> None:
    def build(**kw: Any) -> optax.GradientTransformation:
        return momentum_jax.momentum(0.05, 0.9, accumulator_dtype=BF16, **SR, **kw)

    # A dtype is callable: keep it static, or inject_hyperparams takes it for a schedule.
    inject = optax.inject_hyperparams(momentum_jax.momentum, static_args=("accumulator_dtype",))
    injected = inject(0.05, 0.9, accumulator_dtype=BF16, stochastic_rounding=True, seed=7)
    assert "seed" in injected.init(_problems.initial_params()).hyperparams
    expected = _problems.trajectory(build(seed=7), 6)
    step = jax.jit(_problems.step_fn(injected))
    params, got = _problems.initial_params(), []
    state = injected.init(params)
    for _ in range(6):
        params, state = step(params, state)
        got.append(jax.tree.map(np.asarray, params))
    other = _problems.trajectory(build(seed=8), 6)
    for a, b in zip(got, expected, strict=True):
        for key in b:
            np.testing.assert_array_equal(a[key], b[key])
    assert any(
        not np.array_equal(c[k], b[k]) for c, b in zip(other, expected, strict=True) for k in b
    )


def test_the_packed_layout_rounds_without_bias_and_keeps_its_structure() -> None:
    x = 1.0 + ULP[BF16] / 3
    params = {f"p{i}": jnp.zeros((50, 40)) for i in range(4)}
    tx = momentum_jax.scale_by_momentum(0.0, accumulator_dtype=BF16, layout="packed", **SR)
    g = jax.tree.map(lambda p: jnp.full(p.shape, x, jnp.float32), params)
    _, state = jax.jit(tx.update)(g, tx.init(params))
    values = np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in state.velocity.values()])
    assert abs(values.mean() - x) / ULP[BF16] < _bound(1 / 3, values.size)
    plain = momentum_jax.scale_by_momentum(0.0, accumulator_dtype=BF16, layout="packed")
    assert jax.tree.structure(state) == jax.tree.structure(plain.init(params))


def test_params_stage_rounds_the_sum_without_bias_and_exactly() -> None:
    n = 100_000
    params = jnp.ones(n, BF16)
    quarter = ULP[BF16] / 4
    stage = momentum_jax.stochastic_round_params(seed=3)
    updates = jnp.full(n, quarter, BF16)
    out, state = stage.update(updates, stage.init(params), params)
    assert out.dtype == BF16
    assert int(state.count) == 1
    new = np.asarray(optax.apply_updates(params, out), np.float64)
    assert set(np.unique(new)) == {1.0, 1.0 + ULP[BF16]}
    assert abs(new.mean() - (1 + quarter)) / ULP[BF16] < _bound(1 / 4, n)
    # Round-to-nearest: every param stays at 1.
    assert np.all(np.asarray(optax.apply_updates(params, updates), np.float64) == 1.0)

    # Updates below half their param: the stored param is exactly the rounded sum,
    # through optax's and Equinox's update paths alike.
    rng = np.random.default_rng(0)
    p = jnp.asarray(rng.standard_normal(n), BF16)
    u = jnp.asarray(np.asarray(p, np.float32) * rng.uniform(-0.49, 0.49, n), BF16)
    out, _ = stage.update(u, stage.init(p), p)
    exact = np.asarray(p, np.float32) + np.asarray(out, np.float32)  # no rounding in float32
    np.testing.assert_array_equal(np.asarray(optax.apply_updates(p, out), np.float32), exact)
    np.testing.assert_array_equal(np.asarray(eqx.apply_updates(p, out), np.float32), exact)
    target = np.asarray(p, np.float64) + np.asarray(u, np.float64)
    # One of the two bfloat16 neighbours of the sum: less than a bfloat16 ulp away.
    ulp = 2.0 ** (np.floor(np.log2(np.abs(target))) - 7)
    assert np.all(np.abs(exact - target) < ulp)
    assert eqx.apply_updates(p, out).dtype == BF16


def test_params_stage_leaves_other_dtypes_alone_and_needs_the_params() -> None:
    stage = momentum_jax.stochastic_round_params()
    params = {"f32": jnp.asarray([1.0, 2.0]), "count": jnp.asarray(3), "half": jnp.ones(2, BF16)}
    updates = {"f32": jnp.asarray([1e-9, -1e-9]), "count": None, "half": jnp.full(2, 1e-3, BF16)}
    out, _ = stage.update(updates, stage.init(params), params)
    np.testing.assert_array_equal(out["f32"], updates["f32"])
    assert out["count"] is None
    with pytest.raises(ValueError, match="stochastic_round_params: update\\(\\) needs the params"):
        stage.update(updates, stage.init(params))


def test_bf16_params_and_velocity_train_like_float32_on_a_quadratic() -> None:
    """A slow descent (each step far below half an ulp of the params): round-to-nearest stalls."""
    target = jnp.linspace(-2.0, 2.0, 256)

    def run(tx: optax.GradientTransformation, dtype: Any) -> float:
        params = jnp.zeros(256, dtype) + jnp.asarray(3.0, dtype)

        def body(carry: Any, _: Any) -> tuple[Any, None]:
            p, s = carry
            g = (p.astype(jnp.float32) - target).astype(dtype)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=3000)
        return float(jnp.mean((p.astype(jnp.float32) - target) ** 2))

    lr, mu = 1e-4, 0.99
    reference = run(momentum_jax.momentum(lr, mu), jnp.float32)
    nearest = run(momentum_jax.momentum(lr, mu), BF16)
    rounded = run(
        optax.chain(momentum_jax.momentum(lr, mu, **SR), momentum_jax.stochastic_round_params()),
        BF16,
    )
    assert reference < 0.5
    assert nearest > 2 * reference
    assert abs(rounded - reference) < 0.05 * reference + 1e-3


def test_the_donated_step_updates_the_velocity_in_place() -> None:
    """The output reads the rounded buffer, so XLA need not copy the donated one first.

    The XLA of JAX 0.4.35 still recomputes it in the output's loop, and copies the
    buffer (a slower step with the same numbers); JAX 0.10 and later do not.
    """
    modern = tuple(int(part) for part in jax.__version__.split(".")[:2]) >= (0, 10)
    for tx in (
        momentum_jax.momentum(0.1, 0.9, accumulator_dtype=BF16, **SR),
        momentum_jax.nesterov(0.1, 0.9, accumulator_dtype=BF16, **SR),
    ):
        params = jnp.linspace(-1.0, 1.0, 1000)

        def step(p: Any, s: Any, g: Any, tx: Any = tx) -> Any:
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        donated = jax.jit(step, donate_argnums=(0, 1))
        hlo = donated.lower(params, tx.init(params), params).compile().as_text()
        if modern:
            assert not re.search(r"bf16\[1000\]\S* copy\(", hlo), hlo
        expected = jax.jit(step)(params, tx.init(params), 0.5 * params)
        got = donated(jnp.array(params), tx.init(params), 0.5 * params)
        _problems.assert_same_bits(got, expected)
