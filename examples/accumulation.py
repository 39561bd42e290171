"""Gradient accumulation without an accumulator: momentum_jax against optax.MultiSteps.

The digits MLP of ``momentum_sweep.py`` (ReLU 64-64) is trained on micro-batches
of 32 with K = 4 micro-batches per update (an effective batch of 128) by six
optimizers, all heavy-ball momentum ``momentum_jax.momentum(α, 0.9)``:

    MultiSteps float32   optax.MultiSteps(momentum(α, 0.9), 4)
    ours float32         momentum(α, 0.9, gradient_accumulation_steps=4)
    MultiSteps bf16 SR   optax.MultiSteps(momentum(α, 0.9, bfloat16 SR velocity), 4)
    ours bf16 SR         momentum(α, 0.9, bfloat16 SR velocity, gradient_accumulation_steps=4)
    MultiSteps int8 SR   optax.MultiSteps(momentum(α, 0.9, int8 SR velocity), 4)
    ours int8 SR         momentum(α, 0.9, int8 SR velocity, gradient_accumulation_steps=4)

("bfloat16 SR velocity": ``accumulator_dtype=jnp.bfloat16, stochastic_rounding=True``;
"int8 SR velocity": ``accumulator_dtype=jnp.int8, stochastic_rounding=True``, int8 codes
for the two 64×64 weights and float32 buffers for the arrays under 4096 elements.)
``optax.MultiSteps`` keeps a param-sized float32 accumulator of the mean gradient;
``gradient_accumulation_steps`` adds each micro-batch's share into the velocity
itself, so it needs none. A seed fixes the initial weights and the micro-batches,
shared by all; all of them train in one compiled program.

Printed: the final training loss of each optimizer, mean ± std (min–max) over
seeds, and a verdict against ``MultiSteps float32``, decided on those numbers
(``_common.verdict``: different only when the mean ± std intervals do not
overlap); the largest difference between ours and MultiSteps in one seed; and the
optimizer memory per param in bytes (params, buffers, accumulator), measured
from the nbytes of the actual params and states.

Outputs (``examples/out/accumulation/``, ``..._quick/`` with ``--quick``):
``accumulation.csv`` (one row per optimizer) and ``accumulation_loss.png``
(training loss over updates, mean over seeds).

Measured on 2 CPU cores shared with a test run: 41 s wall and 21 s of CPU time
(user + sys) for the full run (2000 micro-batches, 5 seeds); 23 s wall with
``--quick`` (400 micro-batches, 3 seeds), most of it compiling.

    python examples/accumulation.py
    python examples/accumulation.py --quick
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax

import momentum_jax

K = 4
MICRO_BATCH = 32
MOMENTUM = 0.9
HIDDEN = (64, 64)
FULL = {"steps": 2000, "seeds": 5}
QUICK = {"steps": 400, "seeds": 3}
REFERENCE = "MultiSteps float32"
CSV_HEADER = [
    "optimizer",
    "bytes_params",
    "bytes_buffers",
    "bytes_accumulator",
    "bytes_total",
    "final_loss_mean",
    "final_loss_std",
    "final_loss_min",
    "final_loss_max",
    "verdict",
]
# Okabe & Ito's colour-blind-safe palette: MultiSteps solid, ours dashed on top.
STYLE = {
    "MultiSteps float32": ("#000000", "-"),
    "ours float32": ("#E69F00", "--"),
    "MultiSteps bf16 SR": ("#0072B2", "-"),
    "ours bf16 SR": ("#56B4E9", "--"),
    "MultiSteps int8 SR": ("#009E73", "-"),
    "ours int8 SR": ("#CC79A7", "--"),
}


def optimizers() -> dict[str, Callable[[Any], optax.GradientTransformation]]:
    """Each optimizer built from its (traced) learning rate."""
    low = {"accumulator_dtype": jnp.bfloat16, "stochastic_rounding": True}
    int8 = {"accumulator_dtype": jnp.int8, "stochastic_rounding": True}
    return {
        "MultiSteps float32": lambda lr: optax.MultiSteps(
            momentum_jax.momentum(lr, MOMENTUM), K
        ).gradient_transformation(),
        "ours float32": lambda lr: momentum_jax.momentum(
            lr, MOMENTUM, gradient_accumulation_steps=K
        ),
        "MultiSteps bf16 SR": lambda lr: optax.MultiSteps(
            momentum_jax.momentum(lr, MOMENTUM, **low), K
        ).gradient_transformation(),
        "ours bf16 SR": lambda lr: momentum_jax.momentum(
            lr, MOMENTUM, **low, gradient_accumulation_steps=K
        ),
        "MultiSteps int8 SR": lambda lr: optax.MultiSteps(
            momentum_jax.momentum(lr, MOMENTUM, **int8), K
        ).gradient_transformation(),
        "ours int8 SR": lambda lr: momentum_jax.momentum(
            lr, MOMENTUM, **int8, gradient_accumulation_steps=K
        ),
    }


def nbytes(tree: Any) -> int:
    return sum(leaf.nbytes for leaf in jax.tree.leaves(tree))


def memory(lr: float) -> dict[str, tuple[float, float, float]]:
    """Bytes per param of (params, buffers and counters, accumulator), from the real states."""
    params = _common.init_mlp(jax.random.key(0), (64, *HIDDEN, 10))
    size = sum(p.size for p in jax.tree.leaves(params))
    table = {}
    for name, make in optimizers().items():
        state = make(lr).init(params)
        accumulator = nbytes(optax.tree_utils.tree_get(state, "acc_grads", default=()))
        buffers = nbytes(state) - accumulator
        table[name] = (nbytes(params) / size, buffers / size, accumulator / size)
    return table


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _common.sized_parser(__doc__, "accumulation", FULL, QUICK, "micro-batches")
    parser.add_argument("--learning-rate", type=float, default=0.05, help="learning rate α")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps % K:
        parser.error(f"--steps {args.steps} is not a multiple of {K}, the micro-batches per update")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    preset = QUICK if args.quick else FULL
    every = 10 * K  # evaluate every 10 updates
    steps = args.steps or preset["steps"]
    seeds = list(range(args.seeds or preset["seeds"]))
    out = _common.out_dir("accumulation", args.quick, args.out)
    start = time.perf_counter()
    names = list(optimizers())
    eval_steps, loss, _ = _common.train_mlps(
        _common.load_digits(),
        optimizers(),
        [args.learning_rate],
        seeds,
        steps=steps,
        eval_every=every,
        batch_size=MICRO_BATCH,
        hidden=HIDDEN,
    )
    loss = loss[:, 0]  # (optimizer, seed, evaluation)
    final = loss[..., -1]
    reference = final[names.index(REFERENCE)]
    print(
        f"digits MLP, {steps} micro-batches of {MICRO_BATCH} = {steps // K} updates of "
        f"{K * MICRO_BATCH}, α = {args.learning_rate:g}, μ = {MOMENTUM:g}, {len(seeds)} seeds"
    )
    print("final training loss, mean ± std (min–max) over seeds; verdict against MultiSteps:")
    verdicts, rows = {}, []
    table = memory(args.learning_rate)
    for name, values in zip(names, final, strict=True):
        said = "reference" if name == REFERENCE else verdict(values, reference)
        verdicts[name] = said
        mean, std = _common.spread(values)
        print(
            f"  {name:<20} {mean:.4f} ± {std:.4f} ({values.min():.4f}–{values.max():.4f})  {said}"
        )
        rows.append([name, *table[name], sum(table[name]), mean, std, *_range(values), said])
    for kind in ("float32", "bf16 SR", "int8 SR"):
        ours, theirs = (final[names.index(f"{who} {kind}")] for who in ("ours", "MultiSteps"))
        gap = np.abs(ours - theirs).max()
        print(f"  ours vs MultiSteps, {kind}: largest difference in one seed {gap:.1e}")
    print("\noptimizer memory per param, bytes (params + buffers + accumulator = total):")
    for name, (params, buffers, accumulator) in table.items():
        total = params + buffers + accumulator
        print(f"  {name:<20} {params:.2f} + {buffers:.2f} + {accumulator:.2f} = {total:.2f}")
    _common.write_csv(out / "accumulation.csv", CSV_HEADER, rows)
    plot(loss, eval_steps // K, names, out / "accumulation_loss.png")
    print(f"wrote {out} in {time.perf_counter() - start:.0f} s")
    return {"loss": loss, "final": final, "memory": table, "verdicts": verdicts, "out": out}


def _range(values: np.ndarray) -> tuple[float, float]:
    return float(values.min()), float(values.max())


def verdict(values: np.ndarray, reference: np.ndarray) -> str:
    """How an optimizer's final losses compare with MultiSteps float32's."""
    said = _common.verdict(values, reference, "lower than MultiSteps", "higher than MultiSteps")
    return "same within the seed spread" if said == "no clear difference" else said


def plot(loss: np.ndarray, updates: np.ndarray, names: list[str], path: Path) -> None:
    plt = _common.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, runs in zip(names, loss, strict=True):
        color, style = STYLE[name]
        ax.plot(updates, runs.mean(0), style, color=color, label=name, lw=1.8)
    ax.set(xlabel=f"update ({K} micro-batches each)", ylabel="training loss (mean over seeds)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    _common.save(fig, path)


if __name__ == "__main__":
    main()
