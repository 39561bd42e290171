"""The measurements behind the int8 buffer's design: block size, code map, threshold.

Three questions, each answered with numbers (BENCHMARKS.md, "Eight-bit buffers"):

1. **Error.** A momentum buffer taken from training (the digits MLP 64-256-256-10,
   ``momentum_jax.momentum`` at μ = 0.99, float32) is quantized with each block size and
   code map, round-to-nearest: the RMS error relative to the buffer's RMS, and the share of
   non-zero elements stored as zero.
2. **Training.** The same MLP trained with an int8 velocity of each design, at μ = 0.99 and
   0.999 (α = 0.01 and 0.001), round-to-nearest and stochastic, over seeds: final training
   loss against float32.
3. **Speed.** One donated, jitted step (update and ``optax.apply_updates``) with 10M params
   in one array, interleaved with the float32 step: each design's time as a ratio.
4. **The reduction over blocks**, the pass the codes wait for, in the forms XLA:CPU runs at
   different speeds: a reshape fused into it or kept out by an optimization barrier, a
   padded last block or a block that divides the length.
5. **Threshold.** The package's int8 step against float32 for 1000 arrays of 1K to 64K
   elements: does the cost per array depend on its size?
6. **Shapes.** The state's bytes per param for whole models (GPT-2 small, ResNet-50 with
   PyTorch's and with Flax's kernel layout), and the int8 step against float32 for one
   array of each kind of shape: a long last axis, rows of 32, conv kernels.

Two code maps: ``linear`` (code q stands for q/127 of the block's largest magnitude) and
``sqrt`` (q stands for (q/127)² of it: finer steps near zero, coarser near the top). The
stochastic variants are unbiased for both (the sqrt map's probabilities are taken between
the two neighbouring values it can store).

    python benchmarks/int8_design.py            # ~10 min on 2 CPU cores
    python benchmarks/int8_design.py --quick    # a smoke run
    python benchmarks/int8_design.py --shapes   # section 6 alone
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import _common
from low_precision import init_mlp, loss_fn  # the tanh MLP of examples/low_precision.py

import momentum_jax
from momentum_jax._src import _int8, _rounding

MAPS = ("linear", "sqrt")


class Design(NamedTuple):
    block: int
    map: str


def _blocks(x: jax.Array, block: int) -> jax.Array:
    return x.reshape(*x.shape[:-1], x.shape[-1] // block, block)


def quantize(x: jax.Array, design: Design, key: Any = None) -> tuple[jax.Array, jax.Array]:
    """Codes and block scales of ``x`` (its last axis a multiple of the block)."""
    xb = _blocks(x, design.block)
    scale = jnp.max(jnp.abs(xb), -1, keepdims=True)
    ratio = jnp.where(scale > 0, jnp.abs(xb) / scale, 0.0)
    t = 127 * (ratio if design.map == "linear" else jnp.sqrt(ratio))
    low = jnp.floor(t)
    if key is None:
        k = jnp.round(t)
    else:
        bits = _rounding.element_bits(xb.shape, key)
        uniform = (bits >> 8).astype(jnp.float32) * 2.0**-24
        if design.map == "linear":
            fraction = t - low
        else:  # between the values the map can store: unbiased in x, not in the code
            a, b = (low / 127) ** 2, ((low + 1) / 127) ** 2
            fraction = (ratio - a) / (b - a)
        k = low + (uniform < fraction)
    return (jnp.sign(xb) * k).astype(jnp.int8).reshape(x.shape), scale[..., 0]


def dequantize(codes: jax.Array, scale: jax.Array, design: Design) -> jax.Array:
    q = _blocks(codes, design.block).astype(jnp.float32) / 127
    q = q if design.map == "linear" else q * jnp.abs(q)
    return (q * scale[..., None]).reshape(codes.shape)


def int8_momentum(lr: Any, mu: Any, design: Design, seed: Any = None) -> Any:
    """Heavy-ball momentum (learning rate inside) with an int8 velocity of ``design`` for the
    arrays of 4096 elements or more (flattened into blocks), float32 for the others."""

    def quantized(p: Any) -> bool:
        return p.size >= 4096

    def init(params: Any) -> Any:
        zeros = [jnp.zeros(p.size if quantized(p) else p.shape) for p in jax.tree.leaves(params)]
        return [quantize(z, design) if z.size >= 4096 else z for z in zeros], jnp.int32(0)

    def update(grads: Any, state: Any, params: Any = None) -> Any:
        buffers, count = state
        leaves, treedef = jax.tree.flatten(grads)
        keys = [None] * len(leaves)
        if seed is not None:
            keys = _rounding.leaf_keys(seed, _rounding.BUFFERS, count, len(leaves))
        out, new = [], []
        for g, b, key in zip(leaves, buffers, keys, strict=True):
            if not quantized(g):
                new.append(mu * b + lr * g)
                out.append(-new[-1])
                continue
            v = mu * dequantize(*b, design) + lr * g.reshape(-1)
            new.append(quantize(v, design, key))
            out.append(-dequantize(*new[-1], design).reshape(g.shape))
        return jax.tree.unflatten(treedef, out), (new, count + 1)

    return optax.GradientTransformation(init, update)


SIZES = (64, 256, 256, 10)


def train(
    make: Callable[[Any, Any, Any], Any], settings: Any, seeds: Any, steps: int
) -> np.ndarray:
    """Final training loss, shape (settings, seeds)."""
    x, y, _, _ = map(jnp.asarray, _common.load_digits())

    def one(mu: Any, lr: Any, seed: Any) -> jax.Array:
        params = init_mlp(seed, SIZES)
        tx = make(lr, mu, seed)

        def step(carry: Any, _: Any) -> Any:
            params, state = carry
            grads = jax.grad(loss_fn)(params, x, y)
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        (last, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
        return loss_fn(last, x, y)

    program = jax.jit(jax.vmap(one, (None, None, 0)))
    seeds = jnp.asarray(seeds)
    return np.stack([np.asarray(program(mu, lr, seeds)) for mu, lr in settings])


def snapshot(steps: int) -> list[np.ndarray]:
    """The float32 velocity of the two 256-wide kernels after ``steps`` steps at μ = 0.99."""
    x, y, _, _ = map(jnp.asarray, _common.load_digits())
    tx = momentum_jax.momentum(0.001, 0.99)
    params = init_mlp(0, SIZES)

    def step(carry: Any, _: Any) -> Any:
        params, state = carry
        updates, state = tx.update(jax.grad(loss_fn)(params, x, y), state, params)
        return (optax.apply_updates(params, updates), state), None

    (_, state), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps))(
        (params, tx.init(params))
    )
    return [np.asarray(state.velocity[i][0]) for i in (0, 1)]


def error_table(buffers: list[np.ndarray], designs: list[Design]) -> list[dict[str, Any]]:
    rows = []
    for design in designs:
        err, total, zeroed, nonzero = 0.0, 0.0, 0, 0
        for v in buffers:
            v = v.reshape(-1)
            back = np.asarray(dequantize(*quantize(jnp.asarray(v), design), design))
            err += float(np.sum((back - v) ** 2))
            total += float(np.sum(v**2))
            zeroed += int(np.sum((back == 0) & (v != 0)))
            nonzero += int(np.sum(v != 0))
        rows.append({"design": design, "rel_rms": (err / total) ** 0.5, "zeroed": zeroed / nonzero})
    return rows


def time_steps(
    builders: dict[str, Callable[[], Any]], shapes: list[tuple[int, ...]], reps: int
) -> dict[str, float]:
    """Median per-repetition ratio of each step's time to the first's, interleaved."""
    steps = {}
    for name, make in builders.items():
        tx = make()
        params = [jnp.ones(s) for s in shapes]
        grads = [1e-3 * jnp.ones(s) for s in shapes]

        def step(p: Any, s: Any, g: Any, tx: Any = tx) -> Any:
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        compiled = (
            jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), grads).compile()
        )
        steps[name] = [compiled, params, tx.init(params), grads]
    times: dict[str, list[float]] = {name: [] for name in builders}
    for _ in range(reps):
        for name, entry in steps.items():
            compiled, p, s, g = entry
            p, s = compiled(p, s, g)
            jax.block_until_ready((p, s))
            start, n = time.perf_counter(), 0
            while time.perf_counter() - start < 0.2:
                p, s = compiled(p, s, g)
                n += 1
            jax.block_until_ready((p, s))
            times[name].append((time.perf_counter() - start) / n)
            entry[1], entry[2] = p, s
    first = next(iter(times))
    return {
        name: statistics.median(a / b for a, b in zip(t, times[first], strict=True))
        for name, t in times.items()
    } | {"ms " + first: 1e3 * statistics.median(times[first])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, seeds and repetitions")
    parser.add_argument("--shapes", action="store_true", help="section 6 alone (about 1 min)")
    args = parser.parse_args(argv)
    steps, seeds, reps, total = (
        (100, [0, 1], 3, 1 << 20) if args.quick else (1000, [0, 1, 2], 7, 10 * (1 << 20))
    )
    if args.shapes:
        return by_shape(reps)

    designs = [Design(b, m) for m in MAPS for b in (64, 128, 256, 2048)]
    print("1. quantization error of a trained velocity (round-to-nearest)")
    print(f"{'block':>6} {'map':>7} {'rel. RMS error':>15} {'non-zeros lost':>15}")
    for row in error_table(snapshot(300 if not args.quick else 50), designs):
        d = row["design"]
        print(f"{d.block:>6} {d.map:>7} {row['rel_rms']:>15.4f} {row['zeroed']:>15.4f}")

    print(f"\n2. final training loss after {steps} steps, mean ± std over {len(seeds)} seeds")
    settings = ((0.99, 0.001), (0.999, 0.0001))
    float32 = train(lambda lr, mu, seed: momentum_jax.momentum(lr, mu), settings, seeds, steps)
    print(f"{'design':>22}" + "".join(f"{f'μ={mu:g}':>28}" for mu, _ in settings))
    print(
        f"{'float32':>22}" + "".join(f"{_common.mean_std(float32[i], '.5f'):>28}" for i in range(2))
    )
    for design, rounding in itertools.product(
        [Design(256, "linear"), Design(256, "sqrt"), Design(2048, "linear")],
        ("nearest", "stochastic"),
    ):

        def make(lr: Any, mu: Any, seed: Any, d: Design = design, r: str = rounding) -> Any:
            return int8_momentum(lr, mu, d, seed if r == "stochastic" else None)

        loss = train(make, settings, seeds, steps)
        cells = [
            f"{_common.mean_std(loss[i], '.5f')} {_verdict(loss[i], float32[i])}" for i in range(2)
        ]
        print(
            f"{f'{design.block} {design.map} {rounding}':>22}" + "".join(f"{c:>28}" for c in cells)
        )

    print(f"\n3. step time, {total / 2**20:g}Mi params in one array, ratio to float32")
    shape = [(total // 1024, 1024)]
    f32 = {"float32": lambda: momentum_jax.momentum(1e-3, 0.9)}
    print("   the package, round-to-nearest and stochastic, by block size")
    for block in (64, 128, 256, 1024):
        _int8.BLOCK = block
        ratios = time_steps(
            {
                **f32,
                "nearest": lambda: momentum_jax.momentum(1e-3, 0.9, accumulator_dtype=jnp.int8),
                "stochastic": lambda: momentum_jax.momentum(
                    1e-3, 0.9, accumulator_dtype=jnp.int8, stochastic_rounding=True
                ),
            },
            shape,
            reps,
        )
        print(f"{block:>8}: nearest {ratios['nearest']:.2f}, stochastic {ratios['stochastic']:.2f}")
    _int8.BLOCK = 256
    print("   the two maps in the same plain formulation (blocks of 256)")
    maps = {**f32}
    for name in MAPS:
        for seed in (None, 0):
            maps[f"{name} {'stochastic' if seed == 0 else 'nearest'}"] = lambda n=name, s=seed: (
                int8_momentum(1e-3, 0.9, Design(256, n), s)
            )
    for name, ratio in time_steps(maps, [(total,)], reps).items():
        print(f"{name:>24} {ratio:8.2f}")

    print("\n4. the reduction over blocks, by form (ms)")
    for name, ms in reductions(reps).items():
        print(f"{name:>36} {ms:8.2f}")

    print("\n5. the package's int8 step against float32, 1000 arrays of n elements each")
    _int8.MIN_SIZE = 1  # every array in int8, to see what it costs
    for n in (1024, 4096, 16384, 65536):
        builders = {
            **f32,
            "int8": lambda: momentum_jax.momentum(1e-3, 0.9, accumulator_dtype=jnp.int8),
        }
        shapes = [(n // 256, 256)] * (1000 if not args.quick else 50)
        print(f"{n:>8}: int8 / float32 = {time_steps(builders, shapes, reps)['int8']:.2f}")
    _int8.MIN_SIZE = 4096

    by_shape(reps)


def by_shape(reps: int) -> None:
    """Section 6: state bytes per param of whole models, the step by shape."""
    print("\n6. by shape: state bytes per param of whole models, step time against float32")
    bench = _bench_step()
    resnet = bench.resnet50_shapes()
    models = {
        "GPT-2 small": bench.gpt2_small_shapes(),
        "ResNet-50, (out, in, h, w) kernels": resnet,
        "ResNet-50, (h, w, in, out) kernels": [
            (*s[2:], s[1], s[0]) if len(s) == 4 else s for s in resnet
        ],
    }
    tx = momentum_jax.momentum(1e-3, 0.9, accumulator_dtype=jnp.int8)
    for name, shapes in models.items():
        params = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
        state = jax.eval_shape(tx.init, params).velocity
        size = sum(np.prod(s) for s in shapes)
        coded = sum(np.prod(b.codes.shape) for b in state if isinstance(b, momentum_jax.Int8Buffer))
        nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
        print(f"{name:>36}: {nbytes / size:.4f} bytes per param, {coded / size:.1%} in int8")
    builders = {
        "float32": lambda: momentum_jax.momentum(1e-3, 0.9),
        "int8": lambda: momentum_jax.momentum(1e-3, 0.9, accumulator_dtype=jnp.int8),
        "int8 stochastic": lambda: momentum_jax.momentum(
            1e-3, 0.9, accumulator_dtype=jnp.int8, stochastic_rounding=True
        ),
    }
    for shape in [(16384, 256), (131072, 32), (512, 512, 3, 3), (3, 3, 512, 512)]:
        ratios = time_steps(builders, [shape], reps)
        cells = ", ".join(f"{k} {ratios[k]:.2f}" for k in list(builders)[1:])
        print(f"{shape!s:>36}: {cells} (float32 {ratios['ms float32']:.2f} ms)")


def _bench_step() -> Any:
    """benchmarks/bench_step.py, for its model shapes."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_step

    return bench_step


def reductions(reps: int) -> dict[str, float]:
    """Milliseconds to reduce the blocks of ``|0.9 * decoded + 0.1 * g|``, 10M values, by form."""
    rng = np.random.default_rng(0)

    def inputs(n: int, block: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        codes = jnp.asarray(rng.integers(-127, 128, n), jnp.int8)
        scales = jnp.asarray(rng.uniform(1, 2, -(-n // block)), jnp.float32)
        return codes, scales, jnp.asarray(rng.standard_normal(n), jnp.float32)

    def form(view: Callable[[jax.Array], jax.Array], block: int) -> Callable[..., jax.Array]:
        def reduce(codes: jax.Array, scales: jax.Array, g: jax.Array) -> jax.Array:
            decoded = view(codes).astype(jnp.float32) / 127 * scales[:, None]
            return jnp.max(jnp.abs(0.9 * decoded + 0.1 * view(g)), axis=-1)

        return jax.jit(reduce)

    def blocks(block: int, barrier: bool, pad: int = 0) -> Callable[[jax.Array], jax.Array]:
        def view(x: jax.Array) -> jax.Array:
            x = jnp.pad(x, (0, pad)).reshape(-1, block)
            return jax.lax.optimization_barrier(x) if barrier else x

        return view

    n = 10 * 2**20
    cases = {
        "reshape fused into the reduction": (form(blocks(256, False), 256), inputs(n, 256)),
        "reshape behind a barrier": (form(blocks(256, True), 256), inputs(n, 256)),
        "10M: a padded last block of 256": (
            form(blocks(256, True, -(10**7) % 256), 256),
            inputs(10**7, 256),
        ),
        "10M: blocks of 128, no padding": (form(blocks(128, True), 128), inputs(10**7, 128)),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, (fn, args) in cases.items():
            jax.block_until_ready(fn(*args))
            start, calls = time.perf_counter(), 0
            while time.perf_counter() - start < 0.2:
                out = fn(*args)
                calls += 1
            jax.block_until_ready(out)
            times[name].append(1e3 * (time.perf_counter() - start) / calls)
    return {name: statistics.median(t) for name, t in times.items()}


def _verdict(a: np.ndarray, b: np.ndarray) -> str:
    said = _common.verdict(a, b, "better", "worse")
    return "~" if said == "no clear difference" else said


if __name__ == "__main__":
    main()
