"""Time one full momentum step (update + apply) against optax and PyTorch.

Every contender runs interleaved with the others in the same process, config by
config and repetition by repetition, so drift of a shared machine hits them all
alike; results are reported as medians and as per-repetition ratios.

Contenders, all with momentum 0.9 and float32 params:
  * ``momentum_jax.momentum`` and ``momentum_jax.nesterov`` (learning rate
    inside the velocity) and ``momentum_jax.compat.torch_sgd`` (the gradient
    buffer with the learning rate outside) under ``jax.jit`` with the params
    and state donated (update and ``optax.apply_updates`` in one compiled step);
  * ``optax.sgd(lr, momentum=0.9)``, compiled and donated the same way;
  * ``torch.optim.SGD(momentum=0.9, foreach=True)`` and ``fused=True``;
  * a STREAM-style triad ``a = b + s*c`` (torch, ``out=a``) and its in-place
    form ``a = a + s*c`` (jax, donated), over arrays of the same total size:
    the memory-bandwidth roofline of this machine (the faster of the two).

A momentum step reads params, velocity and gradients and writes params and
velocity: 20 bytes per float32 parameter. The triad moves 12 bytes per element.

Parameter sets: synthetic ones (10M params split into 1 to 5000 equal arrays,
50M in one) and the shapes of real models: GPT-2 small (124M params in 148
arrays) and ResNet-50 (25.6M in 161). On a GPU (detected from JAX's default
backend; torch then runs on CUDA) each JAX contender is also timed as device
time: ``--loop`` steps inside one jitted ``lax.fori_loop``, which removes the
per-call dispatch that the Python loop pays. ``momentum_jax.momentum`` runs in
its default layout (one buffer per array) and, on GPU or with
``--other-layout``, in the packed layout too.

    python benchmarks/bench_step.py                 # the full suite (~5 min on CPU)
    python benchmarks/bench_step.py --quick         # a smoke run (~30 s)
    python benchmarks/bench_step.py --sets gpt2-small resnet50
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import momentum_jax
from momentum_jax import compat

LR = 1e-3
MU = 0.9
BYTES_PER_PARAM_STEP = 20  # read theta, v, g; write theta, v (float32)
TRIAD_BYTES_PER_ELEMENT = 12  # read b, c; write a


@dataclass
class Contender:
    """A step to time: ``run(n)`` performs n steps and blocks until done."""

    name: str
    run: Callable[[int], None]
    compile_seconds: float | None = None
    state_bytes: int | None = None
    temp_bytes: int | None = None
    bytes_per_step: float = 0.0
    times: list[float] = field(default_factory=list)
    steps_per_call: int = 1


def split_sizes(total: int, arrays: int) -> list[int]:
    base, extra = divmod(total, arrays)
    return [base + (1 if i < extra else 0) for i in range(arrays)]


Shapes = list[tuple[int, ...]]


def gpt2_small_shapes() -> Shapes:
    """The parameter arrays of GPT-2 small (Radford et al. 2019): 124,439,808 params, 148 arrays."""
    d, vocab, context, layers = 768, 50257, 1024, 12
    shapes: Shapes = [(vocab, d), (context, d)]
    for _ in range(layers):
        shapes += [(d,), (d,)]  # ln_1
        shapes += [(d, 3 * d), (3 * d,), (d, d), (d,)]  # attention: qkv and projection
        shapes += [(d,), (d,)]  # ln_2
        shapes += [(d, 4 * d), (4 * d,), (4 * d, d), (d,)]  # MLP
    return [*shapes, (d,), (d,)]  # ln_f


def resnet50_shapes() -> Shapes:
    """The trainable arrays of ResNet-50 (He et al. 2016): 25,557,032 params, 161 arrays."""
    shapes: Shapes = [(64, 3, 7, 7), (64,), (64,)]
    inplanes = 64
    for planes, blocks in [(64, 3), (128, 4), (256, 6), (512, 3)]:
        for block in range(blocks):
            convs = [(planes, inplanes, 1, 1), (planes, planes, 3, 3), (4 * planes, planes, 1, 1)]
            if block == 0:
                convs.append((4 * planes, inplanes, 1, 1))  # the projection shortcut
            for shape in convs:
                shapes += [shape, (shape[0],), (shape[0],)]  # conv, batch-norm scale and bias
            inplanes = 4 * planes
    return [*shapes, (1000, 2048), (1000,)]


def synthetic(total: int, arrays: int) -> Shapes:
    return [(n,) for n in split_sizes(total, arrays)]


PARAM_SETS: dict[str, Callable[[], Shapes]] = {
    "10M in 1": lambda: synthetic(10_000_000, 1),
    "10M in 100": lambda: synthetic(10_000_000, 100),
    "10M in 1000": lambda: synthetic(10_000_000, 1000),
    "10M in 5000": lambda: synthetic(10_000_000, 5000),
    "50M in 1": lambda: synthetic(50_000_000, 1),
    "gpt2-small": gpt2_small_shapes,
    "resnet50": resnet50_shapes,
}


def _tree_bytes(tree: Any) -> int:
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _numel(shapes: Shapes) -> int:
    return sum(math.prod(shape) for shape in shapes)


def looped(step: Callable[..., Any], loop: int) -> Callable[..., Any]:
    """``loop`` calls of ``step(params, state, grads)`` in one ``lax.fori_loop``, the
    gradients taken in turn from ``pairs`` (each array stacked with another: two sets)."""

    def steps(params: Any, state: Any, pairs: Any) -> tuple[Any, Any]:
        def body(i: jax.Array, carry: Any) -> Any:
            return step(*carry, [pair[i % 2] for pair in pairs])

        return jax.lax.fori_loop(0, loop, body, (params, state))

    return steps


def jax_contender(
    name: str, tx: optax.GradientTransformation, shapes: Shapes, seed: int, loop: int = 0
) -> Contender:
    """One donated, jitted step per call; with ``loop > 0``, ``loop`` steps in one call.

    The looped form runs the steps inside a ``lax.fori_loop``: no Python
    dispatch between steps, so on an accelerator it measures device time. Its
    steps alternate between two sets of gradients: with one set, every step's
    gradients would be loop-invariant, and XLA would hoist the work that reads
    only them (the packed layout's concatenation, ``lr * g``) out of the loop,
    which a real step pays every time.
    """
    rng = np.random.default_rng(seed)
    params = [jnp.asarray(rng.standard_normal(shape, dtype=np.float32)) for shape in shapes]
    grads = [jnp.asarray(rng.standard_normal(shape, dtype=np.float32) * 1e-3) for shape in shapes]
    state = tx.init(params)

    def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    steps = looped(step, loop)
    if loop > 0:  # two gradient sets, alternated: nothing in a step is loop-invariant
        grads = [jnp.stack([g, -g]) for g in grads]

    per_call = loop if loop > 0 else 1
    start = time.perf_counter()
    compiled = (
        jax.jit(steps if loop > 0 else step, donate_argnums=(0, 1))
        .lower(params, state, grads)
        .compile()
    )
    compile_seconds = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    temp = int(getattr(analysis, "temp_size_in_bytes", 0)) if analysis is not None else None
    holder = {"params": params, "state": state}

    def run(n: int) -> None:
        p, s = holder["params"], holder["state"]
        for _ in range(max(1, n // per_call)):
            p, s = compiled(p, s, grads)
        jax.block_until_ready((p, s))
        holder["params"], holder["state"] = p, s

    run(per_call)  # warm up; buffers are donated from here on
    return Contender(
        name,
        run,
        compile_seconds=compile_seconds,
        state_bytes=_tree_bytes(holder["state"]),
        temp_bytes=temp,
        bytes_per_step=BYTES_PER_PARAM_STEP * _numel(shapes),
        steps_per_call=per_call,
    )


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() and jax.default_backend() == "gpu" else "cpu"


def _torch_sync() -> None:
    import torch

    if torch_device() == "cuda":
        torch.cuda.synchronize()


def torch_contender(name: str, shapes: Shapes, seed: int, **options: Any) -> Contender:
    import torch

    device = torch_device()
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(shape, generator=generator).to(device) for shape in shapes]
    for p in params:
        p.grad = (torch.randn(p.shape, generator=generator) * 1e-3).to(device)
    opt = torch.optim.SGD(params, lr=LR, momentum=MU, **options)

    @torch.no_grad()
    def run(n: int) -> None:
        for _ in range(n):
            opt.step()
        _torch_sync()

    run(2)  # creates the momentum buffers
    state_bytes = sum(
        opt.state[p]["momentum_buffer"].numel() * opt.state[p]["momentum_buffer"].element_size()
        for p in params
    )
    return Contender(
        name, run, state_bytes=state_bytes, bytes_per_step=BYTES_PER_PARAM_STEP * _numel(shapes)
    )


def triad_contenders(total: int) -> list[Contender]:
    import torch

    a, b, c = (torch.rand(total, device=torch_device()) for _ in range(3))

    def run_torch(n: int) -> None:
        for _ in range(n):
            torch.add(b, c, alpha=3.0, out=a)
        _torch_sync()

    # In place (a = a + s*c, the buffer donated): a fresh output buffer every
    # call would time the page faults of the allocation, not the memory.
    jc = jnp.full(total, 1e-6)
    axpy = jax.jit(lambda a, c: a + 3.0 * c, donate_argnums=0)
    holder = {"a": jnp.zeros(total)}

    def run_jax(n: int) -> None:
        out = holder["a"]
        for _ in range(n):
            out = axpy(out, jc)
        out.block_until_ready()
        holder["a"] = out

    run_torch(2)
    run_jax(2)
    nbytes = TRIAD_BYTES_PER_ELEMENT * total
    return [
        Contender("triad (torch)", run_torch, bytes_per_step=nbytes),
        Contender("triad (jax, in place)", run_jax, bytes_per_step=nbytes),
    ]


def build(shapes: Shapes, contenders: list[str], seed: int, loop: int = 0) -> list[Contender]:
    other = "packed"
    factories: dict[str, Callable[[], Contender]] = {
        # The default layout and the packed one, side by side.
        f"momentum_jax.momentum [{other}]": lambda: jax_contender(
            f"momentum_jax.momentum [{other}]",
            momentum_jax.momentum(LR, MU, layout=other),
            shapes,
            seed,
        ),
        "momentum_jax.momentum": lambda: jax_contender(
            "momentum_jax.momentum", momentum_jax.momentum(LR, MU), shapes, seed
        ),
        "momentum_jax.nesterov": lambda: jax_contender(
            "momentum_jax.nesterov", momentum_jax.nesterov(LR, MU), shapes, seed
        ),
        "momentum_jax.compat.torch_sgd": lambda: jax_contender(
            "momentum_jax.compat.torch_sgd", compat.torch_sgd(LR, MU), shapes, seed
        ),
        "optax.sgd": lambda: jax_contender("optax.sgd", optax.sgd(LR, momentum=MU), shapes, seed),
        "torch foreach": lambda: torch_contender("torch foreach", shapes, seed, foreach=True),
        "torch fused": lambda: torch_contender("torch fused", shapes, seed, fused=True),
    }
    if loop > 0:
        # Device time: the same steps inside one jitted loop.
        for name, tx in [
            ("momentum_jax.momentum", momentum_jax.momentum(LR, MU)),
            (f"momentum_jax.momentum [{other}]", momentum_jax.momentum(LR, MU, layout=other)),
            ("optax.sgd", optax.sgd(LR, momentum=MU)),
        ]:
            looped = f"{name} [jitted loop]"
            factories[looped] = lambda n=looped, t=tx: jax_contender(n, t, shapes, seed, loop)
            contenders = [*contenders, looped]
    built = [factories[name]() for name in contenders]
    if len(shapes) == 1:
        built += triad_contenders(_numel(shapes))
    return built


def measure(built: list[Contender], reps: int, target_seconds: float) -> None:
    # Enough steps per repetition that each timing spans ~target_seconds.
    for c in built:
        start = time.perf_counter()
        c.run(c.steps_per_call)
        one = max(time.perf_counter() - start, 1e-5)
        per_call = c.steps_per_call
        calls = max(1, min(200, int(target_seconds / one)))
        c.steps = calls * per_call  # type: ignore[attr-defined]
    for rep in range(reps):
        order = built[rep % len(built) :] + built[: rep % len(built)]
        for c in order:
            gc.collect()
            start = time.perf_counter()
            c.run(c.steps)  # type: ignore[attr-defined]
            c.times.append((time.perf_counter() - start) / c.steps)  # type: ignore[attr-defined]


def summarise(
    total: int, arrays: int, built: list[Contender], name: str | None = None
) -> dict[str, Any]:
    by_name = {c.name: c for c in built}
    peers = [by_name[n] for n in ("optax.sgd", "torch fused") if n in by_name]
    triads = [c for c in built if c.name.startswith("triad")]
    roofline = (
        max(c.bytes_per_step / statistics.median(c.times) for c in triads) if triads else None
    )
    rows = []
    for c in built:
        median = statistics.median(c.times)
        q = np.percentile(c.times, [25, 75])
        row: dict[str, Any] = {
            "contender": c.name,
            "median_ms": 1e3 * median,
            "iqr_ms": [1e3 * q[0], 1e3 * q[1]],
            "gbytes_per_s": c.bytes_per_step / median / 1e9,
            "compile_s": c.compile_seconds,
            "state_bytes": c.state_bytes,
            "temp_bytes": c.temp_bytes,
        }
        if peers and c not in triads:
            # Per repetition: this contender's time over the best peer's in the
            # same repetition, then the median of those ratios.
            best = [min(p.times[i] for p in peers) for i in range(len(c.times))]
            row["ratio_to_best_peer"] = statistics.median(
                t / b for t, b in zip(c.times, best, strict=True)
            )
        if roofline is not None and c not in triads:
            row["fraction_of_roofline"] = c.bytes_per_step / median / roofline
        rows.append(row)
    return {
        "set": name or f"{total / 1e6:g}M in {arrays}",
        "params": total,
        "arrays": arrays,
        "roofline_gbytes_per_s": None if roofline is None else roofline / 1e9,
        "rows": rows,
    }


def print_table(result: dict[str, Any]) -> None:
    roof = result["roofline_gbytes_per_s"]
    head = (
        f"\n{result.get('set', '')}: {result['params'] / 1e6:g}M params in "
        f"{result['arrays']} array(s)"
    )
    print(head + (f" — triad roofline {roof:.1f} GB/s" if roof else ""))
    print(
        f"{'contender':38s} {'median ms':>10s} {'IQR ms':>15s} {'GB/s':>7s} "
        f"{'ratio':>6s} {'roof':>5s} {'compile s':>9s} {'state MB':>9s} {'temp MB':>8s}"
    )
    for r in result["rows"]:
        print(
            f"{r['contender']:38s} {r['median_ms']:10.3f} "
            f"{r['iqr_ms'][0]:7.3f}-{r['iqr_ms'][1]:<7.3f} {r['gbytes_per_s']:7.1f} "
            f"{_fmt(r.get('ratio_to_best_peer'), '.2f'):>6s} "
            f"{_fmt(r.get('fraction_of_roofline'), '.0%'):>5s} "
            f"{_fmt(r['compile_s'], '.2f'):>9s} "
            f"{_fmt(r['state_bytes'], '.1f', 1e-6):>9s} "
            f"{_fmt(r['temp_bytes'], '.2f', 1e-6):>8s}"
        )


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "" if value is None else format(value * scale, spec)


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "optax": optax.__version__,
        "jax_devices": [str(d.device_kind) for d in jax.devices()][:1],
        "torch": torch.__version__,
        "torch_device": torch_device(),
        "torch_cuda_device": torch.cuda.get_device_name() if torch_device() == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "momentum_jax": momentum_jax.__version__,
    }


def memory_report(total: int) -> dict[str, Any]:
    """State size per parameter, and what donation leaves behind, for one array."""
    params = [jnp.ones(total)]
    grads = [jnp.full(total, 1e-3)]
    report: dict[str, Any] = {"params": total, "param_bytes": 4 * total}
    for name, tx in [
        ("momentum_jax.momentum", momentum_jax.momentum(LR, MU)),
        ("momentum_jax.momentum bf16 accumulator", momentum_jax.momentum(
            LR, MU, accumulator_dtype=jnp.bfloat16)),
        ("optax.sgd", optax.sgd(LR, momentum=MU)),
    ]:  # fmt: skip
        state = tx.init(params)

        def step(p: Any, s: Any, g: Any, tx: optax.GradientTransformation = tx) -> Any:
            updates, s = tx.update(g, s, p)
            return optax.apply_updates(p, updates), s

        compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
        analysis = compiled.memory_analysis()
        inputs = jax.tree.leaves((params, state))
        new_params, new_state = compiled(params, state, grads)
        jax.block_until_ready((new_params, new_state))
        report[name] = {
            "state_bytes_per_param": _tree_bytes(new_state) / total,
            "temp_bytes": int(analysis.temp_size_in_bytes) if analysis else None,
            "alias_bytes": int(analysis.alias_size_in_bytes) if analysis else None,
            "donated_inputs_freed": all(x.is_deleted() for x in inputs),
        }
        params = [jnp.ones(total)]
    return report


CPU_SETS = ["10M in 1", "10M in 100", "10M in 1000", "10M in 5000", "50M in 1", "resnet50"]
GPU_SETS = ["10M in 1", "10M in 1000", "resnet50", "gpt2-small"]
CONTENDERS = [
    "momentum_jax.momentum",
    "momentum_jax.nesterov",
    "momentum_jax.compat.torch_sgd",
    "optax.sgd",
    "torch foreach",
    "torch fused",
]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="interleaved repetitions")
    parser.add_argument(
        "--seconds", type=float, default=0.25, help="target time per timing (default 0.25 s)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    parser.add_argument(
        "--sets",
        nargs="*",
        choices=list(PARAM_SETS),
        help="parameter sets to time (default: the CPU or GPU list, by backend)",
    )
    parser.add_argument(
        "--loop",
        type=int,
        default=None,
        help="also time steps inside one jitted loop of this length (default 20 on GPU)",
    )
    parser.add_argument(
        "--other-layout",
        action="store_true",
        help="also time momentum in the packed state layout (always on GPU)",
    )
    parser.add_argument("--json", default="benchmarks/out/bench_step.json", help="JSON output")
    args = parser.parse_args(argv)

    gpu = jax.default_backend() == "gpu"
    if args.quick:
        sets = {"1M in 1": synthetic(1_000_000, 1), "1M in 100": synthetic(1_000_000, 100)}
    else:
        sets = {name: PARAM_SETS[name]() for name in args.sets or (GPU_SETS if gpu else CPU_SETS)}
    loop = args.loop if args.loop is not None else (20 if gpu else 0)
    reps = 3 if args.quick else args.reps
    info = machine()
    print("machine:", json.dumps(info))
    results = []
    for name, shapes in sets.items():
        contenders = CONTENDERS
        if gpu or args.other_layout:
            # On CPU the packed layout compiles slowly (about 10 s at 1000 arrays):
            # only on request there.
            contenders = [*CONTENDERS, "momentum_jax.momentum [packed]"]
        built = build(shapes, contenders, seed=0, loop=loop)
        measure(built, reps, args.seconds)
        result = summarise(_numel(shapes), len(shapes), built, name)
        print_table(result)
        results.append(result)
        del built
        gc.collect()
    memory = memory_report(_numel(next(iter(sets.values()))))
    print("\nmemory (one array):")
    for name, entry in memory.items():
        if isinstance(entry, dict):
            print(
                f"  {name:40s} state {entry['state_bytes_per_param']:.1f} B/param, "
                f"temp {entry['temp_bytes']} B, aliased {entry['alias_bytes']} B, "
                f"donated inputs freed: {entry['donated_inputs_freed']}"
            )
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(
            {"machine": info, "reps": reps, "results": results, "memory": memory}, f, indent=2
        )
    print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    # Compile times are XLA's own, never hits in a cache a JAX_COMPILATION_CACHE_DIR names.
    jax.config.update("jax_enable_compilation_cache", False)
    main()
