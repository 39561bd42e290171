"""Probes of what limits a momentum step under XLA:CPU (see BENCHMARKS.md).

1. ``forms``: the same two-pass step (velocity kernel, then param kernel)
   written in different algebraic forms, interleaved. It shows how much the
   param kernel's form costs: ``p - v`` (what ``apply_updates`` makes of the
   update ``-v`` of learning-rate-inside momentum) against ``p - c*v`` (what it
   makes of optax's ``-lr * t``).
2. ``layout``: one flat velocity buffer for all arrays (a concatenate of the
   gradients, one fused velocity update, a slice per param) against the
   pytree layout, at many arrays.
3. ``trace``: what tracing one scalar-times-array multiply costs, written with
   ``jax.numpy`` (a jitted function per operator) and with ``jax.lax``.

    python benchmarks/xla_cpu_probes.py forms
    python benchmarks/xla_cpu_probes.py layout --arrays 1000
    python benchmarks/xla_cpu_probes.py trace --arrays 2000
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import momentum_jax

MU, LR = 0.9, 1e-3


def _interleave(
    steps: dict[str, Callable[..., Any]], state: dict[str, Any], grads: Any, reps: int, n: int
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in steps}
    names = list(steps)
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            a, b = state[name]
            start = time.perf_counter()
            for _ in range(n):
                a, b = steps[name](a, b, grads)
            jax.block_until_ready((a, b))
            times[name].append((time.perf_counter() - start) / n)
            state[name] = (a, b)
    return times


def forms(size: int, reps: int) -> None:
    variants: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
        "v = mu*v + lr*g ; p = p - v  (the plain form)": (
            lambda v, g: MU * v + LR * g,
            lambda p, v: p + (-v),
        ),
        "v = g + mu*v    ; p = p - lr*v  (optax.sgd)": (
            lambda v, g: g + MU * v,
            lambda p, v: p + (-LR) * v,
        ),
        "v = mu*v + lr*g ; p = p - 1.0001*v  (probe)": (
            lambda v, g: MU * v + LR * g,
            lambda p, v: p - 1.0001 * v,
        ),
        "v = g + mu*v    ; p = p - v  (probe)": (
            lambda v, g: g + MU * v,
            lambda p, v: p - v,
        ),
    }
    # The plain form again, with the update -v written as v * -1 (exact), as
    # momentum_jax.momentum does: XLA:CPU keeps the multiply.
    variants["v = mu*v + lr*g ; p = p + v*(-1)  (momentum_jax.momentum)"] = (
        lambda v, g: MU * v + LR * g,
        lambda p, v: p + v * -1.0,
    )
    rng = np.random.default_rng(0)
    grads = jnp.asarray(rng.standard_normal(size, dtype=np.float32) * 1e-3)
    steps, state = {}, {}
    for name, (velocity, param) in variants.items():

        def step(p: Any, v: Any, g: Any, velocity: Any = velocity, param: Any = param) -> Any:
            v = velocity(v, g)
            return param(p, v), v

        steps[name] = jax.jit(step, donate_argnums=(0, 1))
        state[name] = (jnp.asarray(rng.standard_normal(size, dtype=np.float32)), jnp.zeros(size))
        state[name] = steps[name](*state[name], grads)
    times = _interleave(steps, state, grads, reps, 40)
    print(f"{size / 1e6:g}M float32 params, one array, {reps} interleaved repetitions")
    for name, ts in times.items():
        q = np.percentile(ts, [25, 75])
        median = 1e3 * statistics.median(ts)
        print(f"  {name:62s} {median:7.3f} ms  [{1e3 * q[0]:.3f}-{1e3 * q[1]:.3f}]")


def layout(total: int, arrays: int, reps: int) -> None:
    n = total // arrays
    rng = np.random.default_rng(0)
    grads = [jnp.asarray(rng.standard_normal(n, dtype=np.float32) * 1e-3) for _ in range(arrays)]
    tx = momentum_jax.momentum(LR, MU)

    def pytree_step(p: Any, s: Any, g: Any) -> Any:
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    offsets = np.cumsum([0] + [n] * arrays)

    def flat_step(p: Any, v: Any, g: Any) -> Any:
        v = MU * v + LR * jnp.concatenate(g)
        return [
            pi - jax.lax.slice(v, (int(o),), (int(o) + n,))
            for pi, o in zip(p, offsets, strict=False)
        ], v

    steps, state = {}, {}
    for name, fn, make_state in [
        ("pytree velocity (momentum_jax.momentum)", pytree_step, tx.init),
        ("one flat velocity buffer", flat_step, lambda p: jnp.zeros(total)),
    ]:
        params = [jnp.array(x) for x in grads]
        s = make_state(params)
        start = time.perf_counter()
        steps[name] = jax.jit(fn, donate_argnums=(0, 1)).lower(params, s, grads).compile()
        print(f"  compile {name}: {time.perf_counter() - start:.2f} s")
        state[name] = steps[name](params, s, grads)
    times = _interleave(steps, state, grads, reps, 10)
    print(f"{total / 1e6:g}M float32 params in {arrays} arrays, {reps} interleaved repetitions")
    for name, ts in times.items():
        print(f"  {name:45s} {1e3 * statistics.median(ts):8.3f} ms")


def trace(arrays: int, reps: int) -> None:
    """Microseconds per traced multiply, best of ``reps`` traces of ``arrays`` of them."""
    xs = [jnp.ones((64, 64), jnp.float32)] * arrays
    mu = jnp.asarray(0.9, jnp.float32)
    variants: dict[str, Callable[[Any], Any]] = {
        "jnp: 0.9 * x": lambda x: 0.9 * x,
        "jnp: mu * x (a float32 scalar array)": lambda x: mu * x,
        "lax: lax.mul(x, mu)": lambda x: jax.lax.mul(x, mu),
    }
    print(f"tracing {arrays} multiplies, best of {reps}")
    for name, op in variants.items():
        best = math.inf
        for _ in range(reps):
            start = time.perf_counter()
            jax.make_jaxpr(lambda xs, op=op: [op(x) for x in xs])(xs)
            best = min(best, time.perf_counter() - start)
        print(f"  {name:40s} {1e6 * best / arrays:6.1f} us per multiply")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("probe", choices=["forms", "layout", "trace"])
    parser.add_argument("--params", type=int, default=10_000_000, help="total parameters")
    parser.add_argument("--arrays", type=int, default=1000, help="arrays (layout probe)")
    parser.add_argument("--reps", type=int, default=15, help="interleaved repetitions")
    args = parser.parse_args(argv)
    if args.probe == "forms":
        forms(args.params, args.reps)
    elif args.probe == "trace":
        trace(args.arrays, min(args.reps, 5))
    else:
        layout(args.params, args.arrays, args.reps)


if __name__ == "__main__":
    main()
