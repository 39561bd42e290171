"""Gradient descent, heavy ball and Nesterov on a local minimum, a plateau and a ravine.

Three small objectives, each run with the same learning rate for three
methods, all built from ``momentum_jax`` (``build_optimizer`` in ``_common``):

* gradient descent: ``momentum_jax.momentum(lr, momentum=0)``,
* heavy ball: ``momentum_jax.momentum(lr, momentum=mu)``,
* Nesterov: ``momentum_jax.nesterov(lr, momentum=mu)``.

The objectives:

(a) local minimum (1-D): ``f(x) = (x^2 - 1)^2 - 0.3 x``, a tilted double well. Starting
    at ``x = -2``, the first minimum met (``x ~ -0.96``) is a shallow local one; the
    global minimum is past a barrier at ``x ~ 1.04``.
(b) plateau (2-D): ``f(x, y) = 1 - exp(-(x^2 + 3 y^2) / 2)``, a well in a nearly flat
    plain. Far from the well the gradient is tiny, so the iterate crawls.
(c) narrow ravine (2-D): the Rosenbrock function ``(1 - x)^2 + 100 (y - x^2)^2``, a
    curved valley with steep walls and a flat floor, minimum at ``(1, 1)``.

For each (objective, method) the script prints the number of steps after which
the loss stays within ``--tol`` of the global minimum value, whether the run
escaped the local minimum (objective (a)), the final loss, and a summary
computed from those numbers. It writes ``landscapes.png`` (trajectories over
the contours; for (a), the curve with the iterates) and ``landscapes_loss.png``
(loss gap to the global minimum per step) into ``--out``.

Usage::

    python examples/landscapes.py
    python examples/landscapes.py --momentum 0.8 --out /tmp/landscapes
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import _common
import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "landscapes"
COLORS = {"gd": "black", "heavy_ball": "tab:blue", "nesterov": "tab:orange"}
MARKERS = {"gd": "o", "heavy_ball": "^", "nesterov": "s"}
SIZES = {"gd": 7, "heavy_ball": 5, "nesterov": 4}
LINESTYLES = {"gd": "--", "heavy_ball": "-", "nesterov": "-"}
ZORDER = {"gd": 4, "heavy_ball": 3, "nesterov": 3.5}  # gradient descent on top: it moves least

# The tilted double well: f'(x) = 4 x^3 - 4 x - 0.3 has three real roots, the
# two minima and the barrier between them.
TILT = 0.3
_WELL_ROOTS = np.sort(np.roots([4.0, 0.0, -4.0, -TILT]).real)
LOCAL_MIN_X, BARRIER_X, GLOBAL_MIN_X = (float(r) for r in _WELL_ROOTS)


def double_well(p: jax.Array) -> jax.Array:
    x = p[0]
    return (x**2 - 1.0) ** 2 - TILT * x


def plateau(p: jax.Array) -> jax.Array:
    x, y = p[0], p[1]
    return 1.0 - jnp.exp(-(x**2 + 3.0 * y**2) / 2.0)


def rosenbrock(p: jax.Array) -> jax.Array:
    x, y = p[0], p[1]
    return (1.0 - x) ** 2 + 100.0 * (y - x**2) ** 2


@dataclasses.dataclass(frozen=True)
class Problem:
    """An objective with its start, global minimizer and the run settings."""

    key: str
    title: str
    fn: Callable[[jax.Array], jax.Array]
    start: tuple[float, ...]
    minimizer: tuple[float, ...]
    learning_rate: float
    steps: int
    quick_steps: int
    view: tuple[tuple[float, float], ...]  # plot limits per coordinate
    local_minimizer: tuple[float, ...] | None = None

    @property
    def min_value(self) -> float:
        return float(self.fn(jnp.asarray(self.minimizer, jnp.float32)))


PROBLEMS = (
    Problem(
        key="local_minimum",
        title="(a) local minimum: (x²−1)² − 0.3x",
        fn=double_well,
        start=(-2.0,),
        minimizer=(GLOBAL_MIN_X,),
        local_minimizer=(LOCAL_MIN_X,),
        learning_rate=0.01,
        steps=400,
        quick_steps=200,
        view=((-2.1, 1.8),),
    ),
    Problem(
        key="plateau",
        title="(b) plateau: 1 − exp(−(x² + 3y²)/2)",
        fn=plateau,
        start=(4.0, 1.2),
        minimizer=(0.0, 0.0),
        learning_rate=0.3,
        steps=3000,
        quick_steps=1000,
        view=((-1.5, 4.5), (-1.5, 1.6)),
    ),
    Problem(
        key="ravine",
        title="(c) narrow ravine: Rosenbrock",
        fn=rosenbrock,
        start=(-1.2, 1.0),
        minimizer=(1.0, 1.0),
        learning_rate=0.001,
        steps=30000,
        quick_steps=3000,
        view=((-1.6, 1.6), (-0.4, 1.6)),
    ),
)


@dataclasses.dataclass(frozen=True)
class Run:
    """One method on one problem."""

    problem: Problem
    method: str  # "gd", "heavy_ball" or "nesterov"
    momentum: float
    path: np.ndarray  # (steps + 1, dim) iterates, the start first
    gap: np.ndarray  # (steps + 1,) loss minus the global minimum value
    tol: float

    @property
    def steps_to_tol(self) -> int | None:
        """First step from which the loss stays within ``tol`` of the global minimum."""
        return _common.first_step_below(self.gap, self.tol, stay=True)

    @property
    def final_loss(self) -> float:
        return float(self.gap[-1] + self.problem.min_value)

    @property
    def escaped(self) -> bool | None:
        """Whether the final iterate is past the barrier (only for the double well)."""
        if self.problem.local_minimizer is None:
            return None
        return bool(self.path[-1, 0] > BARRIER_X)

    @property
    def label(self) -> str:
        if self.method == "gd":
            return _common.LABELS["gd"]
        return f"{_common.LABELS[self.method]} (μ={self.momentum:g})"


def run_all(momentum: float, tol: float, quick: bool) -> list[Run]:
    """Every method on every problem; each run is one compiled ``lax.scan``."""
    runs = []
    for problem in PROBLEMS:
        steps = problem.quick_steps if quick else problem.steps
        for method, mu in (("gd", 0.0), ("heavy_ball", momentum), ("nesterov", momentum)):
            variant = "heavy_ball" if method == "gd" else method
            optimizer = _common.build_optimizer(variant, problem.learning_rate, mu)
            path, losses = _common.run_trajectory(
                problem.fn, optimizer, jnp.asarray(problem.start, jnp.float32), steps
            )
            gap = np.asarray(losses, np.float64) - problem.min_value
            runs.append(Run(problem, method, mu, np.asarray(path, np.float64), gap, tol))
    return runs


def summary_lines(runs: Sequence[Run]) -> list[str]:
    """Statements about each problem, computed from the runs."""
    lines = []
    for problem in PROBLEMS:
        group = [r for r in runs if r.problem is problem]
        reached = [r for r in group if r.steps_to_tol is not None]
        gd = next(r for r in group if r.method == "gd")
        name = problem.title.split(":")[0]
        if reached:
            best = min(reached, key=lambda r: r.steps_to_tol or 0)
            text = f"{name}: fastest to the tolerance: {best.label}, {best.steps_to_tol} steps"
            gd_steps = gd.steps_to_tol
            if best is not gd and gd_steps is not None and best.steps_to_tol:
                text += f" ({gd_steps / best.steps_to_tol:.1f}x fewer than gradient descent)"
            elif gd_steps is None:
                text += (
                    f"; gradient descent did not get there in {len(gd.gap) - 1} steps "
                    f"(final loss gap {gd.gap[-1]:.4g})"
                )
            lines.append(text + ".")
        else:
            lines.append(f"{name}: no method reached the tolerance in the steps given.")
        if problem.local_minimizer is not None:
            stuck = [r.label for r in group if not r.escaped]
            free = [r.label for r in group if r.escaped]
            lines.append(
                f"{name}: escaped the local minimum at x={problem.local_minimizer[0]:.2f}: "
                f"{', '.join(free) or 'none'}; stayed there: {', '.join(stuck) or 'none'}."
            )
    return lines


def _plot_point(problem: Problem, point: tuple[float, ...]) -> tuple[float, float]:
    """Where a point goes in its panel: ``(x, f(x))`` in 1-D, ``(x, y)`` in 2-D."""
    if len(point) == 1:
        return point[0], float(problem.fn(jnp.asarray(point, jnp.float32)))
    return point[0], point[1]


def plot_trajectories(runs: Sequence[Run], path: Path) -> Path:
    """One panel per problem: the 1-D curve with iterates, or contours with trajectories."""
    plt = _common.get_pyplot()
    from matplotlib.colors import LogNorm

    fig, axes = plt.subplots(1, len(PROBLEMS), figsize=(5.2 * len(PROBLEMS), 4.4))
    for ax, problem in zip(axes, PROBLEMS, strict=True):
        group = [r for r in runs if r.problem is problem]
        if len(problem.start) == 1:
            xs = np.linspace(*problem.view[0], 400)
            ys = np.asarray(jax.vmap(problem.fn)(jnp.asarray(xs[:, None], jnp.float32)))
            ax.plot(xs, ys, color="black", lw=1.2, label="f(x)")
            for run in group:
                ax.plot(
                    run.path[:, 0],
                    run.gap + problem.min_value,
                    MARKERS[run.method],
                    ms=SIZES[run.method],
                    mfc="none",
                    mew=1.0,
                    alpha=0.8,
                    color=COLORS[run.method],
                    label=run.label,
                    zorder=ZORDER[run.method],
                )
            ax.set_xlim(*problem.view[0])
            ax.set_ylim(-0.8, 4.0)
            ax.axvline(BARRIER_X, color="0.6", lw=0.8, ls=":")
            ax.annotate(" barrier", (BARRIER_X, 3.9), fontsize=8, va="top", ha="left", color="0.4")
            ax.set_xlabel("x")
            ax.set_ylabel("f(x)")
        else:
            (x0, x1), (y0, y1) = problem.view
            gx, gy = np.meshgrid(np.linspace(x0, x1, 300), np.linspace(y0, y1, 300))
            grid = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], axis=1), jnp.float32)
            z = np.asarray(jax.vmap(problem.fn)(grid)).reshape(gx.shape) - problem.min_value
            # Log-spaced levels resolve the valley floor; the filled map shows where
            # the surface is flat (one colour over a wide area).
            floor = 1e-3
            z = np.maximum(z, floor)
            levels = np.geomspace(floor, float(z.max()), 16)
            filled = ax.contourf(
                gx, gy, z, levels=levels, norm=LogNorm(), cmap="Blues_r", alpha=0.45
            )
            ax.contour(gx, gy, z, levels=levels, colors="0.45", linewidths=0.5)
            decades = 10.0 ** np.arange(np.log10(floor), np.log10(float(z.max())) + 1e-9)
            fig.colorbar(filled, ax=ax, shrink=0.8, label="f − f*", ticks=decades, format="%.0e")
            for run in group:
                every = max(1, len(run.path) // 60)
                style = LINESTYLES[run.method]
                ax.plot(
                    run.path[:, 0],
                    run.path[:, 1],
                    style,
                    lw=1.6,
                    color=COLORS[run.method],
                    label=run.label,
                    zorder=ZORDER[run.method],
                )
                ax.plot(
                    run.path[::every, 0],
                    run.path[::every, 1],
                    MARKERS[run.method],
                    ms=3,
                    color=COLORS[run.method],
                    zorder=ZORDER[run.method],
                )
            ax.set_xlim(x0, x1)
            ax.set_ylim(y0, y1)
            ax.set_xlabel("x")
            ax.set_ylabel("y")
        start, minimum = (
            _plot_point(problem, problem.start),
            _plot_point(problem, problem.minimizer),
        )
        ax.plot(*start, "o", ms=8, mfc="none", mec="black", mew=1.5, label="start")
        ax.plot(*minimum, "*", ms=13, color="gold", mec="black", label="global min")
        ax.set_title(f"{problem.title}\nlearning rate {problem.learning_rate:g}", fontsize=10)
        ax.legend(fontsize=7.5, loc="upper right" if len(problem.start) == 1 else "lower left")
    fig.tight_layout()
    return _common.save_figure(fig, path)


def plot_loss(runs: Sequence[Run], tol: float, path: Path) -> Path:
    """Loss gap to the global minimum per step, log scale, one panel per problem."""
    plt = _common.get_pyplot()
    fig, axes = plt.subplots(1, len(PROBLEMS), figsize=(5.2 * len(PROBLEMS), 3.6))
    for ax, problem in zip(axes, PROBLEMS, strict=True):
        for run in (r for r in runs if r.problem is problem):
            steps = np.arange(len(run.gap))
            ax.plot(steps, np.maximum(run.gap, 1e-12), color=COLORS[run.method], label=run.label)
            if run.steps_to_tol is not None:
                ax.plot(run.steps_to_tol, tol, "|", ms=12, mew=2, color=COLORS[run.method])
        ax.axhline(tol, color="0.4", ls=":", lw=0.8, label=f"tolerance {tol:g}")
        ax.set_yscale("log")
        ax.set_ylim(1e-10, None)
        ax.set_xlabel("step")
        ax.set_ylabel("f − f*")
        ax.set_title(problem.title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7.5)
    fig.tight_layout()
    return _common.save_figure(fig, path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Compare gradient descent, heavy-ball momentum and Nesterov momentum (all from "
            "momentum_jax, same learning rate) on a 1-D tilted double well (a shallow local "
            "minimum before the global one), a 2-D plateau and a 2-D narrow ravine "
            "(Rosenbrock). Prints steps to reach the tolerance, escapes from the local "
            "minimum and final losses; plots trajectories over the contours."
        ),
        formatter_class=_common.HelpFormatter,
    )
    parser.add_argument(
        "--momentum", type=float, default=0.9, help="momentum μ of heavy ball and Nesterov"
    )
    parser.add_argument(
        "--tol",
        type=float,
        default=1e-6,
        help="a run has converged from the step on which f − f* stays at or below this",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer steps per problem (gradient descent may then not reach the tolerance)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Run]:
    """Run every method on every problem, print the table and summary, write the figures."""
    args = parse_args(argv)
    runs = run_all(args.momentum, args.tol, args.quick)
    headers = [
        "problem",
        "method",
        "steps",
        f"steps to f−f* ≤ {args.tol:g}",
        "escaped",
        "final loss",
    ]
    rows = []
    for run in runs:
        escaped = {None: "n/a", True: "yes", False: "no"}[run.escaped]
        reached = run.steps_to_tol
        rows.append(
            [
                run.problem.key,
                run.label,
                len(run.gap) - 1,
                "not reached" if reached is None else reached,
                escaped,
                f"{run.final_loss:.6g}",
            ]
        )
    print(_common.format_table(headers, rows))
    print(
        "\n'escaped': whether the final iterate is past the barrier at "
        f"x={BARRIER_X:.3f} of the double well; global minimum values f*: "
        + ", ".join(f"{p.key} {p.min_value:.6g}" for p in PROBLEMS)
        + "\n\nSummary:"
    )
    for line in summary_lines(runs):
        print(f"- {line}")
    written = [
        plot_trajectories(runs, args.out / "landscapes.png"),
        plot_loss(runs, args.tol, args.out / "landscapes_loss.png"),
    ]
    print("\nwrote " + ", ".join(str(p) for p in written))
    return runs


if __name__ == "__main__":
    main(sys.argv[1:])
