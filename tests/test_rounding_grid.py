"""Stochastic rounding at its edges: independent bits across groups, float16's real grid, NaNs.

* Two param groups under ``optax.partition`` (or two ``optax.masked`` blocks) with
  the same seed draw unrelated bits: round-up decisions of two arrays agree about
  half the time, not always.
* float16 below its smallest normal (2**-14) is spaced 2**-24: values there are
  rounded onto that grid, unbiased, and a velocity of 1e-8-sized contributions
  does not stay 0 for ever. A value that round-to-nearest keeps finite (below
  65520) is never rounded up to infinity.
* Every NaN stays a NaN, the all-ones pattern 0x7FFFFFFF of NVIDIA GPUs included,
  in the velocity and in ``stochastic_round_params``.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import momentum_jax

N = 4096
SR = {"accumulator_dtype": jnp.bfloat16, "stochastic_rounding": True, "seed": 0}


def _round_ups(tx: optax.GradientTransformation, params: dict, grads: dict) -> dict:
    """Per array, whether each element's first velocity rounded up (away from zero).

    With a learning rate of 1 the first update is ``-v``, and ``v`` is ``g`` rounded.
    """
    updates, _ = tx.update(grads, tx.init(params), params)
    flat = jax.tree_util.tree_flatten_with_path(updates)[0]
    exact = dict(jax.tree_util.tree_flatten_with_path(grads)[0])
    return {
        jax.tree_util.keystr(path): np.abs(np.asarray(u)) > np.abs(np.asarray(exact[path]))
        for path, u in flat
    }


@pytest.mark.parametrize("layout", ["per_leaf", "packed"])
def test_partition_groups_with_one_seed_draw_unrelated_bits(layout: str) -> None:
    # Halfway between two bfloat16 values, in every element of both arrays.
    params = {"a": jnp.zeros(N), "b": jnp.zeros(N)}
    grads = {"a": jnp.full(N, 1.0 + 2**-8), "b": jnp.full(N, 1.0 + 2**-8)}
    block = momentum_jax.momentum(1.0, 0.9, **SR, layout=layout)
    # optax.partition is optax 0.2.5's name for multi_transform (0.2.4, our floor).
    partition = getattr(optax, "partition", None) or optax.multi_transform
    tx = partition({"a": block, "b": block}, {"a": "a", "b": "b"})
    ups = _round_ups(tx, params, grads)
    assert 0.45 < float(np.mean(ups["['a']"])) < 0.55  # each array's bits are fair
    agree = float(np.mean(ups["['a']"] == ups["['b']"]))
    # Independent fair bits agree 50% +- 0.8% (one standard deviation at N = 4096).
    assert 0.45 < agree < 0.55, agree
    masked = optax.chain(
        optax.masked(block, {"a": True, "b": False}), optax.masked(block, {"a": False, "b": True})
    )
    ups = _round_ups(masked, params, grads)
    assert 0.45 < float(np.mean(ups["['a']"] == ups["['b']"])) < 0.55
    # Labels for whole subtrees: "q", the second array of its group, and "r", the first of
    # the other after the first group's placeholder, have one position in their trees, whose
    # placeholders stand at positions {2} and {0, 2}: the first one counts too.
    params = {"a": {"p": jnp.zeros(N), "q": jnp.zeros(N)}, "b": {"r": jnp.zeros(N)}}
    params["c"] = {"s": jnp.zeros(N)}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1.0 + 2**-8), params)
    labels = {"a": "x", "b": "y", "c": "x"}
    ups = _round_ups(partition({"x": block, "y": block}, labels), params, grads)
    assert 0.45 < float(np.mean(ups["['a']['q']"] == ups["['b']['r']"])) < 0.55


def _round_float16(values: np.ndarray, steps: int) -> np.ndarray:
    """``values`` stored into a float16 velocity with stochastic rounding, ``steps`` seeds."""
    params = jnp.zeros(values.shape, jnp.float32)
    out = []
    for seed in range(steps):
        tx = momentum_jax.momentum(
            1.0, 0.5, accumulator_dtype=jnp.float16, stochastic_rounding=True, seed=seed
        )
        _, state = tx.update(jnp.asarray(values, jnp.float32), tx.init(params), params)
        out.append(np.asarray(state.velocity, np.float64))
    return np.stack(out)


def test_float16_subnormals_round_onto_their_grid_unbiased() -> None:
    spacing = 2.0**-24
    values = np.array([0.3, 2.5, 100.7, -7.25, 1000.1]) * spacing  # between subnormals
    stored = _round_float16(np.repeat(values, 2000), 1).reshape(len(values), 2000)
    grid = stored / spacing
    np.testing.assert_array_equal(grid, np.round(grid))  # values of float16's subnormal grid
    low, high = np.floor(values / spacing) * spacing, np.ceil(values / spacing) * spacing
    assert np.all((stored == low[:, None]) | (stored == high[:, None]))
    # Unbiased: the mean is within 4 standard errors of the exact value.
    p = (values - low) / spacing
    error = 4 * spacing * np.sqrt(p * (1 - p) / 2000)
    np.testing.assert_array_less(np.abs(stored.mean(axis=1) - values), error + 1e-30)


def test_float16_rounds_up_to_infinity_only_where_round_to_nearest_does() -> None:
    # Between 65504 (float16's largest) and 65520 round-to-nearest stores 65504; from
    # 65520 on, infinity. Stochastic rounding, which would round up to 65536, agrees.
    values = np.array([65505, -65519, 65519.99, 65520, -1e6])
    stored = _round_float16(np.repeat(values, 500), 1).reshape(len(values), 500)
    assert np.all(stored[:3] == np.array([65504, -65504, 65504])[:, None])
    assert np.all(np.isposinf(stored[3]))
    assert np.all(np.isneginf(stored[4]))
    nearest = np.asarray(jnp.asarray(values, jnp.float32).astype(jnp.float16), np.float64)
    np.testing.assert_array_equal(stored[:, 0], nearest)


def test_float16_keeps_the_sign_of_what_rounds_to_zero() -> None:
    # What rounds to 0 from below is -0, as with bfloat16 and round-to-nearest.
    stored = _round_float16(np.repeat([-1e-9, 1e-9], 500), 1)[0]
    assert (stored == 0).mean() > 0.9
    np.testing.assert_array_equal(np.signbit(stored), np.repeat([True, False], 500))


def test_float16_velocity_keeps_contributions_below_its_normal_range() -> None:
    # lr * g = 1e-8, below float16's smallest normal (6.1e-5) and its subnormal
    # spacing (6e-8): round-to-nearest, or rounding at the value's own exponent,
    # keeps 0 for ever; stochastic rounding onto the subnormal grid keeps the mean.
    tx = momentum_jax.momentum(1e-3, 0.9, accumulator_dtype=jnp.float16, stochastic_rounding=True)
    params = jnp.zeros(N)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(30):
        _, state = update(jnp.full(N, 1e-5), state, params)
    exact = 1e-8 * (1 - 0.9**30) / (1 - 0.9)
    mean = float(np.mean(np.asarray(state.velocity, np.float64)))
    assert mean == pytest.approx(exact, rel=0.1)


@pytest.mark.parametrize("pattern", [0x7FFFFFFF, 0x7FC00000, 0xFFFFFFFF, 0x7F800001])
def test_every_nan_pattern_stays_nan(pattern: int) -> None:
    nan = jax.lax.bitcast_convert_type(jnp.full(N, pattern, jnp.uint32), jnp.float32)
    params = jnp.ones(N, jnp.bfloat16)
    tx = momentum_jax.momentum(1.0, 0.9, **SR)
    _, state = tx.update(nan, tx.init(params), params)
    assert bool(jnp.all(jnp.isnan(state.velocity)))
    rounder = momentum_jax.stochastic_round_params()
    updates, _ = rounder.update(nan, rounder.init(params), params)
    assert bool(jnp.all(jnp.isnan(optax.apply_updates(params, updates))))


def test_rounding_with_nothing_to_round_warns_at_init() -> None:
    with pytest.warns(UserWarning, match="stochastic_rounding=True has no effect"):
        momentum_jax.momentum(0.1, 0.9, stochastic_rounding=True).init(jnp.ones(3))
    with pytest.warns(UserWarning, match=r"stochastic_round_params\(\) has no effect"):
        momentum_jax.stochastic_round_params().init(jnp.ones(3))
    # int8 codes only for arrays of 4096 elements or more: below, every buffer is float32.
    int8 = momentum_jax.momentum(0.1, accumulator_dtype=jnp.int8, stochastic_rounding=True)
    with pytest.warns(UserWarning, match="no buffer is bfloat16, float16 or int8: int8 codes"):
        int8.init({"w": jnp.ones((32, 64)), "b": jnp.ones(64)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        int8.init({"w": jnp.ones((64, 64)), "b": jnp.ones(64)})
