"""Sweep the momentum coefficient while training a small MLP on handwritten digits.

A ReLU MLP (64-64) is trained with minibatch SGD plus heavy-ball momentum
(``momentum_jax.momentum``) and Nesterov momentum (``momentum_jax.nesterov``)
for momentum 0 (plain SGD), 0.5, ..., 0.99, all at one learning rate and over
several seeds. All models train in one compiled program: ``jax.vmap`` over
momenta and seeds (the momentum is a traced scalar), ``lax.scan`` over steps.
A seed fixes the initial weights and the minibatches, shared by every setting.

Per (momentum, method) it prints the steps to reach a target training loss
("never" where a seed did not reach it), the final training loss and the test
accuracy (mean ± std over seeds) and how many runs diverged: a loss that
became NaN/inf or rose above 10x its initial value, or a final loss above half
the initial one (``_common.diverged``); those runs are left out of the means.
A difference is called faster or slower only when the mean ± std intervals
over seeds do not overlap, and each verdict prints the numbers it is decided
on; a setting in which a seed did not reach the target (diverged runs
included) is said to, with the number of such seeds, rather than to be slower.

Outputs (``examples/out/momentum_sweep/``, ``..._quick/`` with ``--quick``):
``momentum_sweep.csv`` (the table), ``momentum_sweep_runs.csv`` (one row per
run), ``momentum_sweep_loss.png`` and ``momentum_sweep_summary.png``.

Measured on 2 CPU cores shared with other jobs: 38–48 s wall and 29–32 s of CPU
time (user + sys) for the full run; 26 s wall and 13 s CPU with ``--quick``.

    python examples/momentum_sweep.py            # digits from scikit-learn
    python examples/momentum_sweep.py --quick
    python examples/momentum_sweep.py --data mnist --data-dir ~/data/mnist
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common
import numpy as np

import momentum_jax

MOMENTA = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
METHODS = ("heavy_ball", "nesterov")
LABELS = {"heavy_ball": "heavy ball", "nesterov": "Nesterov"}
# Okabe & Ito's colour-blind-safe palette, ordered so that neighbouring momenta
# get unlike hues (0.9 blue, 0.95 vermillion).
PALETTE = ("#000000", "#E69F00", "#F0E442", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7")
METHOD_STYLE = {"heavy_ball": ("#0072B2", "o"), "nesterov": ("#D55E00", "s")}
FULL = {"steps": 2000, "seeds": 5}
QUICK = {"steps": 300, "seeds": 2}
CSV_HEADER = [
    "momentum",
    "method",
    "steps_mean",
    "steps_std",
    "reached",
    "final_loss_mean",
    "final_loss_std",
    "test_accuracy_mean",
    "test_accuracy_std",
    "diverged",
    "seeds",
]
RUNS_HEADER = ["momentum", "method", "seed", "steps_to_target", "final_loss", "test_accuracy"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _common.sized_parser(__doc__, "momentum_sweep", FULL, QUICK)
    parser.add_argument(
        "--data",
        choices=("digits", "mnist"),
        default="digits",
        help="scikit-learn's bundled 8x8 digits, or MNIST from --data-dir",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="for --data mnist: the IDX files (.gz too) or mnist.npz",
    )
    parser.add_argument(
        "--momenta",
        type=float,
        nargs="+",
        default=list(MOMENTA),
        metavar="MU",
        help="momenta to sweep",
    )
    parser.add_argument("--learning-rate", type=float, default=0.1, help="the same for every run")
    parser.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=[64, 64],
        metavar="WIDTH",
        help="hidden layer widths",
    )
    parser.add_argument(
        "--target-loss",
        type=float,
        default=0.05,
        help="training loss to reach; the steps are counted to it",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    size = QUICK if args.quick else FULL
    steps, num_seeds = args.steps or size["steps"], args.seeds or size["seeds"]
    out = _common.out_dir("momentum_sweep", args.quick, args.out)
    data = _common.load_data(args.data, args.data_dir)
    lr, momenta = args.learning_rate, np.asarray(args.momenta)
    optimizers = {
        "heavy_ball": lambda mu: momentum_jax.momentum(lr, mu),
        "nesterov": lambda mu: momentum_jax.nesterov(lr, mu),
    }
    print(f"{2 * len(momenta) * num_seeds} models, {steps} steps, learning rate {lr:g}")
    start = time.perf_counter()
    eval_steps, loss, accuracy = _common.train_mlps(
        data, optimizers, momenta, range(num_seeds), steps=steps, hidden=args.hidden
    )
    print(f"trained in {time.perf_counter() - start:.1f} s (compilation included)\n")

    reasons = _common.divergence(loss)  # (method, momentum, seed): "" or the rule broken
    diverged = reasons != ""
    to_target = _common.steps_to(loss, eval_steps, args.target_loss)
    to_target[diverged] = np.nan
    final = np.where(diverged, np.nan, loss[..., -1])
    acc = np.where(diverged, np.nan, accuracy)

    rows, runs = [], []
    print(f"steps to training loss {args.target_loss:g}, mean ± std over {num_seeds} seeds")
    print(
        f"{'momentum':>8}  {'method':<10}  {'steps':>13}  {'final loss':>17}  "
        f"{'test acc %':>11}  diverged"
    )
    for j, mu in enumerate(momenta):
        for i, method in enumerate(METHODS):
            s, f, a = to_target[i, j], final[i, j], acc[i, j]
            ok = ~diverged[i, j]
            reached = int(np.isfinite(s).sum())
            stats = [
                v for x in (s, f[ok], a[ok]) for v in (_common.spread(x) if x.size else ("", ""))
            ]
            rows.append([mu, method, *stats[:2], reached, *stats[2:], (~ok).sum(), num_seeds])
            runs += [
                [mu, method, k, *(x[i, j, k] for x in (to_target, loss[..., -1], accuracy))]
                for k in range(num_seeds)
            ]
            print(
                f"{mu:8g}  {LABELS[method]:<10}  {_common.mean_std(s):>13}  "
                f"{_common.mean_std(f[ok], '.1e'):>17}  "
                f"{_common.mean_std(100 * a[ok], '.1f'):>11}  "
                f"{(~ok).sum()}/{num_seeds}"
            )
    _common.write_csv(out / "momentum_sweep.csv", CSV_HEADER, rows)
    _common.write_csv(out / "momentum_sweep_runs.csv", RUNS_HEADER, runs)

    print(
        "\nverdicts (steps to target, mean ± std of each side in brackets; a win needs "
        "non-overlapping mean ± std):"
    )
    verdicts = verdict_lines(momenta, to_target, reasons)
    for line in verdicts:
        print("  " + line)
    plot_loss(eval_steps, loss, momenta, reasons, args.target_loss, out / "momentum_sweep_loss.png")
    plot_summary(momenta, to_target, acc, reasons, args.target_loss, out)
    print(f"\nwrote {out}/momentum_sweep*.csv and momentum_sweep_*.png")
    return {
        "eval_steps": eval_steps,
        "loss": loss,
        "steps": to_target,
        "diverged": diverged,
        "accuracy": accuracy,
        "verdicts": verdicts,
        "out": out,
    }


def compare(steps_a: np.ndarray, steps_b: np.ndarray, momenta: np.ndarray) -> str:
    """Where a needs fewer steps than b (per momentum), beyond the seed spread.

    A NaN in a (a seed that never reached the target, or diverged) is reported
    as such, with the count of those seeds; a NaN in b only makes a faster.
    Each momentum's numbers follow it: (a's steps vs b's, mean ± std).
    """
    groups: dict[str, list[str]] = {}
    for a, b, mu in zip(steps_a, steps_b, momenta, strict=True):
        said = _common.steps_verdict(a, b)
        if said.startswith(_common.MISSED):
            key, detail = _common.MISSED, said[len(_common.MISSED) + 1 :]
        else:
            key, detail = said, f"({_common.mean_std(a)} vs {_common.mean_std(b)})"
        groups.setdefault(key, []).append(f"{mu:g} {detail}")
    order = ["faster", "slower", "no clear difference", _common.ONE_SEED, _common.MISSED]
    return "; ".join(f"{key} at {', '.join(groups[key])}" for key in order if key in groups)


def verdict_lines(momenta: np.ndarray, steps: np.ndarray, reasons: np.ndarray) -> list[str]:
    """The printed verdicts; ``reasons`` is ``_common.divergence`` per (method, momentum, seed)."""
    lines = []
    if momenta[0] == 0.0 and len(momenta) > 1:
        for i, method in enumerate(METHODS):
            sgd = np.repeat(steps[i, :1], len(momenta) - 1, axis=0)
            lines.append(f"{LABELS[method]} vs SGD: " + compare(steps[i, 1:], sgd, momenta[1:]))
    lines.append("Nesterov vs heavy ball: " + compare(steps[1], steps[0], momenta))
    bad = [
        f"{LABELS[m]} {mu:g} ({_common.why_diverged(reasons[i, j])})"
        for j, mu in enumerate(momenta)
        for i, m in enumerate(METHODS)
        if (reasons[i, j] != "").any()
    ]
    lines.append("diverged: " + (", ".join(bad) if bad else "none"))
    return lines


def plot_loss(
    steps: np.ndarray,
    loss: np.ndarray,
    momenta: np.ndarray,
    reasons: np.ndarray,
    target: float,
    path: Path,
) -> None:
    plt = _common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, i in zip(axes, range(2), strict=True):
        for j, mu in enumerate(momenta):
            color, dash = PALETTE[j % len(PALETTE)], "-" if j < len(PALETTE) else "--"
            runs = np.where(np.isfinite(loss[i, j]), loss[i, j], np.inf)
            median = np.median(runs, 0)
            ax.plot(steps, median, color=color, ls=dash, label=f"μ = {mu:g}")
            ax.fill_between(steps, runs.min(0), runs.max(0), color=color, alpha=0.15)
            if (reasons[i, j] != "").any() and np.isfinite(median[-1]):
                # Say why the script calls it diverged, where the curve ends.
                ax.annotate(
                    f"μ = {mu:g}: diverged\n({_common.why_diverged(reasons[i, j])})",
                    (steps[-1], median[-1]),
                    xytext=(-4, -6),
                    textcoords="offset points",
                    ha="right",
                    va="top",
                    fontsize=7.5,
                    color=color,
                )
        ax.axhline(target, color="gray", ls=":", lw=1, label=f"target {target:g}")
        # A uniform guess over the 10 digits: a dead network's loss.
        ax.axhline(np.log(10), color="gray", ls="--", lw=0.8, label="chance level (ln 10)")
        ax.set(yscale="log", ylim=(1e-5, 10), xlabel="step", title=LABELS[METHODS[i]])
    axes[0].set_ylabel("training loss (median, min–max over seeds)")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    _common.save(fig, path)


def plot_summary(
    momenta: np.ndarray,
    steps: np.ndarray,
    acc: np.ndarray,
    reasons: np.ndarray,
    target: float,
    out: Path,
) -> None:
    plt = _common.pyplot()
    from matplotlib.lines import Line2D

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.4))
    x = np.arange(len(momenta))
    # Settings with no mean to plot are marked in a strip above each frame, outside
    # the data range: x where a seed diverged, ^ where one never reached the target.
    gone = (reasons != "").any(-1)
    missed = ~np.isfinite(steps).all(-1) & ~gone
    strips = {left: {"x": gone, "^": missed}, right: {"x": gone}}
    marks = {"x": "diverged (a seed or more)", "^": _common.MISSED}
    for i, method in enumerate(METHODS):
        color, marker = METHOD_STYLE[method]
        shift = x + (i - 0.5) * 0.15
        for ax, values in ((left, steps[i]), (right, 100 * acc[i])):
            ax.errorbar(shift, *_common.spread(values), color=color, marker=marker, capsize=3)
            for symbol, where in strips[ax].items():
                top = np.full(where[i].sum(), 1.04)
                strip = ax.get_xaxis_transform()  # x in data, y in axes coordinates
                ax.plot(
                    shift[where[i]], top, symbol, color=color, mfc="none", transform=strip,
                    clip_on=False,
                )  # fmt: skip
    right.set_ylim(top=min(100.0, right.get_ylim()[1]))  # an accuracy ends at 100 %
    for ax in (left, right):
        ax.set(xticks=x, xticklabels=[f"{m:g}" for m in momenta], xlabel="momentum")
    handles = [Line2D([], [], color=c, marker=m) for c, m in METHOD_STYLE.values()]
    labels = [LABELS[method] for method in METHOD_STYLE]
    for symbol, where in strips[left].items():
        if where.any():
            handles.append(Line2D([], [], ls="", marker=symbol, color="gray", mfc="none"))
            labels.append(f"{marks[symbol]} (marked above the frame)")
    fig.legend(handles, labels, loc="lower center", ncol=len(handles), fontsize=8)
    fig.subplots_adjust(bottom=0.2)
    left.set_ylabel("steps (mean ± std over seeds)")
    left.set_title(f"steps to training loss {target:g}", pad=22)
    right.set_ylabel("test accuracy % (mean ± std)")
    right.set_title("test accuracy (diverged runs left out)", pad=22)
    _common.save(fig, out / "momentum_sweep_summary.png")


if __name__ == "__main__":
    main()
