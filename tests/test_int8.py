"""Eight-bit buffers (``accumulator_dtype=jnp.int8``) and Lion.

What is checked, and against what: the quantizer stores a zero block, a block
of one value and each block's largest element exactly (also under ``jit``,
fused with the update: a step with a zero gradient and momentum 1/2 halves
every scale and keeps every code), and round-to-nearest reproduces its own
values; a NaN stays NaN and an infinity makes its block NaN, and no other; the
stochastic quantizer's mean over many elements and over many steps stays
within a 5-sigma binomial bound of the exact value, which round-to-nearest
misses by a third of a code; resumed runs, ``jit``, ``lax.scan``, ``vmap`` and
``inject_hyperparams`` reproduce the same bits; the state costs at most 1.05
bytes per param on large arrays; ``restore_state``, pickle and orbax move it;
bad options are refused when the transform is built. Lion is ``optax.lion``
bit for bit. The contract table (tests/_table.py) has int8 and Lion rows, and
tests/test_sharding.py checks that an int8 buffer shards like its param.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import momentum_jax
from tests import _problems

INT8 = {"accumulator_dtype": jnp.int8}
SR = {**INT8, "stochastic_rounding": True}
STEP = 1 / 127  # a code's step, in units of its block's scale


def _stored(values: jax.Array, **kwargs: Any) -> Any:
    """The buffer after one step of ``scale_by_momentum``: the gradient itself, quantized."""
    tx = momentum_jax.scale_by_momentum(0.5, **INT8, **kwargs)
    _, state = jax.jit(tx.update)(values, tx.init(values))
    return state.velocity


def _bound(p: float, n: int) -> float:
    """Five standard deviations of the mean of ``n`` draws of a {0, 1} variable with mean p."""
    return 5 * math.sqrt(p * (1 - p) / n)


def _params(seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {
        "kernel": jnp.asarray(rng.standard_normal((64, 512)), jnp.float32),  # two blocks a row
        "odd": jnp.asarray(rng.standard_normal((40, 300)), jnp.float32),  # blocks of 150
        "bias": jnp.asarray(rng.standard_normal(512), jnp.float32),  # small: float32
    }


def _grads(k: int) -> dict[str, jax.Array]:
    return jax.tree.map(lambda p: 0.1 * p + 0.01 * k, _params(100 + k))


def _train(tx: optax.GradientTransformation, params: Any, state: Any, ks: range) -> Any:
    return _problems.train(tx, params, state, _grads, ks)


# --- the format ------------------------------------------------------------------------


def test_large_arrays_get_codes_and_block_scales_small_ones_float32() -> None:
    params = {
        **_params(),
        "narrow": jnp.zeros((4096, 16)),  # 16 rows a block
        "conv": jnp.zeros((64, 64, 3, 3)),  # PyTorch's layout: blocks of 192 from axis 1 on
        "half": jnp.zeros((64, 512), "bfloat16"),
    }
    state = momentum_jax.momentum(0.1, **INT8).init(params)
    velocity = state.velocity
    assert isinstance(velocity["kernel"], momentum_jax.Int8Buffer)
    assert velocity["kernel"].codes.dtype == jnp.int8
    assert velocity["kernel"].codes.shape == (64, 512)
    assert velocity["kernel"].scales.shape == (64, 2)
    assert velocity["kernel"].scales.dtype == jnp.float32
    assert velocity["odd"].scales.shape == (40, 2)
    assert velocity["narrow"].scales.shape == (256, 1)
    assert velocity["conv"].codes.shape == (64, 64, 3, 3)
    assert velocity["conv"].scales.shape == (64, 3, 1, 1)
    assert velocity["half"].codes.shape == (64, 512)  # bfloat16 params too
    assert velocity["bias"].dtype == jnp.float32  # below the size threshold
    # Measured from the leaves: 1 + 4/256 bytes per param.
    kernel = velocity["kernel"]
    per_param = sum(x.nbytes for x in kernel) / params["kernel"].size
    assert per_param == 1 + 4 / 256 <= 1.05
    big = momentum_jax.momentum(0.1, **INT8).init(jnp.zeros((1024, 1024)))
    assert sum(x.nbytes for x in jax.tree.leaves(big.velocity)) / 2**20 <= 1.05


def test_every_array_of_4096_elements_or_more_keeps_at_most_1_031_bytes_per_param() -> None:
    """api.md's budget, 1.05 bytes, on any shape: model shapes (a PyTorch-layout conv
    kernel, an attention kernel with heads of 64, an embedding of width 32) and random
    ones of 1 to 4 axes, short axes included. Blocks hold 128 to 256 elements (or the
    last one per leading index shorter, with at least 257 elements in two blocks)."""
    rng = np.random.default_rng(0)
    shapes = [(512, 512, 3, 3), (64, 3, 7, 7), (768, 12, 64), (50257, 32), (4096,), (4097,)]
    while len(shapes) < 120:
        shape = tuple(int(n) for n in rng.integers(1, 2 ** rng.integers(1, 12, rng.integers(1, 5))))
        if 4096 <= math.prod(shape) <= 2**22:
            shapes.append(shape)
    init = momentum_jax.momentum(0.1, **INT8).init
    for shape in shapes:
        buffer = jax.eval_shape(init, jax.ShapeDtypeStruct(shape, jnp.float32)).velocity
        assert isinstance(buffer, momentum_jax.Int8Buffer), shape
        assert buffer.scales.ndim == len(shape), shape
        per_param = sum(x.size * x.dtype.itemsize for x in buffer) / math.prod(shape)
        assert per_param <= 1 + 4 / 128, (shape, per_param)


@pytest.mark.parametrize(
    "shape",
    [(1024, 32), (64, 64, 3, 3), (97, 3, 5, 7), (40, 300), (512, 200), (64, 3, 7, 7), (32, 384)],
)
def test_a_block_is_a_run_of_consecutive_elements(shape: tuple[int, ...]) -> None:
    """A block is a run of consecutive elements of the row ``shape[a:]``, ``a`` the last
    axis from which the array holds 256 elements a row: 256 of them; where 256 does not
    divide the row, 128, or else the largest divisor between them (128 for 384, not 192;
    192 for 576, 150 for 300, 224 for 3 x 7 x 7 = 147 merged into the whole 9408); else
    256 with the last block shorter (10185 = 39 x 256 + 201). Its scale is its largest
    magnitude, the scales have one entry per block along ``a`` and length 1 after it, and
    every element reads back within half a code of it."""
    a, size = {
        (1024, 32): (0, 256),
        (64, 64, 3, 3): (1, 192),
        (97, 3, 5, 7): (0, 256),
        (512, 200): (0, 256),
        (64, 3, 7, 7): (0, 224),
        (32, 384): (1, 128),
    }.get(shape, (1, 150))
    rng = np.random.default_rng(3)
    magnitudes = 10.0 ** rng.integers(-3, 3, (*shape[: a + 1], *(1,) * (len(shape) - a - 1)))
    x = (rng.standard_normal(shape) * magnitudes).astype(np.float32)
    buffer = _stored(jnp.asarray(x))
    lead, length = math.prod(shape[:a]), math.prod(shape[a:])
    rows = np.pad(x.reshape(lead, length), [(0, 0), (0, -length % size)])
    largest = np.abs(rows).reshape(lead, -1, size).max(-1)
    np.testing.assert_array_equal(np.asarray(buffer.scales).reshape(lead, -1), largest)
    assert buffer.scales.shape == (*shape[:a], largest.shape[1], *(1,) * (len(shape) - a - 1))
    top = np.repeat(largest, size, -1)[:, :length].reshape(shape)
    got = np.asarray(momentum_jax.dequantize(buffer))
    assert np.all(np.abs(got - x) <= 0.5001 * top / 127)
    np.testing.assert_array_equal(got[np.abs(x) == top], x[np.abs(x) == top])  # the largest


@pytest.mark.parametrize(
    "kwargs", [{}, {"stochastic_rounding": True}], ids=["nearest", "stochastic"]
)
def test_zero_and_constant_blocks_and_each_blocks_largest_element_are_exact(
    kwargs: dict[str, Any],
) -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 512)) * 10.0 ** rng.integers(-3, 3, (64, 1))).astype(np.float32)
    x[0, :256] = 0.0  # a zero block
    x[1, :256] = 0.37  # a block of one value
    x[2, 256:] = np.where(np.arange(256) % 2, 2.5, -2.5)  # one magnitude, both signs
    buffer = _stored(jnp.asarray(x), **kwargs)
    got = np.asarray(momentum_jax.dequantize(buffer))
    np.testing.assert_array_equal(got[:2, :256], x[:2, :256])
    np.testing.assert_array_equal(got[2, 256:], x[2, 256:])
    blocks = np.abs(x).reshape(64, 2, 256)
    largest = blocks.argmax(-1)
    np.testing.assert_array_equal(np.asarray(buffer.scales), blocks.max(-1))
    rows, halves = np.indices(largest.shape)
    columns = halves * 256 + largest
    np.testing.assert_array_equal(got[rows, columns], x[rows, columns])
    assert set(np.abs(np.asarray(buffer.codes)[rows[2:], columns[2:]]).ravel()) == {127}
    # Everywhere within half a code (round-to-nearest) or one code (stochastic).
    step = np.repeat(blocks.max(-1), 256, -1) / 127
    assert np.all(np.abs(got - x) <= step * (0.5001 if not kwargs else 1.0001))


def test_round_to_nearest_reproduces_its_own_values() -> None:
    x = jnp.asarray(np.random.default_rng(1).standard_normal((64, 512)), jnp.float32)
    once = _stored(x)
    twice = _stored(momentum_jax.dequantize(once))
    _problems.assert_same_bits(twice, once)


def test_fused_with_the_update_the_dequantization_is_exact() -> None:
    """A zero gradient at momentum 1/2 keeps every code and halves every scale.

    XLA may reassociate ``codes * scale / 127 * momentum``: an inexact dequantization
    would move codes. The scales come from a second run of the arithmetic that another
    compiler (XLA:CPU's YNNPACK reductions) may round apart by an ulp.
    """
    tx = momentum_jax.scale_by_momentum(0.5, **INT8)
    params = jnp.zeros((64, 512))
    _, state = tx.update(
        jnp.asarray(np.random.default_rng(2).standard_normal((64, 512))), tx.init(params)
    )
    update = jax.jit(tx.update)
    for _ in range(3):
        _, new = update(jnp.zeros_like(params), state)
        np.testing.assert_array_equal(new.velocity.codes, state.velocity.codes)
        half = 0.5 * np.asarray(state.velocity.scales)
        np.testing.assert_array_max_ulp(np.asarray(new.velocity.scales), half, maxulp=1)
        state = new


def test_a_block_decayed_below_2_to_the_minus_100_is_stored_as_zeros() -> None:
    """127 / s overflows for s below about 3.7e-37, and its zeros were coded NaN (0 * inf);
    below about 2**-119 the decoding's s / 127 is subnormal, flushed to 0 by XLA:CPU."""
    x = np.zeros((4, 1024), np.float32)
    x[0, :3] = [1e-37, -3e-38, 2**-101]  # block (0, 0): largest below 2**-100
    x[1, 256] = 2**-99  # block (1, 1): just above, coded as usual
    x[2, 512:] = np.linspace(-1, 1, 512)
    for kwargs in ({}, {"stochastic_rounding": True}):
        got = np.asarray(momentum_jax.dequantize(_stored(jnp.asarray(x), **kwargs)))
        assert not np.isnan(got).any()
        np.testing.assert_array_equal(got[0, :256], 0)
        assert got[1, 256] == np.float32(2**-99)  # the largest element, exactly
        np.testing.assert_allclose(got[2], x[2], atol=STEP)  # within a code step
    # A row that stops getting gradients decays through 1e-37 and stays 0, not NaN.
    tx = momentum_jax.momentum(1.0, 0.5, **INT8)
    params = jnp.zeros((16, 256))
    step = jax.jit(tx.update)
    _, state = step(jnp.ones_like(params), tx.init(params), params)
    for _ in range(140):  # 0.5**140 is about 7e-43
        updates, state = step(jnp.zeros_like(params), state, params)
        assert not np.isnan(np.asarray(updates)).any()
    np.testing.assert_array_equal(np.asarray(updates), 0)
    # Just above the threshold a block keeps its values (with s / 127 subnormal it read 0.53 s).
    state = tx.init(params)
    for t in range(3):
        _, state = step(jnp.full_like(params, 2**-99), state, params)
        exact = 2**-99 * sum(0.5**k for k in range(t + 1))
        np.testing.assert_allclose(momentum_jax.dequantize(state.velocity), exact, rtol=1e-6)


def test_nan_stays_nan_and_infinity_makes_its_block_nan() -> None:
    """A NaN has a code of its own; an infinity makes its block's scale infinite."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 1024)).astype(np.float32)
    x[0, 3] = np.nan  # block (0, 0)
    x[1, 300] = np.inf  # block (1, 1)
    x[1, 301] = -np.inf
    x[2, 600] = -np.inf  # block (2, 2)
    for kwargs in ({}, {"stochastic_rounding": True}):
        stored = _stored(jnp.asarray(x), **kwargs)
        assert np.asarray(stored.codes)[0, 3] == -128  # NaN's own code
        got = np.asarray(momentum_jax.dequantize(stored))
        assert np.isnan(got[0, 3])
        assert np.all(np.isnan(got[1, 256:512]))
        assert np.all(np.isnan(got[2, 512:768]))
        blocks = got.reshape(8, 4, 256)
        finite = np.ones((8, 4), bool)
        finite[0, 0] = finite[1, 1] = finite[2, 2] = False
        np.testing.assert_allclose(blocks[finite], x.reshape(8, 4, 256)[finite], atol=0.05)
        # The rest of the NaN's block: as stored (here), or all NaN where a max propagates NaN.
        rest = np.delete(got[0, :256], 3)
        assert np.all(np.isfinite(rest)) or np.all(np.isnan(rest))
    # Through training the non-finite values stay, so apply_if_finite sees each update.
    tx = momentum_jax.momentum(0.1, 0.9, **INT8)
    params = jnp.zeros((8, 1024))
    _, state = tx.update(jnp.asarray(x), tx.init(params))
    for _ in range(3):
        updates, state = tx.update(jnp.ones_like(params), state)
        velocity = np.asarray(momentum_jax.dequantize(state.velocity))
        assert np.isnan(velocity[0, 3])
        assert not np.isfinite(updates[0, 3])
        assert not np.any(np.isfinite(velocity[1, 256:512]))
        assert np.all(np.isfinite(velocity[3:]))


def test_a_nan_leaves_the_rest_of_its_block_as_it_would_be() -> None:
    """A NaN's code (-128) counts as the block's largest magnitude (127) when the next
    scale is computed: its block's other values decay exactly like the other blocks'."""
    tx = momentum_jax.scale_by_momentum(0.9, **INT8)
    params = jnp.zeros((16, 256))
    codes = np.full((16, 256), 10, np.int8)
    codes[0, 3] = -128
    old = momentum_jax.Int8Buffer(jnp.asarray(codes), jnp.ones((16, 1)))
    _, state = jax.jit(tx.update)(jnp.zeros_like(params), tx.init(params)._replace(velocity=old))
    got = np.asarray(momentum_jax.dequantize(state.velocity))
    assert np.isnan(got[0, 3])
    np.testing.assert_allclose(np.delete(got, 3, axis=1), np.float32(0.9 * 10 / 127), rtol=1e-6)


def test_plus_and_minus_127_read_back_as_their_scale_under_jit() -> None:
    rng = np.random.default_rng(5)
    scales = rng.uniform(0.1, 10.0, (64, 1)).astype(np.float32)
    codes = rng.integers(-127, 128, (64, 256)).astype(np.int8)
    codes[:, :2] = [127, -127]
    buffer = momentum_jax.Int8Buffer(jnp.asarray(codes), jnp.asarray(scales))
    got = np.asarray(jax.jit(momentum_jax.dequantize)(buffer))
    np.testing.assert_array_equal(got[:, :2], np.concatenate([scales, -scales], axis=1))


# --- stochastic quantization -------------------------------------------------------------


def test_stochastic_quantization_is_unbiased_across_elements_and_across_steps() -> None:
    n = 400 * 255
    x = np.full((400, 256), (10 + 1 / 3) * STEP, np.float32)
    x[:, 0] = 1.0  # each block's scale
    rounded = np.asarray(momentum_jax.dequantize(_stored(jnp.asarray(x), stochastic_rounding=True)))
    rest = rounded[:, 1:].astype(np.float64)
    assert set(np.round(np.unique(rest) * 127).astype(int)) == {10, 11}
    assert abs(rest.mean() - x[0, 1]) / STEP < _bound(1 / 3, n)
    # Round-to-nearest misses by a third of a code: the bound can fail.
    nearest = np.asarray(momentum_jax.dequantize(_stored(jnp.asarray(x))))[:, 1:]
    assert abs(nearest.astype(np.float64).mean() - x[0, 1]) / STEP > 0.3

    # One element over many steps (momentum 0: the buffer is each new gradient).
    tx = momentum_jax.scale_by_momentum(0.0, **SR)
    g = jnp.asarray(x[:16])

    def step(state: Any, _: Any) -> tuple[Any, jax.Array]:
        _, state = tx.update(g, state)
        return state, momentum_jax.dequantize(state.velocity)[0, 1]

    steps = 2000
    _, history = jax.jit(lambda s: jax.lax.scan(step, s, None, length=steps))(tx.init(g))
    error = abs(np.asarray(history, np.float64).mean() - x[0, 1]) / STEP
    assert error < _bound(1 / 3, steps), error


def test_bits_differ_across_arrays_and_seeds_and_repeat_for_the_same_ones() -> None:
    x = np.full((40, 256), 0.5 * STEP, np.float32)
    x[:, 0] = 1.0
    g = {"a": jnp.asarray(x), "b": jnp.asarray(x)}

    def pattern(seed: int, tx: Any = None) -> Any:
        tx = tx or momentum_jax.scale_by_momentum(0.0, **SR, seed=seed)
        _, state = tx.update(g, tx.init(g))
        return {k: np.asarray(b.codes)[:, 1:] > 0 for k, b in state.velocity.items()}

    first = pattern(0)
    n = first["a"].size
    assert abs(first["a"].mean() - 0.5) < _bound(0.5, n)
    for a, b in [(first["a"], first["b"]), (first["a"], pattern(1)["a"])]:
        assert abs((a == b).mean() - 0.5) < _bound(0.5, n)
    np.testing.assert_array_equal(pattern(0)["a"], first["a"])
    # Arrays in different groups of optax.partition keep their global positions.
    split = getattr(optax, "partition", optax.multi_transform)(  # optax 0.2.4: no partition
        {
            "a": momentum_jax.scale_by_momentum(0.0, **SR),
            "b": momentum_jax.scale_by_momentum(0.0, **SR),
        },
        {"a": "a", "b": "b"},
    )
    _, state = split.update(g, split.init(g))
    codes = [
        np.asarray(state.inner_states[k].inner_state.velocity[k].codes)[:, 1:] > 0 for k in "ab"
    ]
    assert abs((codes[0] == codes[1]).mean() - 0.5) < _bound(0.5, n)


def test_int8_codes_and_the_params_stage_draw_unrelated_bits() -> None:
    """One seed, one step, the same elements: the int8 velocity's round-ups and
    stochastic_round_params' are two fair coins that agree half of the time."""
    x = np.full((40, 256), 0.5 * STEP, np.float32)
    x[:, 0] = 1.0  # each block's scale; the other elements halfway between codes 0 and 1
    tx = momentum_jax.scale_by_momentum(0.0, **SR)
    _, state = tx.update(jnp.asarray(x), tx.init(jnp.asarray(x)))
    velocity_up = np.asarray(state.velocity.codes)[:, 1:] > 0
    params = jnp.ones(x.shape, jnp.bfloat16)  # 1 + 2**-8 lies halfway between two bfloat16s
    rounder = momentum_jax.stochastic_round_params()
    updates, _ = rounder.update(jnp.full(x.shape, 2.0**-8), rounder.init(params), params)
    params_up = np.asarray(optax.apply_updates(params, updates), np.float32)[:, 1:] > 1
    n = velocity_up.size
    for p in (velocity_up.mean(), params_up.mean(), (velocity_up == params_up).mean()):
        assert abs(p - 0.5) < _bound(0.5, n), p


def test_a_resumed_run_is_bit_identical_and_the_state_holds_no_key() -> None:
    tx = momentum_jax.nesterov(0.01, 0.99, **SR, seed=11)
    params = _params()
    straight = _train(tx, params, tx.init(params), range(12))
    half = _train(tx, params, tx.init(params), range(6))
    saved = jax.tree.map(np.asarray, jax.device_get(half))  # as from a checkpoint
    again = momentum_jax.nesterov(0.01, 0.99, **SR, seed=11)
    resumed = _train(again, *jax.tree.map(jnp.asarray, saved), range(6, 12))
    _problems.assert_same_bits(resumed, straight)
    plain = momentum_jax.nesterov(0.01, 0.99, **INT8).init(params)
    assert jax.tree.structure(plain) == jax.tree.structure(tx.init(params))


@pytest.mark.parametrize("steps", [None, 4], ids=["update", "accumulating"])
@pytest.mark.parametrize(
    "shape", [(256, 1024), (300, 700), (128, 128, 3, 3)], ids=["aligned", "padded", "conv"]
)
def test_the_step_keeps_no_float32_copy_of_the_buffer(
    shape: tuple[int, int], steps: int | None
) -> None:
    """The new values are computed twice (scales, then codes) rather than stored in between.

    A float32 temporary the size of the param would cost the step more than the int8
    buffer saves in traffic (benchmarks/int8_design.py). The XLA of JAX 0.4.35 has no
    YNNPACK reductions and plans its buffers otherwise: there one float32 temporary of
    the param's size (1.14x its bytes, measured) is allowed, not two. Accumulating
    gradients keeps it so.
    """
    recent = tuple(int(part) for part in jax.__version__.split(".")[:2]) >= (0, 10)
    tx = momentum_jax.momentum(1e-3, 0.9, **SR, gradient_accumulation_steps=steps)

    def step(p: Any, s: Any, g: Any) -> Any:
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    params = jnp.ones(shape)
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), params)
    temporaries = compiled.compile().memory_analysis().temp_size_in_bytes
    assert temporaries < (params.nbytes / 2 if recent else params.nbytes * 1.5)


# --- a state like any other ---------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: momentum_jax.momentum(0.05, 0.9, **SR, seed=1),
        lambda: momentum_jax.aggmo(0.05, (0.0, 0.9), **INT8),
        lambda: momentum_jax.lion(1e-3, **SR),
        lambda: momentum_jax.compat.torch_sgd(0.05, 0.9, 0.1, 1e-3, **INT8),
    ],
    ids=["momentum", "aggmo", "lion", "torch_sgd"],
)
def test_jit_scan_and_vmap_give_the_eager_bits(build: Any) -> None:
    tx = build()
    params = _params()
    eager = (params, tx.init(params))
    for k in range(3):
        updates, state = tx.update(_grads(k), eager[1], eager[0])
        eager = (optax.apply_updates(eager[0], updates), state)
    jitted = _train(tx, params, tx.init(params), range(3))
    # Eagerly each operation rounds on its own; under jit XLA may fuse a product into an add.
    chex.assert_trees_all_close(jitted[0], eager[0], rtol=1e-5, atol=1e-7)
    grads = jax.tree.map(lambda *g: jnp.stack(g), *[_grads(k) for k in range(3)])

    def body(carry: Any, g: Any) -> tuple[Any, None]:
        p, s = carry
        u, new = tx.update(g, s, p)
        chex.assert_trees_all_equal_shapes_and_dtypes(new, s)
        return (optax.apply_updates(p, u), new), None

    scanned, _ = jax.jit(lambda c, gs: jax.lax.scan(body, c, gs))((params, tx.init(params)), grads)
    chex.assert_trees_all_close(scanned[0], jitted[0], rtol=1e-5, atol=1e-7)
    read = momentum_jax.dequantize
    chex.assert_trees_all_close(read(scanned[1]), read(jitted[1]), rtol=1e-4, atol=1e-6)
    # vmap over an ensemble of two: each member gets the bits it gets alone.
    pairs = jax.tree.map(lambda p: jnp.stack([p, 2 * p]), params)
    step = jax.vmap(lambda p, s, g: tx.update(g, s, p))
    updates, _ = step(
        pairs, jax.vmap(tx.init)(pairs), jax.tree.map(lambda g: jnp.stack([g, g]), _grads(0))
    )
    alone, _ = tx.update(_grads(0), tx.init(params), params)
    chex.assert_trees_all_close(jax.tree.map(lambda u: u[0], updates), alone, rtol=1e-6)


def test_inject_hyperparams_follows_the_plain_transform() -> None:
    inject = optax.inject_hyperparams(momentum_jax.momentum, static_args=("accumulator_dtype",))
    injected = inject(0.05, 0.9, **SR, seed=4)
    plain = momentum_jax.momentum(0.05, 0.9, **SR, seed=4)
    params = _params()
    got = _train(injected, params, injected.init(params), range(4))
    expected = _train(plain, params, plain.init(params), range(4))
    # Injected, the hyperparameters are float32 arrays, not Python numbers: XLA may round
    # the products apart by an ulp (as for float32 buffers).
    chex.assert_trees_all_close(got[0], expected[0], rtol=1e-5, atol=1e-7)
    read = momentum_jax.dequantize
    chex.assert_trees_all_close(
        read(got[1].inner_state.velocity), read(expected[1].velocity), rtol=1e-5, atol=1e-7
    )


def test_restore_state_moves_between_int8_and_float_buffers(tmp_path: Path) -> None:
    params = _params()
    float32, int8 = momentum_jax.qhm(0.05, 0.9), momentum_jax.qhm(0.05, 0.9, **INT8)
    _, trained = _train(float32, params, float32.init(params), range(3))
    quantized = momentum_jax.restore_state(trained, int8, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(quantized, int8.init(params))
    assert int(quantized[0].count) == 3
    # Quantized to nearest: within half a code of the float32 values.
    kernel = momentum_jax.dequantize(quantized[0].buffer["kernel"])
    step = np.repeat(np.asarray(quantized[0].buffer["kernel"].scales), 256, -1) / 127
    assert np.all(np.abs(kernel - trained[0].buffer["kernel"]) <= 0.5001 * step)
    # And back: the float buffers hold exactly the dequantized values.
    back = momentum_jax.restore_state(quantized, float32, params)
    _problems.assert_same_bits(back[0].buffer, momentum_jax.dequantize(quantized[0].buffer))
    # Pickled, and read by orbax with a target from eval_shape: the same state, which steps on.
    pickled = pickle.loads(pickle.dumps(jax.device_get(quantized)))
    ocp = pytest.importorskip("orbax.checkpoint")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", quantized)
        # (orbax before 0.6 needs the shardings in the target.)
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
            jax.eval_shape(int8.init, params),
        )
        restored = checkpointer.restore(tmp_path / "state", target)
    for state in (pickled, restored, momentum_jax.restore_state(pickled, int8, params)):
        _problems.assert_same_bits(jax.tree.map(jnp.asarray, state), quantized)
        chex.assert_trees_all_equal(
            int8.update(_grads(3), state, params)[0], int8.update(_grads(3), quantized, params)[0]
        )


def test_bfloat16_params_with_an_int8_buffer() -> None:
    tx = optax.chain(momentum_jax.momentum(0.05, 0.9, **SR), momentum_jax.stochastic_round_params())
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), _params())
    new, state = _train(tx, params, tx.init(params), range(3))
    chex.assert_trees_all_equal_shapes_and_dtypes(new, params)
    assert state[0].velocity["kernel"].codes.dtype == jnp.int8


def test_lion_with_int8_buffers_keeps_bfloat16_params_bfloat16() -> None:
    # A small array keeps a float32 buffer; its update must still be bfloat16, or a plain
    # p + u (eqx.apply_updates) would widen the param and the next step would recompile.
    tx = momentum_jax.lion(1e-3, **SR)
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), _params())
    state = tx.init(params)
    assert state[0].buffer["bias"].dtype == jnp.float32
    for k in range(2):
        grads = jax.tree.map(lambda g: g.astype(jnp.bfloat16), _grads(k))
        updates, state = tx.update(grads, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        chex.assert_trees_all_equal_dtypes(params, grads)


def test_dequantize_reads_any_tree() -> None:
    params = {**_params(), "frozen": None}
    state = momentum_jax.momentum(0.1, **INT8).init(params)
    read = momentum_jax.dequantize(state)
    assert read.velocity["frozen"] is None
    assert read.velocity["kernel"].dtype == jnp.float32
    assert read.velocity["kernel"].shape == (
        64,
        512,
    )
    assert read.count is state.count
    assert read.velocity["bias"] is state.velocity["bias"]
    # A state's shapes from jax.eval_shape (a checkpoint's target): float32 shapes.
    abstract = jax.eval_shape(momentum_jax.momentum(0.1, **INT8).init, params)
    shapes = momentum_jax.dequantize(abstract).velocity
    assert shapes["kernel"] == jax.ShapeDtypeStruct((64, 512), jnp.float32)


def test_a_state_of_another_accumulator_dtype_is_refused_with_the_fix() -> None:
    """A float32 state (an old checkpoint) would keep 4 bytes per param in an int8 transform,
    and an int8 state cannot run in a float one: restore_state moves either."""
    params = _params()
    grads = jax.tree.map(jnp.ones_like, params)
    int8, plain = momentum_jax.momentum(0.1, **INT8), momentum_jax.momentum(0.1)
    cases = [
        (int8, plain, r"\['kernel'\] is float32, not int8 codes"),
        (plain, int8, r"\['kernel'\] is int8 codes, not a float array"),
        (momentum_jax.momentum(0.1, accumulator_dtype=jnp.bfloat16), plain, "not bfloat16"),
    ]
    for tx, other, says in cases:
        state = other.init(params)
        with pytest.raises(ValueError, match=f"{says}; move a state of another accumulator"):
            tx.update(grads, state)
        tx.update(grads, momentum_jax.restore_state(state, tx, params))


def test_tree_map_params_gives_shardings_with_int8_buffers_as_leaves() -> None:
    """production.md's recipe: with is_leaf, an Int8Buffer meets its param's spec, which its
    codes and its scales (split along the same axes) both take; the state jits onto it."""
    P = jax.sharding.PartitionSpec
    params = {**_params(), "frozen": jnp.int32(3)}
    specs = {"kernel": P(None, "x"), "odd": P("x"), "bias": P("x"), "frozen": None}
    tx = optax.chain(optax.clip_by_global_norm(1.0), momentum_jax.lion(1e-3, **INT8))
    state = tx.init(params)

    def is_int8(x: Any) -> bool:
        return isinstance(x, momentum_jax.Int8Buffer)

    shardings = optax.tree_utils.tree_map_params(
        tx,
        lambda buffer, spec: momentum_jax.Int8Buffer(spec, spec) if is_int8(buffer) else spec,
        state,
        specs,
        transform_non_params=lambda _: P(),
        is_leaf=is_int8,
    )
    buffer = shardings[1][0].buffer
    assert buffer["kernel"] == momentum_jax.Int8Buffer(P(None, "x"), P(None, "x"))
    assert buffer["bias"] == P("x")
    assert buffer["frozen"] is None
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("x",))
    named = jax.tree.map(
        lambda spec: jax.sharding.NamedSharding(mesh, spec),
        shardings,
        is_leaf=lambda x: isinstance(x, P),
    )
    placed = jax.jit(tx.init, out_shardings=named)(params)
    assert placed[1][0].buffer["kernel"].scales.sharding.spec == P(None, "x")
    # Without is_leaf, the Int8Buffer is a subtree where the specs have a leaf.
    with pytest.raises(ValueError, match=r"Int8Buffer|named tuple"):  # JAX 0.4: "named tuple"
        optax.tree_utils.tree_map_params(tx, lambda _, spec: spec, state, specs)


# --- bad input -------------------------------------------------------------------------------


def test_int8_where_it_cannot_work_is_refused() -> None:
    with pytest.raises(
        ValueError,
        match=r"^momentum_jax.momentum: accumulator_dtype=int8 keeps one buffer per array; "
        r"use layout='per_leaf'\.$",
    ):
        momentum_jax.momentum(0.1, **INT8, layout="packed")
    with pytest.raises(ValueError, match=r"^momentum_jax.lion: accumulator_dtype=int8 .*per_leaf"):
        momentum_jax.lion(0.1, **INT8, layout="packed")
    for dtype in (jnp.int16, jnp.uint8, "int32", jnp.bool_):
        with pytest.raises(
            TypeError,
            match=r"^momentum_jax.qhm: accumulator_dtype must be None, a float dtype or jnp\.int8",
        ):
            momentum_jax.qhm(0.1, accumulator_dtype=dtype)
    momentum_jax.qhm(0.1, accumulator_dtype="int8")  # a name is fine
    tx = momentum_jax.scale_by_aggmo(**INT8)
    with pytest.raises(
        TypeError,
        match=r"^momentum_jax.scale_by_aggmo: the param at \['w'\] is complex; accumulator_dtype=int8",
    ):
        tx.init({"w": jnp.zeros((64, 512), jnp.complex64)})


@pytest.mark.parametrize("arg", ["b1", "b2"])
def test_lion_betas_are_checked(arg: str) -> None:
    for value in (1.0, -0.1, 1.5):
        with pytest.raises(
            ValueError,
            match=rf"^momentum_jax.lion: {arg} must be in \[0, 1\), got {arg}={value}\.$",
        ):
            momentum_jax.lion(0.1, **{arg: value})


# --- Lion ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"b1": 0.95, "b2": 0.98, "weight_decay": 0.1},
        {"b1": 0.99, "b2": 0.9, "weight_decay": 0.0},
    ],
    ids=["defaults", "decay", "b1_above_b2"],
)
@pytest.mark.parametrize("schedule", [False, True], ids=["constant", "schedule"])
def test_lion_is_optax_lion_bit_for_bit(kwargs: dict[str, Any], schedule: bool) -> None:
    lr = optax.cosine_decay_schedule(3e-3, 10) if schedule else 3e-3
    ours, theirs = momentum_jax.lion(lr, **kwargs), optax.lion(lr, **kwargs)
    params = _params()
    for jit in (False, True):
        p_ours = p_theirs = params
        s_ours, s_theirs = ours.init(params), theirs.init(params)
        update_ours = jax.jit(ours.update) if jit else ours.update
        update_theirs = jax.jit(theirs.update) if jit else theirs.update
        for k in range(8):
            g = jax.tree.map(lambda x, k=k: x * (-1.0) ** k + 0.01 * k, _grads(k))
            u_ours, s_ours = update_ours(g, s_ours, p_ours)
            u_theirs, s_theirs = update_theirs(g, s_theirs, p_theirs)
            p_ours, p_theirs = (
                optax.apply_updates(p_ours, u_ours),
                optax.apply_updates(p_theirs, u_theirs),
            )
            _problems.assert_same_bits(p_ours, p_theirs)
        _problems.assert_same_bits(s_ours[0].buffer, s_theirs[0].mu)


@pytest.mark.parametrize(
    ("param_dtype", "buffer_dtype"),
    [
        (jnp.bfloat16, jnp.float32),
        (jnp.float16, jnp.float32),
        (jnp.float32, jnp.bfloat16),
        (jnp.bfloat16, None),
    ],
    ids=["bf16_params_f32_buffer", "f16_params_f32_buffer", "f32_params_bf16_buffer", "bf16"],
)
def test_lion_is_optax_lion_bit_for_bit_in_mixed_precision(
    param_dtype: Any, buffer_dtype: Any
) -> None:
    # optax computes each product in the gradient's dtype and returns the promoted update.
    ours = momentum_jax.lion(3e-3, weight_decay=0.1, accumulator_dtype=buffer_dtype)
    theirs = optax.lion(3e-3, weight_decay=0.1, mu_dtype=buffer_dtype)
    p_ours = p_theirs = jax.tree.map(lambda x: x.astype(param_dtype), _params())
    s_ours, s_theirs = ours.init(p_ours), theirs.init(p_theirs)
    update_ours, update_theirs = jax.jit(ours.update), jax.jit(theirs.update)
    for k in range(8):
        g = jax.tree.map(lambda x, k=k: (x * (-1.0) ** k + 0.01 * k).astype(param_dtype), _grads(k))
        u_ours, s_ours = update_ours(g, s_ours, p_ours)
        u_theirs, s_theirs = update_theirs(g, s_theirs, p_theirs)
        chex.assert_trees_all_equal_dtypes(u_ours, u_theirs)
        p_ours = optax.apply_updates(p_ours, u_ours)
        p_theirs = optax.apply_updates(p_theirs, u_theirs)
        _problems.assert_same_bits(p_ours, p_theirs)
    _problems.assert_same_bits(s_ours[0].buffer, s_theirs[0].mu)


def test_lion_masks_its_weight_decay_as_optax_lion_does() -> None:
    mask = {"w": True, "b": False}
    params = {"w": jnp.linspace(-1.0, 1.0, 6), "b": jnp.linspace(2.0, 3.0, 3)}
    ours, theirs = (f(3e-3, weight_decay=0.5, mask=mask) for f in (momentum_jax.lion, optax.lion))
    p_ours = p_theirs = params
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    for k in range(4):
        g = jax.tree.map(lambda p, k=k: jnp.cos(p * (k + 1)), p_ours)
        u_ours, s_ours = ours.update(g, s_ours, p_ours)
        u_theirs, s_theirs = theirs.update(g, s_theirs, p_theirs)
        p_ours = optax.apply_updates(p_ours, u_ours)
        p_theirs = optax.apply_updates(p_theirs, u_theirs)
    _problems.assert_same_bits(p_ours, p_theirs)
    unmasked = momentum_jax.lion(3e-3, weight_decay=0.5)
    u, _ = unmasked.update(g, unmasked.init(params), params)
    assert not np.array_equal(u["b"], ours.update(g, ours.init(params), params)[0]["b"])


def test_lion_with_an_int8_buffer_trains_like_float32() -> None:
    target = jnp.asarray(np.random.default_rng(5).standard_normal((32, 512)), jnp.float32)

    def run(**kwargs: Any) -> float:
        tx = momentum_jax.lion(1e-2, weight_decay=0.0, **kwargs)

        def body(carry: Any, _: Any) -> tuple[Any, None]:
            p, s = carry
            u, s = tx.update(p - target, s, p)
            return (optax.apply_updates(p, u), s), None

        params = jnp.zeros_like(target)
        (p, _), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=400)
        return float(jnp.mean((p - target) ** 2))

    reference = run()
    assert reference < 0.05 * float(jnp.mean(target**2))
    # Stochastic quantization keeps the small buffers of converged elements on average;
    # round-to-nearest zeroes those below half a code of their block, and ends noisier.
    assert abs(run(**SR) - reference) < 0.1 * reference
    assert run(**INT8) < 3 * reference


def test_scales_of_another_shape_are_refused() -> None:
    """Codes with scales that are not their blocks' (a state built by hand, or by a format
    with other blocks) would read back as other values: refused, naming both shapes."""
    tx = momentum_jax.momentum(0.1, 0.9, **INT8)
    params = jnp.ones((64, 64))
    state = tx.init(params)
    assert state.velocity.scales.shape == (16, 1)  # 256 elements (4 rows) a block
    wrong = state._replace(velocity=state.velocity._replace(scales=jnp.ones((64, 1))))
    message = r"codes of shape \(64, 64\) need scales of shape \(16, 1\), got \(64, 1\)\.$"
    with pytest.raises(ValueError, match=r"^momentum_jax.momentum: an Int8Buffer's " + message):
        tx.update(params, wrong, params)
    with pytest.raises(ValueError, match=r"^momentum_jax.dequantize: an Int8Buffer's " + message):
        momentum_jax.dequantize(wrong)


def test_params_named_codes_and_scales_are_not_a_buffer() -> None:
    """A mapping is read as an Int8Buffer's fields only with int8 codes: a model whose
    params are named ``codes`` and ``scales`` keeps float buffers, read as they are."""
    for params in (
        {"codes": jnp.ones((64, 64)), "scales": jnp.ones((16, 1))},
        {"codes": {"w": jnp.ones((64, 64))}, "scales": {"w": jnp.ones(3)}},  # two submodules
    ):
        tx = momentum_jax.momentum(0.1, 0.9, **INT8)
        _, state = tx.update(params, tx.init(params), params)
        read = momentum_jax.dequantize(state)
        chex.assert_trees_all_equal(read.count, state.count)
        assert jax.tree.structure(read.velocity) == jax.tree.structure(params)
