"""Step and compile time of this checkout against an earlier release, interleaved.

The earlier release's package is taken from git (``--rev``, default the 0.1.0
commit), renamed to ``momentum_jax_old`` in a temporary folder and imported
beside the current package, so both run in one process, repetition by
repetition, with ``optax.sgd`` as the common yardstick. 0.1.0 imports
``jax.experimental.shard_alike``, so run this with jax 0.10 or older.

    python benchmarks/against_release.py                  # 10M params in 1 and 1000 arrays
    python benchmarks/against_release.py --arrays 1 --reps 15
    python benchmarks/against_release.py --rev 87c1380 --arrays 1 100 1000 --resnet50

``--resnet50`` adds the shapes of ResNet-50's 161 arrays. Each row gives the median
over repetitions of the per-repetition ratio to ``optax.sgd`` and, for the current
code, to the same transform of the old release.
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import momentum_jax

ROOT = Path(__file__).resolve().parents[1]
RELEASE_0_1_0 = "26c16e8"


def import_release(rev: str) -> Any:
    """The package as it was at ``rev``, importable as ``momentum_jax_old``."""
    archive = subprocess.run(
        ["git", "archive", rev, "momentum_jax"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    folder = Path(tempfile.mkdtemp())
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    package = folder / "momentum_jax"
    for path in package.rglob("*.py"):
        path.write_text(re.sub(r"\bmomentum_jax\b", "momentum_jax_old", path.read_text()))
    package.rename(folder / "momentum_jax_old")
    sys.path.insert(0, str(folder))
    return importlib.import_module("momentum_jax_old")


def contender(
    tx: optax.GradientTransformation, shapes: list[tuple[int, ...]]
) -> tuple[Callable[[int], None], float]:
    rng = np.random.default_rng(0)
    params = [jnp.asarray(rng.standard_normal(s, dtype=np.float32)) for s in shapes]
    grads = [jnp.asarray(rng.standard_normal(s, dtype=np.float32) * 1e-3) for s in shapes]

    def step(params: Any, state: Any, grads: Any) -> Any:
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
    compile_seconds = time.perf_counter() - start
    held = [params, state]

    def run(n: int) -> None:
        for _ in range(n):
            held[0], held[1] = compiled(held[0], held[1], grads)
        jax.block_until_ready(held)

    run(2)
    return run, compile_seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default=RELEASE_0_1_0, help="git revision of the old release")
    parser.add_argument("--arrays", type=int, nargs="+", default=[1, 1000])
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--steps", type=int, default=20, help="steps per timing")
    parser.add_argument("--resnet50", action="store_true", help="also ResNet-50's shapes")
    args = parser.parse_args(argv)
    old = import_release(args.rev)
    print(f"jax {jax.__version__}, optax {optax.__version__}; current {momentum_jax.__version__}")
    sets = {
        f"{args.params / 1e6:g}M params in {arrays} array(s)": [(args.params // arrays,)] * arrays
        for arrays in args.arrays
    }
    if args.resnet50:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        bench_step = importlib.import_module("bench_step")
        sets["ResNet-50 shapes (161 arrays)"] = bench_step.resnet50_shapes()
    for title, sizes in sets.items():
        factories = {
            "current momentum": momentum_jax.momentum(1e-3, 0.9),
            f"{args.rev} momentum": old.momentum(1e-3, 0.9),
            "current nesterov": momentum_jax.nesterov(1e-3, 0.9),
            f"{args.rev} nesterov": old.nesterov(1e-3, 0.9),
            "optax.sgd": optax.sgd(1e-3, 0.9),
        }
        built = {name: contender(tx, sizes) for name, tx in factories.items()}
        times: dict[str, list[float]] = {name: [] for name in built}
        for rep in range(args.reps):
            names = list(built)
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                start = time.perf_counter()
                built[name][0](args.steps)
                times[name].append((time.perf_counter() - start) / args.steps)
        print(f"\n{title}, {args.reps} repetitions")
        header = f"{'median ms':>10s} {'/ optax.sgd':>12s} {'/ old':>7s} {'compile s':>10s}"
        print(f"{'contender':22s} {header}")
        for name, values in times.items():
            ratio = statistics.median(
                t / b for t, b in zip(values, times["optax.sgd"], strict=True)
            )
            old_name = name.replace("current", args.rev)
            to_old = ""
            if name.startswith("current"):
                pairs = zip(values, times[old_name], strict=True)
                to_old = f"{statistics.median(t / b for t, b in pairs):7.3f}"
            print(
                f"{name:22s} {1e3 * statistics.median(values):10.3f} {ratio:12.3f} {to_old:>7s} "
                f"{built[name][1]:10.2f}"
            )


if __name__ == "__main__":
    # Compile times are XLA's own, never hits in a cache a JAX_COMPILATION_CACHE_DIR names.
    jax.config.update("jax_enable_compilation_cache", False)
    main()
