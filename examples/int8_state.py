"""Eight-bit optimizer state: int8 buffers against float32 and bfloat16, for momentum and Lion.

An MLP (64-256-256-10: the two hidden kernels large enough for an int8 buffer,
96% of its params) is trained on the digits with minibatches of 256, its buffer
stored five ways:

* ``float32``: float32 params and buffer (8 bytes per param);
* ``bf16, nearest`` and ``bf16, stochastic``: ``accumulator_dtype=jnp.bfloat16``,
  round-to-nearest or ``stochastic_rounding=True`` (6 bytes);
* ``int8, nearest`` and ``int8, stochastic``: ``accumulator_dtype=jnp.int8``,
  int8 codes and a float32 scale per block of 256 (about 5.1 bytes; the
  256x10 kernel's and the biases' buffers stay float32).

``momentum_jax.momentum`` runs at μ = 0.9, 0.99 and 0.999 with the same
effective step α/(1-μ) = 0.1, and ``momentum_jax.lion`` at α = 1e-4 (its
defaults otherwise), over several seeds. Quantizing the buffer to nearest drops
every new contribution smaller than half a code of its block (1/254 of the
block's largest value, against 1/512 of the value itself for bfloat16), so a
buffer that changes by (1-μ) of its size per step loses more as μ nears 1;
stochastic quantization keeps it unbiased.

It prints the final training loss (mean ± std over seeds) and test accuracy
per column, and calls a column worse or better than ``float32`` only when the
mean ± std intervals do not overlap (``_common.verdict``), printing both.

Outputs (``examples/out/int8_state/``, ``..._quick/`` with ``--quick``):
``int8_state.csv`` (one row per setting and column) and ``int8_state_loss.png``.

    python examples/int8_state.py            # 1000 steps, 3 seeds: 77 s on 2 idle cores
    python examples/int8_state.py --quick    # 300 steps, 2 seeds
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common
import jax
import jax.numpy as jnp
import numpy as np

import momentum_jax

COLUMNS = ("float32", "bf16, nearest", "bf16, stochastic", "int8, nearest", "int8, stochastic")
MOMENTA = (0.9, 0.99, 0.999)
STEP = 0.1  # α / (1 - μ), the same at every μ
LION_LR = 1e-4
HIDDEN = (256, 256)
BATCH = 256
FULL = {"steps": 1000, "seeds": 3}
QUICK = {"steps": 300, "seeds": 2}
# Okabe & Ito's colour-blind-safe palette; round-to-nearest dashed, float32 dotted on top.
STYLE = dict(
    zip(
        COLUMNS,
        [
            ("#000000", ":"),
            ("#E69F00", "--"),
            ("#56B4E9", "-"),
            ("#D55E00", "--"),
            ("#0072B2", "-"),
        ],
        strict=True,
    )
)
CSV_HEADER = [
    "optimizer",
    "hyperparameter",
    "column",
    "bytes_per_param",
    "final_loss_mean",
    "final_loss_std",
    "test_accuracy_mean",
    "verdict",
]


def state_options(column: str) -> dict[str, Any]:
    if column == "float32":
        return {}
    dtype = jnp.bfloat16 if column.startswith("bf16") else jnp.int8
    return {"accumulator_dtype": dtype, "stochastic_rounding": column.endswith("stochastic")}


def momentum(column: str) -> Any:
    return lambda mu: momentum_jax.momentum(STEP * (1 - mu), mu, **state_options(column))


def lion(column: str) -> Any:
    return lambda lr: momentum_jax.lion(lr, **state_options(column))


def bytes_per_param(column: str) -> float:
    """Params and buffer of this MLP, measured from the arrays a state holds."""
    params = _common.init_mlp(jax.random.key(0), (64, *HIDDEN, 10))
    state = momentum_jax.momentum(0.1, **state_options(column)).init(params)
    stored = jax.tree.leaves((params, state.velocity))
    return sum(x.nbytes for x in stored) / sum(p.size for p in jax.tree.leaves(params))


verdict = _common.float32_verdict


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return _common.sized_parser(__doc__, "int8_state", FULL, QUICK).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    preset = QUICK if args.quick else FULL
    steps, seeds = args.steps or preset["steps"], list(range(args.seeds or preset["seeds"]))
    every = max(1, steps // 20)
    out = _common.out_dir("int8_state", args.quick, args.out)
    start = time.perf_counter()
    data = _common.load_digits()
    runs = {}  # optimizer -> (hyperparameters, loss (column, hyper, seed, eval), accuracy)
    for name, make, hypers in (("momentum", momentum, MOMENTA), ("lion", lion, (LION_LR,))):
        optimizers = {column: make(column) for column in COLUMNS}
        eval_steps, loss, accuracy = _common.train_mlps(
            data,
            optimizers,
            hypers,
            seeds,
            steps=steps,
            eval_every=every,
            batch_size=BATCH,
            hidden=HIDDEN,
        )
        runs[name] = (hypers, loss, accuracy)
    sizes = {column: bytes_per_param(column) for column in COLUMNS}

    print(f"final training loss, mean ± std over {len(seeds)} seeds, after {steps} steps;")
    print("test accuracy (mean) in brackets; bytes per param count the params and the buffer")
    print(f"{'':<18}" + "".join(f"{c:>30}" for c in COLUMNS))
    print(f"{'bytes/param':<18}" + "".join(f"{sizes[c]:>30.2f}" for c in COLUMNS))
    rows, verdicts, lines = [], {}, []
    for name, (hypers, loss, accuracy) in runs.items():
        for j, h in enumerate(hypers):
            label = f"{name} {'μ' if name == 'momentum' else 'α'}={h:g}"
            final = loss[:, j, :, -1]
            cells = [
                f"{_common.mean_std(final[i], '.2e')} ({100 * accuracy[i, j].mean():.1f}%)"
                for i in range(len(COLUMNS))
            ]
            print(f"{label:<18}" + "".join(f"{c:>30}" for c in cells))
            for i, column in enumerate(COLUMNS):
                said = "reference" if i == 0 else verdict(final[i], final[0])
                verdicts[(name, h, column)] = said
                mean, std = _common.spread(final[i])
                rows.append(
                    [name, h, column, sizes[column], mean, std, accuracy[i, j].mean(), said]
                )
                if i:
                    numbers = [_common.mean_std(final[k], ".2e") for k in (i, 0)]
                    lines.append(f"{label}: {column} is {said} [{' vs '.join(numbers)}]")
    print("\nverdicts (final training loss, the column's vs float32's):")
    print("\n".join(lines))
    _common.write_csv(out / "int8_state.csv", CSV_HEADER, rows)
    plot(runs, eval_steps, out / "int8_state_loss.png")
    print(f"wrote {out} in {time.perf_counter() - start:.0f} s")
    return {"runs": runs, "verdicts": verdicts, "bytes_per_param": sizes, "out": out}


def plot(runs: dict[str, Any], eval_steps: np.ndarray, path: Path) -> None:
    plt = _common.pyplot()
    panels = [(name, j, h) for name, (hypers, _, _) in runs.items() for j, h in enumerate(hypers)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), sharey=True)
    for ax, (name, j, h) in zip(axes, panels, strict=True):
        loss = runs[name][1]
        for i, column in enumerate(COLUMNS):
            color, style = STYLE[column]
            on_top = {"zorder": 3, "lw": 1.6} if column == "float32" else {"lw": 1.8}
            ax.plot(eval_steps, loss[i, j].mean(0), style, color=color, label=column, **on_top)
        ax.set(title=f"{name}, {'μ' if name == 'momentum' else 'α'} = {h:g}", xlabel="step")
        ax.set(yscale="log")
    axes[0].set_ylabel("training loss (mean over seeds)")
    axes[-1].legend(fontsize=8)
    _common.save(fig, path)


if __name__ == "__main__":
    main()
