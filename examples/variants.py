"""Momentum variants side by side: an ill-conditioned quadratic and a digits classifier.

Seven ``momentum_jax`` transforms from one base learning rate α:

    gradient descent      momentum(α, 0)
    momentum              momentum(α, 0.9)
    Nesterov              nesterov(α, 0.9)
    QHM                   qhm(10α, momentum=0.999, nu=0.7)        (Ma & Yarats 2019)
    AggMo                 aggmo(10α/37, momenta=(0, 0.9, 0.99))   (Lucas et al. 2019)
    Nesterov + Sutskever  nesterov(α, schedules.sutskever(cap, stage))
    momentum + Demon      momentum(α, schedules.demon(0.9, steps))

QHM and AggMo keep the settings their papers recommend, with the learning rate
converted so that a constant gradient moves them as far per step as momentum
0.9 does (α/(1 − 0.9) = 10α): QHM's buffer is an average, so it takes 10α;
AggMo's long-run step is (α'/3)(1 + 10 + 100) = 37α', so it takes 10α/37. The
Sutskever schedule rises from 0.5 and reaches its cap half way through the run;
Demon decays from 0.9 to 0 over the run.

(1) ``½ (x − x*)ᵀ A (x − x*)`` with κ = 1000: ``A = Q diag(λ) Qᵀ``, random rotation,
    λ geometric over [1/κ, 1]; full gradients, float64, one deterministic run per
    method. Printed: the step from which ‖x − x*‖/‖x₀ − x*‖ stays below the target.
(2) The digits MLP of ``momentum_sweep.py`` (all methods and seeds in one compiled
    program). Printed: steps to a target training loss ("never" where a seed
    did not reach it), final loss and test accuracy, mean ± std over seeds; a
    method is called faster or slower than momentum only when the mean ± std
    intervals do not overlap, and one that did not reach the target in some
    seed is said to, with the count, rather than called slower. Each verdict
    prints the numbers it is decided on.

Outputs (``examples/out/variants/``, ``..._quick/`` with ``--quick``):
``variants.csv`` and ``variants.png``.

Measured on 2 CPU cores shared with other jobs: 38 s wall and 27 s of CPU time
(user + sys) for the full run; 34 s wall and 22 s CPU with ``--quick``.

    python examples/variants.py
    python examples/variants.py --quick
"""

from __future__ import annotations

import argparse
import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax

import momentum_jax
from momentum_jax import schedules

LABELS = {
    "gd": "gradient descent",
    "momentum": "momentum",
    "nesterov": "Nesterov",
    "qhm": "QHM",
    "aggmo": "AggMo",
    "sutskever": "Nesterov + Sutskever",
    "demon": "momentum + Demon",
}
COLORS = dict(zip(LABELS, ["black", "C0", "C1", "C2", "C4", "C3", "C5"], strict=True))
AGGMO_MOMENTA = (0.0, 0.9, 0.99)
FULL = {"steps": 2000, "seeds": 5}
QUICK = {"steps": 400, "seeds": 2}
CSV_HEADER = [
    "problem",
    "method",
    "steps_mean",
    "steps_std",
    "reached",
    "final_mean",
    "final_std",
    "test_accuracy_mean",
    "test_accuracy_std",
    "diverged",
    "seeds",
]


def stage_length(cap: float, steps: int) -> int:
    """``steps_per_stage`` so that ``schedules.sutskever(cap)`` reaches ``cap`` at steps/2.

    Stage k has momentum 1 − 1/(2k + 2), so the cap is reached at stage
    ⌈1/(2(1 − cap)) − 1⌉ (a tiny tolerance: 0.5/(1 − 0.99) is 50.000000000000004).
    """
    stages = max(1, math.ceil(0.5 / (1 - cap) - 1 - 1e-9))
    return max(1, steps // 2 // stages)


def optimizers(lr: float, steps: int, cap: float) -> dict[str, optax.GradientTransformation]:
    aggmo_lr = 10 * lr / np.mean([1 / (1 - b) for b in AGGMO_MOMENTA])
    return {
        "gd": momentum_jax.momentum(lr, 0.0),
        "momentum": momentum_jax.momentum(lr, 0.9),
        "nesterov": momentum_jax.nesterov(lr, 0.9),
        "qhm": momentum_jax.qhm(10 * lr, momentum=0.999, nu=0.7),
        "aggmo": momentum_jax.aggmo(aggmo_lr, momenta=AGGMO_MOMENTA),
        "sutskever": momentum_jax.nesterov(lr, schedules.sutskever(cap, stage_length(cap, steps))),
        "demon": momentum_jax.momentum(lr, schedules.demon(0.9, total_steps=steps)),
    }


@functools.partial(jax.jit, static_argnums=(0, 4))
def distances(opt: Any, a: jax.Array, x_star: jax.Array, x0: jax.Array, steps: int) -> Any:
    """‖x_t − x*‖ for t = 1..steps, one ``lax.scan``."""

    def step(carry: Any, _: None) -> Any:
        x, state = carry
        updates, state = opt.update(a @ (x - x_star), state, x)
        x = optax.apply_updates(x, updates)
        return (x, state), jnp.linalg.norm(x - x_star)

    return jax.lax.scan(step, (x0, opt.init(x0)), length=steps)[1]


def quadratic(dim: int, kappa: float, seed: int, lr: float, steps: int) -> dict[str, np.ndarray]:
    """Relative error per step (0..steps) of every method, float64."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    a = (q * np.geomspace(1 / kappa, 1, dim)) @ q.T
    x_star = rng.standard_normal(dim)
    x0 = x_star + rng.standard_normal(dim)
    errors = {}
    with _common.float64():
        a, x_star, x0 = jnp.asarray(a), jnp.asarray(x_star), jnp.asarray(x0)
        for name, opt in optimizers(lr, steps, cap=0.99).items():
            dist = np.asarray(distances(opt, a, x_star, x0, steps))
            errors[name] = np.concatenate([[1.0], dist / float(jnp.linalg.norm(x0 - x_star))])
    return errors


def stays_below(values: np.ndarray, target: float) -> float:
    above = np.flatnonzero(~(values <= target))
    last = above[-1] + 1 if above.size else 0
    return float(last) if last < values.size else np.nan


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = _common.sized_parser(__doc__, "variants", FULL, QUICK, "digits steps")
    parser.add_argument("--kappa", type=float, default=1000.0, help="quadratic: condition number")
    parser.add_argument("--dim", type=int, default=200, help="quadratic: dimension")
    parser.add_argument("--quad-steps", type=int, default=3000, help="quadratic: steps")
    parser.add_argument("--quad-lr", type=float, default=0.5, help="quadratic: base α")
    parser.add_argument("--quad-target", type=float, default=1e-6, help="quadratic: target error")
    parser.add_argument("--digits-lr", type=float, default=0.1, help="digits: base α")
    parser.add_argument("--target-loss", type=float, default=0.01, help="digits: target loss")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    steps, num_seeds = args.steps or size["steps"], args.seeds or size["seeds"]
    out = _common.out_dir("variants", args.quick, args.out)

    errors = quadratic(args.dim, args.kappa, 0, args.quad_lr, args.quad_steps)
    print(
        f"(1) quadratic, κ = {args.kappa:g}, α = {args.quad_lr:g}: steps until the "
        f"relative error stays below {args.quad_target:g} (one deterministic run each)"
    )
    rows = []
    for name, error in errors.items():
        reached = stays_below(error, args.quad_target)
        bad = not np.isfinite(error).all() or error.max() > 10
        blank = ["", "", ""]  # one deterministic run: no spread, no test accuracy
        rows.append(["quadratic", name, reached, "", int(reached >= 0), error[-1], *blank])
        rows[-1] += [int(bad), 1]
        steps_text = f"{reached:g}" if np.isfinite(reached) else _common.NEVER
        print(
            f"  {LABELS[name]:<21} {steps_text:>6}  final error {error[-1]:.2e}"
            + ("  diverged" if bad else "")
        )

    makers = {
        name: (lambda _, name=name: optimizers(args.digits_lr, steps, 0.95)[name])
        for name in LABELS
    }
    eval_steps, loss, acc = _common.train_mlps(
        _common.load_digits(), makers, [0.0], range(num_seeds), steps=steps
    )
    loss, acc = loss[:, 0], acc[:, 0]  # (method, seed, ...)
    reasons = _common.divergence(loss)
    diverged = reasons != ""
    to_target = _common.steps_to(loss, eval_steps, args.target_loss)
    to_target[diverged] = np.nan
    print(
        f"\n(2) digits MLP, α = {args.digits_lr:g}, {steps} steps, {num_seeds} seeds: steps "
        f"to training loss {args.target_loss:g}, final loss, test accuracy % (mean ± std)"
    )
    for i, name in enumerate(LABELS):
        ok = ~diverged[i]
        runs = (to_target[i], loss[i, ok, -1], acc[i, ok])
        stats = [v for x in runs for v in (_common.spread(x) if x.size else ("", ""))]
        reached = int(np.isfinite(to_target[i]).sum())
        rows.append(["digits", name, *stats[:2], reached, *stats[2:], (~ok).sum(), num_seeds])
        print(
            f"  {LABELS[name]:<21} {_common.mean_std(to_target[i]):>12}  "
            f"{_common.mean_std(loss[i, ok, -1], '.1e'):>17}  "
            f"{_common.mean_std(100 * acc[i, ok], '.1f'):>10}  "
            f"diverged {_common.why_diverged(reasons[i])}"
        )
    _common.write_csv(out / "variants.csv", CSV_HEADER, rows)

    print(
        "\nverdicts (digits: a difference needs non-overlapping mean ± std over seeds; "
        "each side's mean ± std in square brackets):"
    )
    quad = {n: stays_below(e, args.quad_target) for n, e in errors.items()}
    ranked = sorted((s, n) for n, s in quad.items() if np.isfinite(s))
    missed = [LABELS[n] for n in quad if not np.isfinite(quad[n])]
    print(
        "  quadratic, by steps to target: "
        + (", ".join(f"{LABELS[n]} {s:g}" for s, n in ranked) or "none reached it")
        + (f"; {_common.MISSED}: {', '.join(missed)}" if missed else "")
    )
    verdicts = {}
    final = [loss[i, ~diverged[i], -1] for i in range(len(LABELS))]
    for i, name in enumerate(LABELS):
        if name != "momentum":
            verdicts[name] = (
                _common.steps_verdict(to_target[i], to_target[1]),
                _common.verdict(final[i], final[1]),
            )
            steps_numbers = f"{_common.mean_std(to_target[i])} vs {_common.mean_std(to_target[1])}"
            loss_numbers = (
                f"{_common.mean_std(final[i], '.2e')} vs {_common.mean_std(final[1], '.2e')}"
            )
            print(
                f"  digits, {LABELS[name]} vs momentum: steps: {verdicts[name][0]} "
                f"[{steps_numbers}]; final loss: {verdicts[name][1]} [{loss_numbers}]"
            )
    plot(errors, args, eval_steps, loss, num_seeds, out / "variants.png")
    print(f"\nwrote {out}/variants.csv and variants.png")
    return {
        "errors": errors,
        "quad_steps": quad,
        "loss": loss,
        "steps": to_target,
        "accuracy": acc,
        "diverged": diverged,
        "verdicts": verdicts,
    }


def plot(
    errors: dict[str, np.ndarray],
    args: argparse.Namespace,
    eval_steps: np.ndarray,
    loss: np.ndarray,
    num_seeds: int,
    path: Path,
) -> None:
    plt = _common.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    for i, name in enumerate(LABELS):
        left.plot(errors[name], color=COLORS[name], label=LABELS[name])
        runs = np.where(np.isfinite(loss[i]), loss[i], np.inf)
        right.plot(eval_steps, np.median(runs, 0), color=COLORS[name])
        right.fill_between(eval_steps, runs.min(0), runs.max(0), color=COLORS[name], alpha=0.15)
    for ax, target in ((left, args.quad_target), (right, args.target_loss)):
        ax.axhline(target, color="gray", ls=":", lw=1)
        ax.text(0, target, f"target {target:g}", color="gray", fontsize=8, va="bottom")
    left.set(
        yscale="log",
        ylim=(1e-12, 10),
        xlabel="step",
        ylabel="‖x − x*‖ / ‖x₀ − x*‖",
        title=f"quadratic, κ = {args.kappa:g}, α = {args.quad_lr:g}",
    )
    right.set(
        yscale="log",
        ylim=(1e-6, 10),
        xlabel="step",
        ylabel="training loss (median, min–max band)",
        title=f"digits MLP, α = {args.digits_lr:g}, {num_seeds} seeds",
    )
    fig.legend(loc="lower center", ncol=7, fontsize=8, bbox_to_anchor=(0.5, -0.1))
    _common.save(fig, path)


if __name__ == "__main__":
    main()
