"""Sweep the momentum coefficient while training a small MLP on handwritten digits.

Trains a ReLU MLP classifier with minibatch SGD plus heavy-ball momentum
(``momentum_jax.momentum``) and Nesterov momentum (``momentum_jax.nesterov``)
for momentum 0 (plain SGD, the baseline), 0.5, 0.6, 0.7, 0.8, 0.9, 0.95 and
0.99, all at the same learning rate and over several seeds. Every
(variant, momentum, seed) model trains inside one compiled program
(``jax.vmap`` over momenta and seeds, ``lax.scan`` over steps).

Reported per (momentum, variant): steps to reach a target training loss,
final training loss, test accuracy (mean ± std over seeds) and how many runs
diverged. Divergence is flagged, never dropped silently: a run counts as
diverged when its training loss became NaN/inf, rose above 10x its initial
value, or ended above half its initial value after having been at least 3x
lower (the run undid its own progress). Statistics of loss and accuracy are
over the runs that did not diverge; the diverged count sits next to them.

Outputs in ``--out``: ``momentum_sweep.csv`` (the table), ``momentum_sweep_runs.csv``
(one row per run), ``momentum_sweep_loss.png`` (loss curves) and
``momentum_sweep_summary.png`` (steps to target and test accuracy vs momentum).
A short conclusion computed from the numbers is printed at the end.

Usage::

    python examples/momentum_sweep.py                 # digits, bundled with scikit-learn
    python examples/momentum_sweep.py --quick         # a smaller run, for a first look
    python examples/momentum_sweep.py --data mnist --data-dir ~/data/mnist
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import _common
import _data
import numpy as np

DEFAULT_MOMENTA = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "momentum_sweep"
EXPLOSION_FACTOR = 10.0  # loss above this multiple of its initial value: diverged
UNDONE_FRACTION = 0.5  # final loss above this fraction of the initial value ...
UNDONE_FACTOR = 3.0  # ... after having been this many times lower: diverged
FULL = {"steps": 2000, "seeds": 5}
QUICK = {"steps": 400, "seeds": 2}


# ---------------------------------------------------------------------------
# Per-run and per-configuration numbers
# ---------------------------------------------------------------------------


def diverged_runs(train_loss: np.ndarray) -> np.ndarray:
    """Which runs diverged, from loss curves of shape ``(..., evals)`` (first entry: step 0)."""
    initial = train_loss[..., 0]
    finite = np.all(np.isfinite(train_loss), axis=-1)
    with np.errstate(invalid="ignore"):
        peak = np.nanmax(np.where(np.isfinite(train_loss), train_loss, np.inf), axis=-1)
        best = np.nanmin(train_loss, axis=-1)
        final = train_loss[..., -1]
        exploded = peak > EXPLOSION_FACTOR * initial
        undone = (final > UNDONE_FRACTION * initial) & (final > UNDONE_FACTOR * best)
    return ~finite | exploded | undone


def steps_to_target(train_loss: np.ndarray, eval_steps: np.ndarray, target: float) -> np.ndarray:
    """First evaluated step with loss ``<= target`` per run (NaN when never reached)."""
    out = np.full(train_loss.shape[:-1], np.nan)
    for index in np.ndindex(*train_loss.shape[:-1]):
        hit = _common.first_step_below(train_loss[index], target)
        if hit is not None:
            out[index] = eval_steps[hit]
    return out


def finite_mean(values: np.ndarray) -> float:
    """Mean of the finite entries (NaN marks runs that diverged or missed the target)."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def finite_std(values: np.ndarray) -> float:
    """Standard deviation of the finite entries."""
    finite = values[np.isfinite(values)]
    return float(finite.std()) if finite.size else float("nan")


@dataclasses.dataclass(frozen=True)
class ConfigSummary(_common.SeedOutcomes):
    """The runs (one per seed) of one (variant, momentum) configuration."""

    variant: str
    momentum: float
    diverged: np.ndarray  # bool per seed
    steps: np.ndarray  # steps to target per seed; NaN if not reached or diverged
    final_loss: np.ndarray  # NaN where diverged
    test_accuracy: np.ndarray  # NaN where diverged

    @property
    def stable(self) -> bool:
        return self.num_diverged == 0

    @property
    def converged(self) -> bool:
        """No run diverged and every run reached the target loss."""
        return self.stable and self.num_reached == self.num_seeds

    @property
    def steps_mean(self) -> float:
        return finite_mean(self.steps)

    @property
    def accuracy_mean(self) -> float:
        return finite_mean(self.test_accuracy)

    @property
    def accuracy_std(self) -> float:
        return finite_std(self.test_accuracy)

    def csv_row(self) -> list[object]:
        def number(value: float) -> object:
            return "" if not np.isfinite(value) else round(value, 6)

        return [
            self.momentum,
            self.variant,
            self.num_seeds,
            self.num_diverged,
            self.num_reached,
            number(self.steps_mean),
            number(finite_std(self.steps)),
            number(finite_mean(self.final_loss)),
            number(finite_std(self.final_loss)),
            number(self.accuracy_mean),
            number(self.accuracy_std),
        ]

    def table_row(self) -> list[str]:
        label = [f"{self.momentum:g}", _common.LABELS[self.variant]]
        diverged = f"{self.num_diverged}/{self.num_seeds}"
        if self.num_diverged == self.num_seeds:
            return [*label, "diverged", "diverged", "diverged", diverged]
        steps = _common.mean_std(self.steps, ".0f")
        if self.num_reached < self.num_seeds:
            steps = f"{steps} ({self.num_reached}/{self.num_seeds} reached)"
        return [
            *label,
            steps,
            _common.mean_std(self.final_loss, ".2g"),
            _common.mean_std(self.test_accuracy, ".1f", scale=100.0),
            diverged,
        ]


CSV_HEADERS = [
    "momentum",
    "variant",
    "seeds",
    "diverged",
    "reached_target",
    "steps_to_target_mean",
    "steps_to_target_std",
    "final_loss_mean",
    "final_loss_std",
    "test_accuracy_mean",
    "test_accuracy_std",
]
RUNS_HEADERS = [
    "momentum",
    "variant",
    "seed",
    "diverged",
    "steps_to_target",
    "final_loss",
    "min_loss",
    "test_accuracy",
]


def summarize(result: _common.SweepResult, target: float) -> list[ConfigSummary]:
    """One :class:`ConfigSummary` per (momentum, variant), momentum-major order."""
    diverged = diverged_runs(result.train_loss)
    steps = np.where(
        diverged, np.nan, steps_to_target(result.train_loss, result.eval_steps, target)
    )
    final = np.where(diverged, np.nan, result.train_loss[..., -1])
    accuracy = np.where(diverged, np.nan, result.test_accuracy)
    return [
        ConfigSummary(
            variant=variant,
            momentum=float(mu),
            diverged=diverged[v, m],
            steps=steps[v, m],
            final_loss=final[v, m],
            test_accuracy=accuracy[v, m],
        )
        for m, mu in enumerate(result.momenta)
        for v, variant in enumerate(result.variants)
    ]


# ---------------------------------------------------------------------------
# The written conclusion: every number in it comes from the summaries
# ---------------------------------------------------------------------------


def _momenta_list(values: Sequence[float]) -> str:
    return ", ".join(f"{v:g}" for v in values) if values else "none"


def conclusion(
    summaries: Sequence[ConfigSummary], target: float, num_steps: int, resolution: int
) -> list[str]:
    """Sentences drawn from the summaries: baseline, best range, instability, Nesterov vs HB."""
    by_key = {(s.variant, s.momentum): s for s in summaries}
    variants = list(dict.fromkeys(s.variant for s in summaries))
    lines: list[str] = []

    baseline = [s for s in summaries if s.momentum == 0.0]
    base = baseline[0] if baseline else None
    if base is not None:
        if base.converged:
            lines.append(
                f"Baseline (momentum 0, plain SGD): reached loss {target:g} in "
                f"{base.steps_mean:.0f} steps on average, test accuracy "
                f"{100 * base.accuracy_mean:.1f}%."
            )
        elif base.stable:
            reached = (
                f"reached loss {target:g} within {num_steps} steps in only "
                f"{base.num_reached}/{base.num_seeds} runs"
                if base.num_reached
                else f"did not reach loss {target:g} within {num_steps} steps"
            )
            lines.append(
                f"Baseline (momentum 0, plain SGD): {reached} (final loss "
                f"{finite_mean(base.final_loss):.2g}), test accuracy "
                f"{100 * base.accuracy_mean:.1f}%."
            )
        else:
            lines.append(
                f"Baseline (momentum 0, plain SGD): {base.num_diverged}/{base.num_seeds} runs "
                "diverged; lower the learning rate."
            )

    for variant in variants:
        label = _common.LABELS[variant]
        rows = [s for s in summaries if s.variant == variant and s.momentum > 0.0]
        converged = [s for s in rows if s.converged]
        if not converged:
            lines.append(
                f"{label}: no momentum > 0 reached loss {target:g} in every run within "
                f"{num_steps} steps without diverging."
            )
            continue
        best = min(converged, key=lambda s: s.steps_mean)
        near = [s.momentum for s in converged if s.steps_mean <= 1.25 * best.steps_mean]
        text = (
            f"{label}: fastest at momentum {best.momentum:g} ({best.steps_mean:.0f} steps to "
            f"loss {target:g}"
        )
        if base is not None and base.converged:
            text += f", {base.steps_mean / best.steps_mean:.1f}x fewer than plain SGD"
        text += f"); momenta within 25% of that speed: {_momenta_list(near)}."
        larger = [s for s in rows if s.momentum > best.momentum and s.stable]
        if larger:
            text += " Larger momenta (without divergence) did not improve on it: " + ", ".join(
                f"{s.momentum:g} ({s.steps_mean:.0f} steps)"
                if s.converged
                else f"{s.momentum:g} (target reached in {s.num_reached}/{s.num_seeds} runs)"
                for s in larger
            )
            text += "."
        lines.append(text)

    stable_rows = [s for s in summaries if s.stable and np.isfinite(s.accuracy_mean)]
    if stable_rows:
        top = max(stable_rows, key=lambda s: s.accuracy_mean)
        low = min(s.accuracy_mean for s in stable_rows)
        lines.append(
            f"Test accuracy: best {100 * top.accuracy_mean:.1f}% ± {100 * top.accuracy_std:.1f} "
            f"({_common.LABELS[top.variant]}, momentum {top.momentum:g}); the mean accuracy of "
            f"configurations without divergence ranged from {100 * low:.1f}% to "
            f"{100 * top.accuracy_mean:.1f}%."
        )

    unstable = [s for s in summaries if not s.stable]
    if not unstable:
        lines.append("Stability: no run diverged at any momentum.")
    for variant in variants:
        bad = [s for s in unstable if s.variant == variant]
        if bad:
            first = min(s.momentum for s in bad)
            stable_above = [
                s.momentum
                for s in summaries
                if s.variant == variant and s.momentum > first and s.stable
            ]
            where = ", ".join(f"{s.momentum:g} ({s.num_diverged}/{s.num_seeds} runs)" for s in bad)
            text = f"Instability, {_common.LABELS[variant]}: diverged at momentum {where}"
            if not stable_above:
                text += (
                    f", i.e. every swept momentum ≥ {first:g} diverged at least once at this "
                    "learning rate"
                )
            lines.append(text + ".")

    if len(variants) == 2 and set(variants) == {"heavy_ball", "nesterov"}:
        faster = slower = ties = 0
        ratios = []
        pairs = []
        for mu in sorted({s.momentum for s in summaries if s.momentum > 0.0}):
            hb, nag = by_key.get(("heavy_ball", mu)), by_key.get(("nesterov", mu))
            if hb is None or nag is None or not (hb.converged and nag.converged):
                continue
            ratios.append(nag.steps_mean / hb.steps_mean)
            pairs.append((mu, hb.steps_mean, nag.steps_mean))
            difference = nag.steps_mean - hb.steps_mean
            if abs(difference) < resolution:
                ties += 1
            elif difference < 0:
                faster += 1
            else:
                slower += 1
        compared = faster + slower + ties
        div_hb = sum(s.num_diverged for s in summaries if s.variant == "heavy_ball")
        div_nag = sum(s.num_diverged for s in summaries if s.variant == "nesterov")
        if compared:
            lines.append(
                f"Nesterov vs heavy ball (same momentum and learning rate): Nesterov needed "
                f"fewer steps at {faster} of {compared} momenta where both always reached the "
                f"target, more at {slower}, the same (within {resolution} steps) at {ties}; "
                f"median steps ratio Nesterov/heavy ball {np.median(ratios):.2f}"
            )
            mu, hb_steps, nag_steps = max(pairs, key=lambda p: abs(p[2] - p[1]))
            lines[-1] += (
                f"; largest gap at momentum {mu:g}: Nesterov {nag_steps:.0f} vs heavy ball "
                f"{hb_steps:.0f} steps. Diverged runs: Nesterov {div_nag}, heavy ball {div_hb}."
            )
        else:
            lines.append(
                f"Nesterov vs heavy ball: no momentum > 0 where both always reached the target."
                f" Diverged runs: Nesterov {div_nag}, heavy ball {div_hb}."
            )
        counts = f"(faster at {faster} momenta, slower at {slower})"
        if not compared:
            verdict = "speed not comparable; " + (
                "Nesterov diverged less often"
                if div_nag < div_hb
                else "heavy ball diverged less often"
                if div_hb < div_nag
                else "both diverged equally often"
            )
        elif faster > slower and div_nag <= div_hb:
            verdict = f"Nesterov beat heavy ball on speed {counts} without diverging more often"
        elif slower > faster and div_hb <= div_nag:
            verdict = f"heavy ball beat Nesterov on speed {counts} without diverging more often"
        elif faster == slower and div_nag < div_hb:
            verdict = "equal speed, but Nesterov diverged less often"
        elif faster == slower and div_hb < div_nag:
            verdict = "equal speed, but heavy ball diverged less often"
        elif faster == slower:
            verdict = "no difference in speed or stability"
        else:
            verdict = "mixed: one was faster, the other diverged less often"
        best_of = {
            v: max(
                (s for s in stable_rows if s.variant == v),
                key=lambda s: s.accuracy_mean,
                default=None,
            )
            for v in ("heavy_ball", "nesterov")
        }
        hb_best, nag_best = best_of["heavy_ball"], best_of["nesterov"]
        if hb_best is not None and nag_best is not None:
            gap = round(100 * (nag_best.accuracy_mean - hb_best.accuracy_mean), 2)
            noise = round(100 * max(hb_best.accuracy_std, nag_best.accuracy_std), 2)
            within = "within" if abs(gap) <= noise else "larger than"
            verdict += (
                f"; best test accuracy Nesterov {100 * nag_best.accuracy_mean:.2f}% vs heavy "
                f"ball {100 * hb_best.accuracy_mean:.2f}% (difference {gap:+.2f} points, "
                f"{within} the larger seed-to-seed std, {noise:.2f})"
            )
        lines.append(f"Verdict: {verdict}.")
    return lines


# ---------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------


def plot_loss_curves(
    result: _common.SweepResult,
    summaries: Sequence[ConfigSummary],
    target: float,
    title: str,
    path: Path,
) -> Path:
    """One panel per variant: median training loss over seeds (band: min to max), log scale."""
    plt = _common.get_pyplot()
    by_key = {(s.variant, s.momentum): s for s in summaries}
    colors = plt.get_cmap("turbo")(np.linspace(0.08, 0.95, len(result.momenta)))
    finite = result.train_loss[np.isfinite(result.train_loss) & (result.train_loss > 0)]
    initial = float(np.nanmax(result.train_loss[..., 0]))
    low = max(float(finite.min()) * 0.7, 1e-6) if finite.size else 1e-6
    high = initial * 4.0
    fig, axes = plt.subplots(
        1, len(result.variants), figsize=(5.6 * len(result.variants), 4.2), sharey=True
    )
    axes = np.atleast_1d(axes)
    for ax, (v, variant) in zip(axes, enumerate(result.variants), strict=True):
        for m, mu in enumerate(result.momenta):
            curves = np.clip(result.train_loss[v, m], low, high)
            curves = np.where(np.isfinite(result.train_loss[v, m]), curves, high)
            summary = by_key[(variant, float(mu))]
            label = f"μ = {mu:g}" + (" (SGD)" if mu == 0 else "")
            if summary.num_diverged:
                label += f" — {summary.num_diverged}/{summary.num_seeds} diverged"
            color = "black" if mu == 0 else colors[m]
            style = "--" if summary.num_diverged else "-"
            ax.plot(
                result.eval_steps,
                np.median(curves, axis=0),
                style,
                color=color,
                lw=1.5,
                label=label,
            )
            ax.fill_between(
                result.eval_steps, curves.min(axis=0), curves.max(axis=0), color=color, alpha=0.12
            )
        ax.axhline(target, color="0.4", lw=0.8, ls=":")
        ax.annotate(
            f"target {target:g}",
            (result.eval_steps[-1], target),
            ha="right",
            va="bottom",
            fontsize=8,
            color="0.3",
        )
        ax.set_yscale("log")
        ax.set_ylim(low, high)
        ax.set_xlabel("step")
        ax.set_title(f"{_common.LABELS[variant]} momentum")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    axes[0].set_ylabel("training loss (median over seeds; band: min–max)")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _common.save_figure(fig, path)


def plot_summary(summaries: Sequence[ConfigSummary], target: float, path: Path) -> Path:
    """Steps to target and test accuracy vs momentum, one series per variant."""
    plt = _common.get_pyplot()
    momenta = sorted({s.momentum for s in summaries})
    variants = list(dict.fromkeys(s.variant for s in summaries))
    positions = {mu: i for i, mu in enumerate(momenta)}
    markers = {"heavy_ball": "o", "nesterov": "s"}
    colors = {"heavy_ball": "tab:blue", "nesterov": "tab:orange"}
    fig, (ax_steps, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.0))
    width = 0.12
    flagged: set[object] = set()  # axes that already have the "diverged" legend entry
    for k, variant in enumerate(variants):
        rows = [s for s in summaries if s.variant == variant]
        offset = (k - (len(variants) - 1) / 2) * width * 2
        x = np.array([positions[s.momentum] + offset for s in rows])
        for ax, mean, std in (
            (
                ax_steps,
                [s.steps_mean for s in rows],
                [finite_std(s.steps) for s in rows],
            ),
            (
                ax_acc,
                [100 * s.accuracy_mean for s in rows],
                [100 * s.accuracy_std for s in rows],
            ),
        ):
            ax.errorbar(
                x,
                mean,
                yerr=std,
                fmt=markers.get(variant, "o") + "-",
                color=colors.get(variant),
                capsize=3,
                ms=5,
                lw=1.2,
                label=_common.LABELS[variant],
            )
        short = [
            xi
            for xi, s in zip(x, rows, strict=True)
            if s.num_reached < s.num_seeds - s.num_diverged
        ]
        ax_steps.plot(
            short,
            [0.96] * len(short),
            "^",
            mfc="none",
            color=colors.get(variant),
            ms=8,
            mew=1.5,
            transform=ax_steps.get_xaxis_transform(),
            label=f"{_common.LABELS[variant]}: target not reached in every run" if short else None,
        )
        bad = [(xi, s) for xi, s in zip(x, rows, strict=True) if s.num_diverged]
        for ax in (ax_steps, ax_acc):
            for xi, s in bad:
                ax.plot(
                    xi,
                    0.04,
                    "x",
                    color="tab:red",
                    ms=9,
                    mew=2,
                    transform=ax.get_xaxis_transform(),
                    label=None if ax in flagged else "diverged run(s)",
                )
                ax.annotate(
                    f"{s.num_diverged}/{s.num_seeds}",
                    (xi, 0.09 + 0.05 * k),
                    xycoords=ax.get_xaxis_transform(),
                    ha="center",
                    fontsize=7,
                    color=colors.get(variant, "tab:red"),
                )
                flagged.add(ax)
    labels = [f"{mu:g}" + ("\n(SGD)" if mu == 0 else "") for mu in momenta]
    for ax in (ax_steps, ax_acc):
        ax.set_xticks(range(len(momenta)), labels)
        ax.set_xlabel("momentum μ")
        ax.grid(True, alpha=0.3)
    ax_steps.set_ylabel(f"steps to training loss ≤ {target:g}")
    ax_steps.set_title("Convergence speed (mean ± std; lower is better)")
    ax_steps.set_ylim(bottom=0)
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_title("Final test accuracy (mean ± std over seeds)")
    handles, names = ax_steps.get_legend_handles_labels()
    ax_steps.legend(handles, names, fontsize=8, loc="upper right")
    handles, names = ax_acc.get_legend_handles_labels()
    ax_acc.legend(handles, names, fontsize=8, loc="lower left")
    fig.tight_layout()
    return _common.save_figure(fig, path)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Train a small MLP classifier on handwritten digits while sweeping the momentum "
            "coefficient, with heavy-ball (momentum_jax.momentum) and Nesterov "
            "(momentum_jax.nesterov) momentum at the same learning rate and several seeds. "
            "Prints a table (steps to a target training loss, final loss, test accuracy, "
            "diverged runs) and a conclusion computed from it; writes CSV files and PNG figures."
        ),
        formatter_class=_common.HelpFormatter,
    )
    parser.add_argument(
        "--data",
        choices=_data.DATASETS,
        default="digits",
        help="digits: scikit-learn's bundled 8x8 digits (no download); mnist: real MNIST read "
        "from --data-dir",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="directory with the four MNIST IDX files (train-images-idx3-ubyte, ..., plain or "
        ".gz) or Keras' mnist.npz; used with --data mnist",
    )
    parser.add_argument(
        "--momenta",
        type=float,
        nargs="+",
        default=list(DEFAULT_MOMENTA),
        help="momentum values to sweep; 0 is plain SGD, the baseline",
    )
    parser.add_argument("--learning-rate", type=float, default=0.1, help="shared learning rate")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps, a multiple of --eval-every (default {FULL['steps']}, "
        f"{QUICK['steps']} with --quick)",
    )
    _common.add_mlp_training_arguments(
        parser, full_seeds=FULL["seeds"], quick_seeds=QUICK["seeds"], target_loss=0.05
    )
    parser.add_argument(
        "--eval-size",
        type=int,
        default=2048,
        help="the training loss is measured on the first N training examples (all of digits)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a small configuration ({QUICK['steps']} steps, {QUICK['seeds']} seeds) that runs "
        "in well under 30 s",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    args.steps = preset["steps"] if args.steps is None else args.steps
    args.seeds = preset["seeds"] if args.seeds is None else args.seeds
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    if args.steps < 1 or args.eval_every < 1 or args.steps % args.eval_every:
        parser.error(
            f"--steps must be a positive multiple of --eval-every, got --steps {args.steps} "
            f"and --eval-every {args.eval_every}"
        )
    if args.data == "mnist" and args.data_dir is None:
        parser.error("--data mnist reads local files: pass --data-dir DIR")
    return args


def main(argv: Sequence[str] | None = None) -> list[ConfigSummary]:
    """Run the sweep; return one :class:`ConfigSummary` per table row."""
    args = parse_args(argv)
    data = _data.load_dataset(args.data, args.data_dir)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    sizes = "-".join(str(n) for n in (data.num_features, *args.hidden, 10))
    print(
        f"data: {data.name}, {len(data.y_train)} train / {len(data.y_test)} test examples\n"
        f"model: MLP {sizes}; SGD with batch {args.batch_size}, learning rate "
        f"{args.learning_rate:g}, {args.steps} steps\n"
        f"sweep: momentum {_momenta_list(args.momenta)} x (heavy ball, Nesterov) x "
        f"{len(seeds)} seeds = {2 * len(args.momenta) * len(seeds)} models in one program"
    )
    start = time.perf_counter()
    result = _common.train_sweep(
        data,
        momenta=args.momenta,
        seeds=seeds,
        hidden=args.hidden,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        num_steps=args.steps,
        eval_every=args.eval_every,
        eval_size=args.eval_size,
        progress=not args.no_progress,
    )
    print(
        f"trained in {time.perf_counter() - start:.1f} s "
        f"(compile {result.compile_seconds:.1f} s, run {result.train_seconds:.1f} s)\n"
    )

    summaries = summarize(result, args.target_loss)
    headers = [
        "momentum",
        "variant",
        f"steps to loss {args.target_loss:g}",
        "final train loss",
        "test acc (%)",
        "diverged",
    ]
    print(_common.format_table(headers, [s.table_row() for s in summaries]))
    print(
        "mean ± std over seeds; loss and accuracy over the runs that did not diverge; "
        f"steps measured every {args.eval_every}.\n"
    )
    print("Conclusion:")
    for line in conclusion(summaries, args.target_loss, args.steps, args.eval_every):
        print(f"- {line}")

    out: Path = args.out
    diverged = diverged_runs(result.train_loss)
    reach = steps_to_target(result.train_loss, result.eval_steps, args.target_loss)
    run_rows = [
        [
            float(mu),
            variant,
            seed,
            int(diverged[v, m, s]),
            "" if not np.isfinite(reach[v, m, s]) else int(reach[v, m, s]),
            float(result.train_loss[v, m, s, -1]),
            float(np.nanmin(result.train_loss[v, m, s])),
            float(result.test_accuracy[v, m, s]),
        ]
        for m, mu in enumerate(result.momenta)
        for v, variant in enumerate(result.variants)
        for s, seed in enumerate(result.seeds)
    ]
    written = [
        _common.write_csv(
            out / "momentum_sweep.csv", CSV_HEADERS, [s.csv_row() for s in summaries]
        ),
        _common.write_csv(out / "momentum_sweep_runs.csv", RUNS_HEADERS, run_rows),
        plot_loss_curves(
            result,
            summaries,
            args.target_loss,
            f"MLP {sizes} on {data.name}: learning rate {args.learning_rate:g}, "
            f"batch {args.batch_size}, {len(seeds)} seeds per curve",
            out / "momentum_sweep_loss.png",
        ),
        plot_summary(summaries, args.target_loss, out / "momentum_sweep_summary.png"),
    ]
    print("\nwrote " + ", ".join(str(p) for p in written))
    return summaries


if __name__ == "__main__":
    main(sys.argv[1:])
