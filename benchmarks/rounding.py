"""Cost of stochastic rounding and of int8 state: one momentum step, interleaved.

Contenders (``momentum_jax.momentum``, momentum 0.9; each a jitted, donated
step of update and ``optax.apply_updates``):

* ``float32``: float32 params and velocity;
* ``bf16 velocity, nearest``: ``accumulator_dtype=jnp.bfloat16``;
* ``bf16 velocity, stochastic``: the same with ``stochastic_rounding=True``;
* ``bf16 params, nearest``: bfloat16 params (so a bfloat16 velocity);
* ``bf16 params, stochastic``: bfloat16 params, ``stochastic_rounding=True``
  and ``momentum_jax.stochastic_round_params()`` last in the chain;
* ``int8 velocity, nearest`` and ``int8 velocity, stochastic``:
  ``accumulator_dtype=jnp.int8``, without and with ``stochastic_rounding=True``;
* ``int8 velocity, bf16 params``: bfloat16 params, an int8 velocity, both
  rounded stochastically.

Each parameter set (10M params in 1 array and in 1000 arrays by default) runs
every contender in turn, repetition after repetition, so a shared machine's
drift hits all alike. Reported: the median time per step, the median of the
per-repetition ratios of each stochastic contender to its round-to-nearest
twin (the project's target: at most 1.25 on CPU) and of each contender to
float32 (the target for int8: at most 2), and the bytes each keeps per param
(params and velocity).

    python benchmarks/rounding.py                    # ~2 min on 2 CPU cores
    python benchmarks/rounding.py --quick            # a smoke run
    python benchmarks/rounding.py --json benchmarks/results/rounding_cpu_2core.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_step

import momentum_jax

LR, MU = 1e-3, 0.9
TWINS = {
    "bf16 velocity, stochastic": "bf16 velocity, nearest",
    "bf16 params, stochastic": "bf16 params, nearest",
    "int8 velocity, stochastic": "int8 velocity, nearest",
}


def contenders() -> dict[str, tuple[Any, Callable[[], optax.GradientTransformation]]]:
    """name -> (param dtype, transform factory)."""
    bf16, f32 = jnp.bfloat16, jnp.float32

    def velocity(dtype: Any, stochastic: bool, round_params: bool = False) -> Callable[[], Any]:
        def make() -> optax.GradientTransformation:
            tx = momentum_jax.momentum(
                LR, MU, accumulator_dtype=dtype, stochastic_rounding=stochastic
            )
            return optax.chain(tx, momentum_jax.stochastic_round_params()) if round_params else tx

        return make

    found = {"float32": (f32, velocity(None, False))}
    for name, dtype in (("bf16", bf16), ("int8", jnp.int8)):
        for rounding in ("nearest", "stochastic"):
            found[f"{name} velocity, {rounding}"] = (f32, velocity(dtype, rounding == "stochastic"))
        if name == "bf16":  # bfloat16 params, and so a bfloat16 velocity
            found["bf16 params, nearest"] = (bf16, velocity(None, False))
            found["bf16 params, stochastic"] = (bf16, velocity(None, True, round_params=True))
    found["int8 velocity, bf16 params"] = (bf16, velocity(jnp.int8, True, round_params=True))
    return found


def run_set(total: int, arrays: int, reps: int, seconds: float) -> dict[str, Any]:
    shapes = [(n,) for n in bench_step.split_sizes(total, arrays)]
    built = [
        _typed_contender(name, dtype, make(), shapes)
        for name, (dtype, make) in contenders().items()
    ]
    bench_step.measure(built, reps, seconds)
    times = {c.name: c.times for c in built}
    rows = []
    for c in built:
        row = {
            "contender": c.name,
            "median_ms": 1e3 * statistics.median(c.times),
            "bytes_per_param": (c.state_bytes or 0) / total,
        }
        if c.name in TWINS:
            ratios = [a / b for a, b in zip(c.times, times[TWINS[c.name]], strict=True)]
            row["ratio_to_nearest"] = statistics.median(ratios)
        ratios = [a / b for a, b in zip(c.times, times["float32"], strict=True)]
        row["ratio_to_float32"] = statistics.median(ratios)
        rows.append(row)
    return {"params": total, "arrays": arrays, "reps": reps, "rows": rows}


def _typed_contender(
    name: str, dtype: Any, tx: optax.GradientTransformation, shapes: list[tuple[int, ...]]
) -> bench_step.Contender:
    """A donated, jitted step of ``tx`` with params and gradients in ``dtype``."""
    keys = jax.random.split(jax.random.key(0), 2 * len(shapes))
    params = [
        jax.random.normal(k, s, jnp.float32).astype(dtype)
        for k, s in zip(keys, shapes, strict=False)
    ]
    grads = [
        (1e-3 * jax.random.normal(k, s, jnp.float32)).astype(dtype)
        for k, s in zip(keys[len(shapes) :], shapes, strict=True)
    ]
    state = tx.init(params)

    def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
    holder = {"params": params, "state": state}

    def run(n: int) -> None:
        p, s = holder["params"], holder["state"]
        for _ in range(n):
            p, s = compiled(p, s, grads)
        jax.block_until_ready((p, s))
        holder["params"], holder["state"] = p, s

    run(1)
    kept = jax.tree.leaves((holder["params"], holder["state"]))
    return bench_step.Contender(
        name, run, state_bytes=sum(int(x.size) * x.dtype.itemsize for x in kept)
    )


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1M params, 3 repetitions")
    parser.add_argument("--reps", type=int, default=15, help="interleaved repetitions")
    parser.add_argument(
        "--arrays", type=int, nargs="+", default=[1, 1000], help="arrays the params split into"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    total, reps, seconds = (1_000_000, 3, 0.05) if args.quick else (10_000_000, args.reps, 0.3)
    results = []
    for arrays in args.arrays:
        result = run_set(total, arrays, reps, seconds)
        results.append(result)
        print(f"\n{total / 1e6:g}M params in {arrays} arrays, {reps} interleaved repetitions")
        print(
            f"{'contender':<28}{'ms/step':>10}{'vs nearest':>12}{'vs float32':>12}"
            f"{'bytes/param':>13}"
        )
        for row in result["rows"]:
            ratio = f"{row['ratio_to_nearest']:.2f}" if "ratio_to_nearest" in row else ""
            print(
                f"{row['contender']:<28}{row['median_ms']:>10.2f}{ratio:>12}"
                f"{row['ratio_to_float32']:>12.2f}{row['bytes_per_param']:>13.2f}"
            )
    if args.json is not None:
        report = {"machine": _machine(), "results": results}
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return results


def _machine() -> dict[str, Any]:
    import os
    import platform

    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "momentum_jax": momentum_jax.__version__,
    }


if __name__ == "__main__":
    main()
