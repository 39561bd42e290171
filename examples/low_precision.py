"""bfloat16 optimizer state and params: round-to-nearest against stochastic rounding.

A tanh MLP (64-64-10) is trained on the digits with full-batch
``momentum_jax.momentum`` at three settings of (momentum, learning rate) with
the same effective step α/(1-μ), over several seeds, storing its state five
ways:

* ``float32``: float32 params and velocity (8 bytes per param);
* ``bf16 velocity``: ``accumulator_dtype=jnp.bfloat16`` (6 bytes);
* ``bf16 params + velocity``: bfloat16 params, whose velocity is then
  bfloat16 too (4 bytes);
* ``SR velocity``: the bfloat16 velocity with ``stochastic_rounding=True``
  (6 bytes);
* ``SR params + velocity``: bfloat16 params and velocity, both rounded
  stochastically (``stochastic_rounding=True`` and
  ``momentum_jax.stochastic_round_params()`` last in the chain; 4 bytes).

The forward and backward passes compute in float32 (JAX promotes bfloat16
weights against the float32 inputs); only what is stored differs. With
round-to-nearest, a contribution below half a bfloat16 ulp is lost: the new
α·g against μ·v when μ is close to 1, and most updates θ + u against θ.

It prints the final training loss per column as min–max over seeds and
compares each column with ``float32``: a column is called worse or better only
when the mean ± std intervals over seeds do not overlap (``_common.verdict``),
else "within the float32 seed spread"; each verdict prints both means ± stds.
Each column compiles one program, for all its settings and seeds.

Outputs (``examples/out/low_precision/``, ``..._quick/`` with ``--quick``):
``low_precision.csv`` (one row per setting and column) and
``low_precision_loss.png`` (training loss over steps, mean over seeds).

Measured on 2 CPU cores shared with other jobs: 317 s wall and 217 s of CPU
time (user + sys) for the full run (3000 steps, 3 seeds); 58 s wall with
``--quick`` (200 steps, 2 seeds) while another job ran, most of it compiling
the five programs.

    python examples/low_precision.py            # digits from scikit-learn
    python examples/low_precision.py --quick
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax

import momentum_jax

SETTINGS = ((0.9, 0.01), (0.99, 0.001), (0.999, 0.0001))  # (momentum, learning rate)
COLUMNS = (
    "float32",
    "bf16 velocity",
    "bf16 params + velocity",
    "SR velocity",
    "SR params + velocity",
)
BYTES_PER_PARAM = dict(zip(COLUMNS, (8, 6, 4, 6, 4), strict=True))
# Okabe & Ito's colour-blind-safe palette; round-to-nearest dashed, float32 dotted.
STYLE = {
    "float32": ("#000000", ":"),
    "bf16 velocity": ("#E69F00", "--"),
    "bf16 params + velocity": ("#D55E00", "--"),
    "SR velocity": ("#56B4E9", "-"),
    "SR params + velocity": ("#0072B2", "-"),
}
FULL = {"steps": 3000, "seeds": 3}
QUICK = {"steps": 200, "seeds": 2}
CSV_HEADER = [
    "momentum",
    "learning_rate",
    "column",
    "bytes_per_param",
    "final_loss_mean",
    "final_loss_std",
    "final_loss_min",
    "final_loss_max",
    "verdict",
]


def optimizer(column: str, mu: Any, lr: Any, seed: Any) -> optax.GradientTransformation:
    """The transform of one column; ``seed`` also seeds its rounding."""
    if column == "float32" or column == "bf16 params + velocity":
        return momentum_jax.momentum(lr, mu)
    if column == "bf16 velocity":
        return momentum_jax.momentum(lr, mu, accumulator_dtype=jnp.bfloat16)
    rounded = momentum_jax.momentum(
        lr, mu, accumulator_dtype=jnp.bfloat16, stochastic_rounding=True, seed=seed
    )
    if column == "SR velocity":
        return rounded
    return optax.chain(rounded, momentum_jax.stochastic_round_params(seed=seed))


def param_dtype(column: str) -> Any:
    return jnp.bfloat16 if "params" in column else jnp.float32


def init_mlp(seed: jax.Array, sizes: Sequence[int]) -> list[tuple[jax.Array, jax.Array]]:
    keys = jax.random.split(jax.random.key(seed), len(sizes) - 1)
    return [
        (jax.random.normal(k, (a, b)) * jnp.sqrt(1.0 / a), jnp.zeros(b))
        for k, (a, b) in zip(keys, itertools.pairwise(sizes), strict=True)
    ]


def loss_fn(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    for w, b in params[:-1]:
        x = jnp.tanh(x @ w + b)
    w, b = params[-1]
    return optax.softmax_cross_entropy_with_integer_labels(x @ w + b, y).mean()


def train(column: str, seeds: Sequence[int], steps: int, every: int) -> np.ndarray:
    """Training loss (float32, on the stored params) every ``every`` steps.

    Returns an array of shape (settings, seeds, evaluations).
    """
    x, y, _, _ = map(jnp.asarray, _common.load_digits())
    dtype = param_dtype(column)

    def one(mu: jax.Array, lr: jax.Array, seed: jax.Array) -> jax.Array:
        params = jax.tree.map(lambda p: p.astype(dtype), init_mlp(seed, (64, 64, 64, 10)))
        tx = optimizer(column, mu, lr, seed)

        def step(carry: Any, _: Any) -> Any:
            params, state = carry
            # bfloat16 weights meet the float32 inputs, so the loss is float32.
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        (last, _), losses = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
        return jnp.append(losses[::every], loss_fn(last, x, y))

    # One program for all settings and seeds, compiled once: the seed is traced (also
    # as the rounding's seed), and so are momentum and learning rate, passed as Python
    # floats. jit keeps them weakly typed, so μ·v + α·g is computed in the buffer's
    # dtype exactly as with the numbers written into the transform; float32 arrays
    # would promote a bfloat16 buffer's arithmetic to float32.
    program = jax.jit(jax.vmap(one, (None, None, 0)))
    seeds_array = jnp.asarray(seeds)
    return np.stack([np.asarray(program(mu, lr, seeds_array), np.float64) for mu, lr in SETTINGS])


def mean_std(values: np.ndarray) -> str:
    """Final losses as mean ± std, with digits enough to tell two columns apart."""
    mean, std = _common.spread(values)
    return f"{mean:.5f} ± {std:.5f}"


verdict = _common.float32_verdict


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _common.sized_parser(__doc__, "low_precision", FULL, QUICK)
    parser.add_argument(
        "--eval-every",
        type=_common.positive,
        default=50,
        help="steps between training-loss evaluations (--steps must be a multiple of it)",
    )
    args = parser.parse_args(argv)
    steps = args.steps or (QUICK if args.quick else FULL)["steps"]
    if steps > args.eval_every and steps % args.eval_every:
        parser.error(f"--steps {steps} is not a multiple of --eval-every {args.eval_every}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    preset = QUICK if args.quick else FULL
    steps = args.steps or preset["steps"]
    seeds = list(range(args.seeds or preset["seeds"]))
    every = min(args.eval_every, steps)
    out = _common.out_dir("low_precision", args.quick, args.out)
    start = time.perf_counter()
    loss = np.stack([train(c, seeds, steps, every) for c in COLUMNS], 1)
    # loss: (setting, column, seed, eval)
    final = loss[..., -1]
    print(f"final training loss, min–max over {len(seeds)} seeds, after {steps} steps")
    print(f"{'μ, α':<14}" + "".join(f"{c:>25}" for c in COLUMNS))
    rows, verdicts, lines = [], {}, []
    for i, (mu, lr) in enumerate(SETTINGS):
        cells = [f"{final[i, j].min():.4f}–{final[i, j].max():.4f}" for j in range(len(COLUMNS))]
        print(f"{f'{mu:g}, {lr:g}':<14}" + "".join(f"{c:>25}" for c in cells))
        for j, column in enumerate(COLUMNS):
            said = "reference" if j == 0 else verdict(final[i, j], final[i, 0])
            verdicts[(mu, column)] = said
            mean, std = _common.spread(final[i, j])
            low, high = final[i, j].min(), final[i, j].max()
            rows.append([mu, lr, column, BYTES_PER_PARAM[column], mean, std, low, high, said])
            if j:
                numbers = f"{mean_std(final[i, j])} vs {mean_std(final[i, 0])}"
                lines.append(f"μ={mu:g}: {column} is {said} [{numbers}]")
    print("\nverdicts (final loss, mean ± std over seeds of the column vs float32 in brackets):")
    print("\n".join(lines))
    print(
        "memory per param (params + velocity): "
        + ", ".join(f"{c} {b} B" for c, b in BYTES_PER_PARAM.items())
    )
    _common.write_csv(out / "low_precision.csv", CSV_HEADER, rows)
    plot(loss, np.arange(0, steps + 1, every), out / "low_precision_loss.png")
    print(f"wrote {out} in {time.perf_counter() - start:.0f} s")
    return {"loss": loss, "verdicts": verdicts, "out": out, "steps": steps}


def plot(loss: np.ndarray, eval_steps: np.ndarray, path: Path) -> None:
    plt = _common.pyplot()
    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(13, 3.8), sharey=True)
    for ax, (mu, lr), per_column in zip(axes, SETTINGS, loss, strict=True):
        for column, runs in zip(COLUMNS, per_column, strict=True):
            color, style = STYLE[column]
            # float32 last and dotted on top: the stochastic-rounding curves lie on it.
            on_top = {"zorder": 3, "lw": 1.6} if column == "float32" else {"lw": 1.8}
            ax.plot(eval_steps, runs.mean(0), style, color=color, label=column, **on_top)
        ax.set(title=f"μ = {mu:g}, α = {lr:g}", xlabel="step", yscale="log")
    axes[0].set_ylabel("training loss (mean over seeds)")
    axes[-1].legend(fontsize=8)
    _common.save(fig, path)


if __name__ == "__main__":
    main()
