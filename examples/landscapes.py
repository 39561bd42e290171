"""Gradient descent, heavy ball and Nesterov on a local minimum, a plateau and a ravine.

Three small objectives, each run from a fixed start with one learning rate for
three ``momentum_jax`` transforms: gradient descent (``momentum(lr, 0)``),
heavy ball (``momentum(lr, mu)``) and Nesterov (``nesterov(lr, mu)``).

(a) ``(x² − 1)² − 0.3x``, a tilted double well: from x = −2 the first minimum met
    (x ≈ −0.96) is a shallow local one; the global one (x ≈ 1.04) lies past a barrier.
(b) ``1 − exp(−(x² + 3y²)/2)``, a well in a nearly flat plain: far out the gradient is tiny.
(c) Rosenbrock ``(1 − x)² + 100 (y − x²)²``, a curved ravine with its minimum at (1, 1).

Printed per (objective, method): the step from which the loss stays within
``--tol`` of the global minimum, the final loss and, for (a), whether the run
ended past the barrier. The runs are deterministic (one start each), so the
numbers are exact for these starts and say nothing about other starts.

Outputs (``examples/out/landscapes/``, ``..._quick/`` with ``--quick``):
``landscapes.csv``, ``landscapes.png`` (paths over the contours) and
``landscapes_loss.png`` (gap to the minimum per step).

Measured on 2 CPU cores shared with other jobs: 6.5–8.5 s wall and 6–6.5 s of
CPU time (user + sys).

    python examples/landscapes.py
    python examples/landscapes.py --momentum 0.8 --quick
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax

import momentum_jax

TILT = 0.3
# f'(x) = 4x³ − 4x − 0.3: its roots are the local minimum, the barrier and the global minimum.
LOCAL_X, BARRIER_X, GLOBAL_X = np.sort(np.roots([4.0, 0.0, -4.0, -TILT]).real)
METHODS = ("gd", "heavy_ball", "nesterov")
LABELS = {"gd": "gradient descent", "heavy_ball": "heavy ball", "nesterov": "Nesterov"}
COLORS = {"gd": "black", "heavy_ball": "tab:blue", "nesterov": "tab:orange"}
MARKERS = {"gd": "o", "heavy_ball": "^", "nesterov": "s"}
TITLES = {
    "local minimum": "(a) local minimum: (x²−1)² − 0.3x",
    "plateau": "(b) plateau: 1 − exp(−(x² + 3y²)/2)",
    "ravine": "(c) ravine: Rosenbrock",
}
CSV_HEADER = ["problem", "method", "momentum", "steps_to_tol", "final_loss", "final_gap", "escaped"]


def double_well(p: jax.Array) -> jax.Array:
    return (p[0] ** 2 - 1.0) ** 2 - TILT * p[0]


def plateau(p: jax.Array) -> jax.Array:
    return 1.0 - jnp.exp(-(p[0] ** 2 + 3.0 * p[1] ** 2) / 2.0)


def rosenbrock(p: jax.Array) -> jax.Array:
    return (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2


# name: (function, start, global minimizer, learning rate, steps, quick steps, plot limits)
PROBLEMS: dict[str, tuple[Any, ...]] = {
    "local minimum": (double_well, (-2.0,), (GLOBAL_X,), 0.01, 400, 200, ((-2.1, 1.8),)),
    "plateau": (plateau, (4.0, 1.2), (0.0, 0.0), 0.3, 3000, 1000, ((-1.5, 4.5), (-1.5, 1.6))),
    "ravine": (rosenbrock, (-1.2, 1.0), (1.0, 1.0), 0.001, 30000, 3000, ((-1.6, 1.6), (-0.4, 1.6))),
}


def run(fn: Any, optimizer: optax.GradientTransformation, start: Any, steps: int) -> Any:
    """Iterates and losses for steps 0..steps, in one compiled ``lax.scan``."""

    def step(carry: Any, _: None) -> Any:
        p, state = carry
        loss, grad = jax.value_and_grad(fn)(p)
        updates, state = optimizer.update(grad, state, p)
        return (optax.apply_updates(p, updates), state), (p, loss)

    @jax.jit
    def scan(p: jax.Array) -> Any:
        (last, _), (path, losses) = jax.lax.scan(step, (p, optimizer.init(p)), length=steps)
        return jnp.vstack([path, last[None]]), jnp.append(losses, fn(last))

    path, losses = scan(jnp.asarray(start, jnp.float32))
    return np.asarray(path, np.float64), np.asarray(losses, np.float64)


def stays_below(gap: np.ndarray, tol: float) -> float:
    """First step from which every later gap is <= tol (NaN if the last one is not)."""
    above = np.flatnonzero(~(gap <= tol))
    if above.size == 0:
        return 0.0
    return float(above[-1] + 1) if above[-1] + 1 < gap.size else np.nan


def steps_cell(result: dict[str, Any]) -> str:
    reached = result["steps_to_tol"]
    return f"{reached:g} steps" if np.isfinite(reached) else _common.NEVER


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = _common.parser(__doc__)
    parser.add_argument("--momentum", type=float, default=0.9, help="μ of heavy ball, Nesterov")
    parser.add_argument("--tol", type=float, default=1e-6, help="loss gap counted as arrived")
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    parser.add_argument("--out", type=Path, help=_common.out_help("landscapes"))
    args = parser.parse_args(argv)
    out = _common.out_dir("landscapes", args.quick, args.out)
    mu = args.momentum

    results = []
    print(f"momentum {mu:g}; steps until f − f* stays below {args.tol:g}")
    print(f"{'problem':<14} {'method':<17} {'steps':>6} {'final loss':>11}  escaped")
    for name, (fn, start, minimizer, lr, steps, quick_steps, _) in PROBLEMS.items():
        f_min = float(fn(jnp.asarray(minimizer, jnp.float32)))
        optimizers = {
            "gd": momentum_jax.momentum(lr, 0.0),
            "heavy_ball": momentum_jax.momentum(lr, mu),
            "nesterov": momentum_jax.nesterov(lr, mu),
        }
        for method, optimizer in optimizers.items():
            path, losses = run(fn, optimizer, start, quick_steps if args.quick else steps)
            gap = losses - f_min
            escaped = bool(path[-1, 0] > BARRIER_X) if name == "local minimum" else None
            r = {
                "problem": name,
                "method": method,
                "momentum": 0.0 if method == "gd" else mu,
                "steps_to_tol": stays_below(gap, args.tol),
                "final_loss": losses[-1],
                "final_gap": gap[-1],
                "escaped": escaped,
                "path": path,
                "gap": gap,
                "lr": lr,
            }
            results.append(r)
            reached = r["steps_to_tol"]
            steps_text = f"{reached:g}" if np.isfinite(reached) else _common.NEVER
            print(
                f"{name:<14} {LABELS[method]:<17} {steps_text:>6} "
                f"{losses[-1]:>11.4g}  {'' if escaped is None else escaped}"
            )

    print("\nverdicts (one deterministic run per method):")
    for name in PROBLEMS:
        rows = [r for r in results if r["problem"] == name]
        done = [r for r in rows if np.isfinite(r["steps_to_tol"])]
        best = min(done, key=lambda r: r["steps_to_tol"], default=None)
        text = "none arrived" if best is None else f"first to arrive: {LABELS[best['method']]}"
        text += " [" + ", ".join(f"{LABELS[r['method']]} {steps_cell(r)}" for r in rows) + "]"
        if name == "local minimum":
            escaped = [LABELS[r["method"]] for r in rows if r["escaped"]]
            text += f"; past the barrier: {', '.join(escaped) or 'none'}"
        print(f"  {name}: {text}")

    _common.write_csv(
        out / "landscapes.csv", CSV_HEADER, [[r[k] for k in CSV_HEADER] for r in results]
    )
    plot_paths(results, out / "landscapes.png")
    plot_gaps(results, args.tol, out / "landscapes_loss.png")
    print(f"\nwrote {out}/landscapes.csv, landscapes.png, landscapes_loss.png")
    return results


def plot_paths(results: list[dict[str, Any]], path: Path) -> None:
    plt = _common.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (name, (fn, start, minimizer, lr, *_, view)) in zip(
        axes, PROBLEMS.items(), strict=True
    ):
        runs = [r for r in results if r["problem"] == name]
        if len(start) == 1:
            xs = np.linspace(*view[0], 400)
            ax.plot(xs, (xs**2 - 1) ** 2 - TILT * xs, color="0.6")
            for r in runs:
                x = r["path"][::2, 0]
                ax.plot(
                    x,
                    (x**2 - 1) ** 2 - TILT * x,
                    MARKERS[r["method"]],
                    ms=5,
                    mfc="none",
                    color=COLORS[r["method"]],
                    label=LABELS[r["method"]],
                )
            ax.axvline(BARRIER_X, color="0.6", ls=":", lw=1, label="barrier")
            f_min = float(fn(jnp.asarray(minimizer)))
            ax.plot(minimizer[0], f_min, "*", ms=14, color="gold", mec="black", label="global min")
            ax.set(ylim=(-0.8, 4.0), xlabel="x", ylabel="f(x)")
        else:
            gx, gy = np.meshgrid(np.linspace(*view[0], 200), np.linspace(*view[1], 200))
            z = np.asarray(jax.vmap(fn)(jnp.stack([gx.ravel(), gy.ravel()], 1))).reshape(gx.shape)
            ax.contour(gx, gy, np.log1p(z), levels=20, colors="0.7", linewidths=0.6)
            for r in runs:
                gd = (
                    r["method"] == "gd"
                )  # drawn on top, with a dot every 5% of the run: it moves least
                ax.plot(
                    *r["path"].T,
                    "--" if gd else "-",
                    lw=1.2,
                    color=COLORS[r["method"]],
                    label=LABELS[r["method"]],
                    zorder=3 if gd else 2,
                )
                if gd:
                    dots = r["path"][:: max(1, len(r["path"]) // 20)]
                    ax.plot(*dots.T, ".", color="black", ms=5, zorder=3)
            ax.plot(*start, "ko", mfc="none", ms=8, label="start")
            ax.plot(*minimizer, "*", ms=14, color="gold", mec="black", label="global min")
            ax.set(xlim=view[0], ylim=view[1], xlabel="x", ylabel="y")
        ax.set_title(f"{TITLES[name]}\nlearning rate {lr:g}", fontsize=10)
        ax.legend(fontsize=7.5, loc="upper right" if len(start) == 1 else "lower left")
    _common.save(fig, path)


def plot_gaps(results: list[dict[str, Any]], tol: float, path: Path) -> None:
    plt = _common.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    for ax, name in zip(axes, PROBLEMS, strict=True):
        for r in (r for r in results if r["problem"] == name):
            ax.plot(
                np.maximum(r["gap"], 1e-12), color=COLORS[r["method"]], label=LABELS[r["method"]]
            )
        ax.axhline(tol, color="gray", ls=":", lw=1, label=f"tolerance {tol:g}")
        ax.set(yscale="log", ylim=(1e-10, None), xlabel="step", ylabel="f − f*", title=TITLES[name])
        ax.legend(fontsize=8)
    fig.tight_layout()
    _common.save(fig, path)


if __name__ == "__main__":
    main()
