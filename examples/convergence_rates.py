"""Linear convergence rates on ill-conditioned quadratics: theory versus measurement.

For each condition number κ the objective is ``f(x) = ½ (x − x*)ᵀ A (x − x*)`` in
``--dim`` dimensions, with ``A`` diagonal and eigenvalues spread evenly over
``[m, L] = [1, κ]`` (the methods are rotation invariant, so a diagonal ``A``
loses nothing), a random minimizer ``x*`` and a random start. Three methods,
all ``momentum_jax`` transforms with their textbook optimal constants:

============  ==============================  ===========================  ======================
method        transform                       step size α                  momentum μ
============  ==============================  ===========================  ======================
GD            ``momentum(α, 0)``              2 / (L + m)                  0
heavy ball    ``momentum(α, μ)``              4 / (√L + √m)²               ((√κ − 1)/(√κ + 1))²
Nesterov      ``nesterov(α, μ)``              1 / L                        (√κ − 1)/(√κ + 1)
============  ==============================  ===========================  ======================

With a constant learning rate, ``momentum_jax.momentum`` (learning rate inside
the velocity) is exactly Polyak's heavy ball ``x⁺ = x − α∇f(x) + μ(x − x⁻)``.

Theory (worst case over the spectrum): GD contracts the error by (κ−1)/(κ+1)
per step, heavy ball by (√κ−1)/(√κ+1), Nesterov by about 1 − 1/√κ. The script
also computes the exact asymptotic rate of each linear iteration on this
spectrum (the spectral radius of its iteration matrix), measures the rate by a
least-squares fit of log(error) against the step over the tail (from
``--fit-from`` down to ``--floor``, well above float64 round-off), and counts the
steps until the relative error ``‖x_t − x*‖ / ‖x_0 − x*‖`` stays below ``--tol``.
It prints a table and a conclusion computed from it and saves
``convergence_rates.png`` (error vs step, one panel per κ) into ``--out``.

Runs in float64 (enabled inside :func:`main` only, with ``jax.enable_x64``).

Usage::

    python examples/convergence_rates.py
    python examples/convergence_rates.py --kappas 10 100 --dim 20
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import _common
import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "convergence_rates"
DEFAULT_KAPPAS = (10.0, 100.0, 1000.0, 10000.0)
QUICK_KAPPAS = (10.0, 100.0)
METHODS = ("gd", "heavy_ball", "nesterov")
NAMES = {"gd": "GD", "heavy_ball": "heavy ball", "nesterov": "Nesterov"}
COLORS = {"gd": "black", "heavy_ball": "tab:blue", "nesterov": "tab:orange"}


@dataclasses.dataclass(frozen=True)
class Setting:
    """A method's optimal constants and its theoretical rate for one κ (with m = 1, L = κ)."""

    method: str
    kappa: float
    learning_rate: float
    momentum: float
    theory_rate: float

    @classmethod
    def optimal(cls, method: str, kappa: float) -> Setting:
        low, high, root = 1.0, kappa, math.sqrt(kappa)
        if method == "gd":
            return cls(method, kappa, 2.0 / (high + low), 0.0, (kappa - 1) / (kappa + 1))
        if method == "heavy_ball":
            q = (root - 1.0) / (root + 1.0)
            alpha = 4.0 / (math.sqrt(high) + math.sqrt(low)) ** 2
            return cls(method, kappa, alpha, q**2, q)
        if method == "nesterov":
            mu = (root - 1.0) / (root + 1.0)
            return cls(method, kappa, 1.0 / high, mu, 1.0 - 1.0 / root)
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")

    def iteration_matrices(self, eigenvalues: np.ndarray) -> np.ndarray:
        """The 2x2 map of (x − x*, velocity) for each eigenvalue λ of A, shape ``(n, 2, 2)``.

        ``momentum_jax.momentum``: ``v⁺ = μv + αλe``, ``e⁺ = e − v⁺``.
        ``momentum_jax.nesterov``: ``v⁺ = μv + αλe``, ``e⁺ = e − (μv⁺ + αλe)``.
        """
        a, mu = self.learning_rate * eigenvalues, self.momentum
        nesterov = self.method == "nesterov"
        top_left = 1.0 - a * (1.0 + mu) if nesterov else 1.0 - a
        top_right = -(mu**2) if nesterov else -mu
        matrices = np.empty((eigenvalues.size, 2, 2))
        matrices[:, 0, 0] = top_left
        matrices[:, 0, 1] = top_right
        matrices[:, 1, 0] = a
        matrices[:, 1, 1] = mu
        return matrices

    def spectral_radius(self, eigenvalues: np.ndarray) -> float:
        """The exact asymptotic rate of the iteration on this spectrum."""
        return float(np.abs(np.linalg.eigvals(self.iteration_matrices(eigenvalues))).max())


@dataclasses.dataclass(frozen=True)
class Measurement:
    setting: Setting
    spectral_radius: float
    error: np.ndarray  # relative error per step, the start (1.0) first
    measured_rate: float  # fit of log(error)
    rate_over_t: float  # fit of log(error / t)
    fit_window: tuple[int, int] | None
    steps_to_tol: int | None
    predicted_steps: int


def fit_window(error: np.ndarray, fit_from: float, floor: float) -> tuple[int, int] | None:
    """Steps from the first with ``error <= fit_from`` to the last with ``error >= floor``."""
    start = _common.first_step_below(error, fit_from)
    if start is None:
        return None
    above = np.flatnonzero(error[start:] >= floor)
    if above.size < 3:
        return None
    return start, start + int(above[-1])


def fitted_rate(error: np.ndarray, window: tuple[int, int] | None, power: int = 0) -> float:
    """``exp`` of the least-squares slope of ``log(error_t / t**power)`` over the window.

    ``power=0`` measures a plain geometric decay ``ρᵗ``; ``power=1`` the decay
    ``t·ρᵗ`` of a mode whose iteration matrix has a repeated eigenvalue.
    """
    if window is None:
        return float("nan")
    steps = np.arange(window[0], window[1] + 1)
    values = np.log(error[steps]) - power * np.log(steps)
    return float(np.exp(np.polyfit(steps, values, 1)[0]))


def run_quadratic(
    kappa: float, *, dim: int, seed: int, tol: float, fit_from: float, floor: float
) -> list[Measurement]:
    """All three methods on one quadratic; call inside ``jax.enable_x64(True)``."""
    eigenvalues = np.linspace(1.0, kappa, dim)
    rng = np.random.default_rng(seed)
    minimizer = rng.standard_normal(dim)
    start = minimizer + rng.standard_normal(dim)
    lam, x_star = jnp.asarray(eigenvalues), jnp.asarray(minimizer)

    def loss(x: jax.Array) -> jax.Array:
        return 0.5 * jnp.sum(lam * (x - x_star) ** 2)

    def distance(x: jax.Array) -> jax.Array:
        return jnp.linalg.norm(x - x_star)

    # Enough steps for the slowest theoretical rate (GD) to pass the floor, with margin.
    slowest = Setting.optimal("gd", kappa).theory_rate
    num_steps = int(1.25 * math.log(floor) / math.log(slowest)) + 50
    results = []
    for method in METHODS:
        setting = Setting.optimal(method, kappa)
        variant = "heavy_ball" if method == "gd" else method
        optimizer = _common.build_optimizer(variant, setting.learning_rate, setting.momentum)
        distances, _ = _common.run_trajectory(
            loss, optimizer, jnp.asarray(start), num_steps, record=distance
        )
        error = np.asarray(distances, np.float64) / float(np.linalg.norm(start - minimizer))
        window = fit_window(error, fit_from, floor)
        results.append(
            Measurement(
                setting=setting,
                spectral_radius=setting.spectral_radius(eigenvalues),
                error=error,
                measured_rate=fitted_rate(error, window),
                rate_over_t=fitted_rate(error, window, power=1),
                fit_window=window,
                steps_to_tol=_common.first_step_below(error, tol, stay=True),
                predicted_steps=math.ceil(math.log(tol) / math.log(setting.theory_rate)),
            )
        )
    return results


def repeated_root(setting: Setting, eigenvalue: float) -> bool:
    """Whether the iteration matrix at ``eigenvalue`` has a (numerically) double eigenvalue."""
    if setting.momentum == 0.0:
        return False
    matrix = setting.iteration_matrices(np.asarray([eigenvalue]))[0]
    trace, det = np.trace(matrix), np.linalg.det(matrix)
    return bool(abs(trace**2 - 4.0 * det) <= 1e-9 * max(1.0, trace**2))


def conclusion(results: Sequence[Measurement], tol: float) -> list[str]:
    """Statements computed from the measurements."""
    lines = []
    for method in METHODS:
        rows = [r for r in results if r.setting.method == method and np.isfinite(r.measured_rate)]
        if not rows:
            continue
        # 1 − rate is the speed: the share of the error removed per step.
        shares = [(1 - r.measured_rate) / (1 - r.setting.theory_rate) for r in rows]
        text = (
            f"{NAMES[method]}: measured speed (1 − rate) is {100 * min(shares):.0f}–"
            f"{100 * max(shares):.0f}% of the theoretical speed over κ = "
            f"{', '.join(f'{r.setting.kappa:g}' for r in rows)}"
        )
        doubles = [r for r in rows if repeated_root(r.setting, 1.0)]
        if doubles:
            corrected = [(1 - r.rate_over_t) / (1 - r.setting.theory_rate) for r in doubles]
            text += (
                "; at the smallest eigenvalue its iteration matrix has a repeated eigenvalue "
                f"(κ = {', '.join(f'{r.setting.kappa:g}' for r in doubles)}), so that mode "
                "decays like t·ρᵗ: fitting log(error / t) instead gives "
                f"{100 * min(corrected):.0f}–{100 * max(corrected):.0f}% of the theoretical speed"
            )
        lines.append(text + ".")
    kappas = sorted({r.setting.kappa for r in results})
    if len(kappas) >= 2:
        for method in METHODS:
            pairs = [
                (r.setting.kappa, r.steps_to_tol)
                for r in results
                if r.setting.method == method and r.steps_to_tol
            ]
            if len(pairs) >= 2:
                k, s = np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs])
                exponent = np.polyfit(k, s, 1)[0]
                lines.append(
                    f"{NAMES[method]}: steps to error {tol:g} grow like κ^{exponent:.2f} "
                    f"(fit over κ = {', '.join(f'{p[0]:g}' for p in pairs)})."
                )
    largest = max(kappas)
    by_method = {r.setting.method: r for r in results if r.setting.kappa == largest}
    gd = by_method.get("gd")
    if gd is not None and gd.steps_to_tol:
        for method in ("heavy_ball", "nesterov"):
            other = by_method.get(method)
            if other is not None and other.steps_to_tol:
                lines.append(
                    f"At κ = {largest:g}, {NAMES[method]} reached error {tol:g} in "
                    f"{other.steps_to_tol} steps vs {gd.steps_to_tol} for GD "
                    f"({gd.steps_to_tol / other.steps_to_tol:.0f}x fewer)."
                )
    return lines


def plot_errors(results: Sequence[Measurement], tol: float, path: Path) -> Path:
    """Relative error vs step (log-log), measured (solid) and theoretical ρᵗ (dotted)."""
    plt = _common.get_pyplot()
    from matplotlib.lines import Line2D

    kappas = sorted({r.setting.kappa for r in results})
    cols = 2 if len(kappas) == 4 else min(len(kappas), 3)
    rows = math.ceil(len(kappas) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.4 * rows), squeeze=False)
    for ax, kappa in zip(axes.ravel(), kappas, strict=False):
        group = [r for r in results if r.setting.kappa == kappa]
        last = max((r.fit_window[1] if r.fit_window else len(r.error) - 1) for r in group)
        for r in group:
            steps = np.arange(1, min(len(r.error), int(1.3 * last) + 2))
            method = r.setting.method
            ax.plot(steps, r.error[steps], color=COLORS[method], lw=1.5)
            ax.plot(steps, r.setting.theory_rate**steps, ":", color=COLORS[method], lw=1.3)
        ax.axhline(tol, color="0.5", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(1e-12, 3.0)
        ax.set_title(f"κ = {kappa:g}")
        ax.set_xlabel("step")
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("‖x − x*‖ / ‖x₀ − x*‖")
    for ax in axes.ravel()[len(kappas) :]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=COLORS[m], lw=1.5, label=NAMES[m]) for m in METHODS]
    handles += [
        Line2D([], [], color="0.3", lw=1.5, label="measured error"),
        Line2D([], [], color="0.3", lw=1.3, ls=":", label="theory ρᵗ"),
        Line2D([], [], color="0.5", lw=0.8, ls="--", label=f"error {tol:g}"),
    ]
    fig.suptitle(
        "Optimal GD, heavy ball and Nesterov on quadratics with eigenvalues in [1, κ]",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.1 / rows, 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9, frameon=False)
    return _common.save_figure(fig, path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Compare measured and theoretical linear convergence rates of gradient descent, "
            "heavy ball and Nesterov (momentum_jax transforms with their optimal constants) "
            "on ill-conditioned quadratics. Prints a table and a computed conclusion and "
            "saves a log-scale plot of the error per step."
        ),
        formatter_class=_common.HelpFormatter,
    )
    parser.add_argument(
        "--kappas",
        type=float,
        nargs="+",
        default=None,
        help=f"condition numbers L/m (default {' '.join(f'{k:g}' for k in DEFAULT_KAPPAS)})",
    )
    parser.add_argument("--dim", type=int, default=100, help="dimension of the quadratic")
    parser.add_argument("--seed", type=int, default=0, help="seed of the start and minimizer")
    parser.add_argument(
        "--tol", type=float, default=1e-6, help="relative error for the 'steps to' column"
    )
    parser.add_argument(
        "--fit-from",
        type=float,
        default=1e-4,
        help="the rate is fitted from the first step with relative error below this ...",
    )
    parser.add_argument(
        "--floor",
        type=float,
        default=1e-10,
        help="... to the last step with relative error above this (clear of round-off)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"only κ = {', '.join(f'{k:g}' for k in QUICK_KAPPAS)} (unless --kappas is given)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args(argv)
    if args.kappas is None:
        args.kappas = list(QUICK_KAPPAS if args.quick else DEFAULT_KAPPAS)
    if any(k <= 1.0 for k in args.kappas):
        parser.error(f"every kappa must be above 1, got {args.kappas}")
    if args.dim < 2:
        parser.error(f"--dim must be at least 2, got {args.dim}")
    if not 0.0 < args.floor < args.fit_from < 1.0:
        parser.error("need 0 < --floor < --fit-from < 1")
    return args


def main(argv: Sequence[str] | None = None) -> list[Measurement]:
    """Run every method on every quadratic, print the table and conclusion, save the plot."""
    args = parse_args(argv)
    results: list[Measurement] = []
    # float64 for this script only: the context manager restores the previous setting.
    with jax.enable_x64(True):
        for kappa in args.kappas:
            results += run_quadratic(
                kappa,
                dim=args.dim,
                seed=args.seed,
                tol=args.tol,
                fit_from=args.fit_from,
                floor=args.floor,
            )
    headers = [
        "kappa",
        "method",
        "alpha",
        "mu",
        "theory rate",
        "spectral radius",
        "measured rate",
        f"steps to {args.tol:g}",
        "predicted (ρ^t)",
    ]
    rows = [
        [
            f"{r.setting.kappa:g}",
            NAMES[r.setting.method],
            f"{r.setting.learning_rate:.4g}",
            f"{r.setting.momentum:.4g}",
            f"{r.setting.theory_rate:.6f}",
            f"{r.spectral_radius:.6f}",
            f"{r.measured_rate:.6f}",
            "not reached" if r.steps_to_tol is None else r.steps_to_tol,
            r.predicted_steps,
        ]
        for r in results
    ]
    print(_common.format_table(headers, rows))
    print(
        f"\nrelative error ‖x_t − x*‖/‖x_0 − x*‖; measured rate: least-squares slope of "
        f"log(error) from error {args.fit_from:g} to {args.floor:g}; steps: first step from "
        f"which the error stays ≤ {args.tol:g}; predicted: ⌈log({args.tol:g}) / log(theory "
        "rate)⌉.\n\nConclusion:"
    )
    for line in conclusion(results, args.tol):
        print(f"- {line}")
    path = plot_errors(results, args.tol, args.out / "convergence_rates.png")
    print(f"\nwrote {path}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
