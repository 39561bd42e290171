"""Trace and compile time of one jitted momentum step against ``optax.sgd``.

Models with many parameter arrays pay tracing and compilation once per
jitted step; this measures that cost for a step (``update`` and
``optax.apply_updates``, params and state donated) over ``--leaves`` arrays of
mixed shapes (64x64 kernels, 256x64 kernels and 64-element biases, in turn).
Contenders run interleaved, repetition by repetition, with JAX's caches
cleared before each, and are reported as medians and as ratios to optax.sgd
(Nesterov contenders to ``optax.sgd(..., nesterov=True)``, the same form).

    python benchmarks/compile_time.py                    # 1000 and 5000 leaves
    python benchmarks/compile_time.py --leaves 1000 --repeats 3
    python benchmarks/compile_time.py --leaves 1000 --other-layout   # + the packed layout on CPU
    python benchmarks/compile_time.py --rev 87c1380      # + 0.4.0's momentum and nesterov
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

import momentum_jax
from momentum_jax import compat

SHAPES = [(64, 64), (256, 64), (64,)]


def contenders(
    packed: bool, old: Any = None, rev: str = ""
) -> dict[str, Callable[[], optax.GradientTransformation]]:
    """Each transform in its default layout; with ``packed``, momentum in the packed one too;
    with ``old`` (a release's package, from git revision ``rev``), its momentum and nesterov."""
    found: dict[str, Callable[[], optax.GradientTransformation]] = {
        "optax.sgd": lambda: optax.sgd(0.1, momentum=0.9),
        "momentum": lambda: momentum_jax.momentum(0.1, 0.9),
        "torch_sgd": lambda: compat.torch_sgd(0.1, 0.9),
        # Nesterov is compared with optax's own Nesterov form too.
        "optax.sgd nesterov": lambda: optax.sgd(0.1, momentum=0.9, nesterov=True),
        "nesterov": lambda: momentum_jax.nesterov(0.1, 0.9),
    }
    if packed:
        found["momentum packed"] = lambda: momentum_jax.momentum(0.1, 0.9, layout="packed")
    if old is not None:
        found[f"{rev} momentum"] = lambda: old.momentum(0.1, 0.9)
        found[f"{rev} nesterov"] = lambda: old.nesterov(0.1, 0.9)
    return found


def params_with(leaves: int) -> list[jax.Array]:
    return [jnp.zeros(SHAPES[i % len(SHAPES)], jnp.float32) for i in range(leaves)]


def measure(tx: optax.GradientTransformation, params: Any) -> tuple[float, float]:
    """Seconds to trace+lower, and to compile, one donated step."""
    state = tx.init(params)

    def step(params: Any, state: Any, grads: Any) -> Any:
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    jax.clear_caches()
    start = time.perf_counter()
    lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, params)
    traced = time.perf_counter()
    lowered.compile()
    done = time.perf_counter()
    return traced - start, done - traced


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leaves", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--other-layout",
        action="store_true",
        help="also time momentum in the packed layout",
    )
    parser.add_argument(
        "--rev",
        help="also time an earlier release's momentum and nesterov (a git revision; see "
        "against_release.py)",
    )
    args = parser.parse_args(argv)
    old = None
    if args.rev:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        old = importlib.import_module("against_release").import_release(args.rev)
    print(f"jax {jax.__version__}, optax {optax.__version__}, backend {jax.default_backend()}")
    for leaves in args.leaves:
        params = params_with(leaves)
        found = contenders(args.other_layout, old, args.rev or "")
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in found}
        for _ in range(args.repeats):
            for name, factory in found.items():
                times[name].append(measure(factory(), params))
        # Each contender against optax's same form: Nesterov against optax's Nesterov.
        bases = {
            form: [t + c for t, c in times[form]] for form in ("optax.sgd", "optax.sgd nesterov")
        }
        print(f"\n{leaves} leaves ({args.repeats} interleaved repeats, medians)")
        print(f"{'contender':<20} {'trace s':>8} {'compile s':>10} {'total s':>8} {'/ optax':>8}")
        for name, pairs in times.items():
            trace = statistics.median(t for t, _ in pairs)
            comp = statistics.median(c for _, c in pairs)
            base = bases["optax.sgd nesterov" if "nesterov" in name else "optax.sgd"]
            ratios = [(t + c) / b for (t, c), b in zip(pairs, base, strict=True)]
            total = statistics.median(t + c for t, c in pairs)
            print(
                f"{name:<20} {trace:>8.2f} {comp:>10.2f} {total:>8.2f} "
                f"{statistics.median(ratios):>8.2f}"
            )


if __name__ == "__main__":
    # Compile times are XLA's own, never hits in a cache a JAX_COMPILATION_CACHE_DIR names.
    jax.config.update("jax_enable_compilation_cache", False)
    main()
