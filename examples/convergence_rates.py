"""Linear convergence rates on ill-conditioned quadratics: theory against measurement.

For each condition number κ the objective is ``½ (x − x*)ᵀ A (x − x*)`` with ``A``
diagonal, eigenvalues spread evenly over [m, L] = [1, κ] (the methods are
rotation invariant, so diagonal loses nothing), a random minimizer and start.
Each method uses its textbook optimal constants (docs: references, theory anchors):

    gradient descent  momentum(α, 0)   α = 2/(L + m)         rate (κ − 1)/(κ + 1)
    heavy ball        momentum(α, μ)   α = 4/(√L + √m)²      rate (√κ − 1)/(√κ + 1)
                                       μ = ((√κ − 1)/(√κ + 1))²
    Nesterov          nesterov(α, μ)   α = 1/L               rate about 1 − 1/√κ
                                       μ = (√κ − 1)/(√κ + 1)

The measured rate is exp of the least-squares slope of log‖x_t − x*‖ over the
steps where the relative error falls from ``--fit-from`` to ``--floor``. Also
printed: the exact asymptotic rate of each iteration on this spectrum (the
largest eigenvalue modulus of its 2x2 iteration matrices) and the steps until the
relative error stays below ``--tol``, measured and predicted from the theory rate.
At the optimal constants the heavy ball and Nesterov maps have a double eigenvalue
at λ = m, so that mode decays like t·ρᵗ and a finite fit reads a few percent
slower than ρ. Runs in float64.

Outputs (``examples/out/convergence_rates/``, ``..._quick/`` with ``--quick``):
``convergence_rates.csv`` and ``convergence_rates.png``.

Measured on 2 CPU cores shared with other jobs: 9 s wall and 7 s of CPU time
(user + sys).

    python examples/convergence_rates.py
    python examples/convergence_rates.py --quick --dim 30
"""

from __future__ import annotations

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

KAPPAS, QUICK_KAPPAS = (10.0, 100.0, 1000.0, 10000.0), (10.0, 100.0)
METHODS = ("gd", "heavy_ball", "nesterov")
LABELS = {"gd": "gradient descent", "heavy_ball": "heavy ball", "nesterov": "Nesterov"}
COLORS = {"gd": "black", "heavy_ball": "tab:blue", "nesterov": "tab:orange"}
CSV_HEADER = [
    "kappa",
    "method",
    "learning_rate",
    "momentum",
    "theory_rate",
    "exact_rate",
    "measured_rate",
    "steps_to_tol",
    "predicted_steps",
]


def optimal(method: str, kappa: float) -> tuple[float, float, float]:
    """(learning rate, momentum, theoretical rate) for m = 1, L = κ."""
    q = (math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1)
    if method == "gd":
        return 2 / (kappa + 1), 0.0, (kappa - 1) / (kappa + 1)
    if method == "heavy_ball":
        return 4 / (math.sqrt(kappa) + 1) ** 2, q**2, q
    return 1 / kappa, q, 1 - 1 / math.sqrt(kappa)


def exact_rate(method: str, lr: float, mu: float, eigenvalues: np.ndarray) -> float:
    """Largest |eigenvalue| of the map (e, v) -> (e⁺, v⁺) over the spectrum, e = x − x*.

    momentum: v⁺ = μv + αλe, e⁺ = e − v⁺; nesterov: e⁺ = e − μv⁺ − αλe.
    """
    a = lr * eigenvalues
    nesterov = method == "nesterov"
    m = np.empty((a.size, 2, 2))
    m[:, 0, 0] = 1 - a * (1 + mu) if nesterov else 1 - a
    m[:, 0, 1] = -(mu**2) if nesterov else -mu
    m[:, 1, 0], m[:, 1, 1] = a, mu
    return float(np.abs(np.linalg.eigvals(m)).max())


def errors(
    optimizer: optax.GradientTransformation, lam: Any, x_star: Any, x0: Any, steps: int
) -> np.ndarray:
    """Relative error ‖x_t − x*‖ / ‖x_0 − x*‖ for t = 0..steps, one compiled ``lax.scan``."""

    def step(carry: Any, _: None) -> Any:
        x, state = carry
        updates, state = optimizer.update(lam * (x - x_star), state, x)
        x = optax.apply_updates(x, updates)
        return (x, state), jnp.linalg.norm(x - x_star)

    scan = jax.jit(lambda x: jax.lax.scan(step, (x, optimizer.init(x)), length=steps)[1])
    dist = np.concatenate([[np.linalg.norm(x0 - x_star)], np.asarray(scan(x0))])
    return dist / dist[0]


def fitted_rate(error: np.ndarray, fit_from: float, floor: float) -> float:
    window = np.flatnonzero((error <= fit_from) & (error >= floor))
    if window.size < 3:
        return float("nan")
    return float(np.exp(np.polyfit(window, np.log(error[window]), 1)[0]))


def stays_below(error: np.ndarray, tol: float) -> float:
    above = np.flatnonzero(~(error <= tol))
    last = above[-1] + 1 if above.size else 0
    return float(last) if last < error.size else np.nan


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = _common.parser(__doc__)
    parser.add_argument(
        "--kappas",
        type=float,
        nargs="+",
        help=f"condition numbers, each > 1 (default: {' '.join(f'{k:g}' for k in KAPPAS)}; "
        f"{' '.join(f'{k:g}' for k in QUICK_KAPPAS)} with --quick)",
    )
    parser.add_argument(
        "--dim", type=_common.positive, default=100, help="dimension of the quadratic"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the start and minimizer")
    parser.add_argument("--tol", type=float, default=1e-6, help="error for 'steps to tol'")
    parser.add_argument("--fit-from", type=float, default=1e-4, help="start of the fit window")
    parser.add_argument("--floor", type=float, default=1e-10, help="end of the fit window")
    parser.add_argument("--quick", action="store_true", help="κ = 10 and 100 only")
    parser.add_argument("--out", type=Path, help=_common.out_help("convergence_rates"))
    args = parser.parse_args(argv)
    kappas = args.kappas or (QUICK_KAPPAS if args.quick else KAPPAS)
    if min(kappas) <= 1:
        parser.error(f"every κ must be > 1, got {min(kappas):g}")
    if not 0 < args.floor < args.fit_from:
        parser.error(f"need 0 < --floor < --fit-from, got {args.floor:g} and {args.fit_from:g}")
    out = _common.out_dir("convergence_rates", args.quick, args.out)

    rng = np.random.default_rng(args.seed)
    x_star = rng.standard_normal(args.dim)
    x0 = x_star + rng.standard_normal(args.dim)
    results = []
    print(
        f"{'κ':>6} {'method':<17} {'theory':>8} {'exact':>8} {'measured':>8} "
        f"{'steps to tol':>12} {'predicted':>9}"
    )
    with _common.float64():
        for kappa in kappas:
            lam = np.linspace(1.0, kappa, args.dim)
            # Enough steps for gradient descent, the slowest, to pass the floor.
            steps = int(1.25 * math.log(args.floor) / math.log(optimal("gd", kappa)[2])) + 50
            for method in METHODS:
                lr, mu, theory = optimal(method, kappa)
                make = momentum_jax.nesterov if method == "nesterov" else momentum_jax.momentum
                error = errors(
                    make(lr, mu), jnp.asarray(lam), jnp.asarray(x_star), jnp.asarray(x0), steps
                )
                r = {
                    "kappa": kappa,
                    "method": method,
                    "learning_rate": lr,
                    "momentum": mu,
                    "theory_rate": theory,
                    "exact_rate": exact_rate(method, lr, mu, lam),
                    "measured_rate": fitted_rate(error, args.fit_from, args.floor),
                    "steps_to_tol": stays_below(error, args.tol),
                    "predicted_steps": math.ceil(math.log(args.tol) / math.log(theory)),
                    "error": error,
                }
                results.append(r)
                reached = r["steps_to_tol"]
                steps_text = f"{reached:g}" if np.isfinite(reached) else _common.NEVER
                measured = r["measured_rate"]
                rate_text = f"{measured:.5f}" if np.isfinite(measured) else "too few"
                print(
                    f"{kappa:>6g} {LABELS[method]:<17} {theory:>8.5f} {r['exact_rate']:>8.5f} "
                    f"{rate_text:>8} {steps_text:>12} {r['predicted_steps']:>9d}"
                )

    print("\nverdicts (speed = 1 − rate, the share of the error removed per step):")
    for method in METHODS:
        rows = [r for r in results if r["method"] == method]
        share = np.array([(1 - r["measured_rate"]) / (1 - r["theory_rate"]) for r in rows])
        fitted = share[np.isfinite(share)]  # NaN: too few steps in the fit window
        line = f"  {LABELS[method]}: measured speed " + (
            f"{fitted.min():.2f}–{fitted.max():.2f}x theory" if fitted.size else "not fitted"
        )
        if fitted.size < share.size:
            line += f" ({share.size - fitted.size}/{share.size} κ with too few steps to fit)"
        reached = [r for r in rows if np.isfinite(r["steps_to_tol"])]
        if len(reached) >= 2:
            slope = np.polyfit(
                np.log([r["kappa"] for r in reached]),
                np.log([r["steps_to_tol"] for r in reached]),
                1,
            )[0]
            line += f"; steps to {args.tol:g} grow like κ^{slope:.2f} (theory: κ^" + (
                "1)" if method == "gd" else "0.5)"
            )
        print(line)

    _common.write_csv(
        out / "convergence_rates.csv", CSV_HEADER, [[r[k] for k in CSV_HEADER] for r in results]
    )
    plot(results, kappas, args.tol, out / "convergence_rates.png")
    print(f"\nwrote {out}/convergence_rates.csv and convergence_rates.png")
    return results


def plot(results: list[dict[str, Any]], kappas: Sequence[float], tol: float, path: Path) -> None:
    plt = _common.pyplot()
    cols = min(len(kappas), 2)
    rows = math.ceil(len(kappas) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.6 * rows), squeeze=False)
    for ax, kappa in zip(axes.flat, kappas, strict=False):
        for r in (r for r in results if r["kappa"] == kappa):
            t = np.arange(r["error"].size)
            color = COLORS[r["method"]]
            ax.plot(t, r["error"], color=color, label=LABELS[r["method"]])
            ax.plot(t, r["theory_rate"] ** t, ":", color=color, lw=1.5)
        ax.axhline(tol, color="gray", lw=0.8)
        ax.text(1, tol, f" tolerance {tol:g}", color="gray", fontsize=8, va="bottom")
        ax.set(
            yscale="log",
            ylim=(1e-12, 3),
            xscale="log",
            xlim=(1, None),
            xlabel="step",
            ylabel="‖x − x*‖ / ‖x₀ − x*‖",
            title=f"κ = {kappa:g} (dotted: theory rateᵗ)",
        )
        ax.legend(fontsize=8, loc="lower left")
    for ax in list(axes.flat)[len(kappas) :]:
        ax.remove()
    fig.tight_layout()
    _common.save(fig, path)


if __name__ == "__main__":
    main()
