"""Momentum variants side by side: an ill-conditioned quadratic and a digits classifier.

Seven methods, all ``momentum_jax`` transforms, run on two problems:

==========================  ==================================================================
method                      transform
==========================  ==================================================================
gradient descent / SGD      ``momentum(α, momentum=0)`` — the baseline
momentum                    ``momentum(α, momentum=0.9)`` (heavy ball)
Nesterov                    ``nesterov(α, momentum=0.9)``
QHM                         ``qhm(α / (1 − 0.9), momentum=0.999, nu=0.7)``
AggMo                       ``aggmo(α · 10 / 37, momenta=(0, 0.9, 0.99))``
Nesterov + Sutskever        ``nesterov(α, momentum=schedules.sutskever(cap, steps_per_stage))``
momentum + Demon            ``momentum(α, momentum=schedules.demon(0.9, total_steps))``
==========================  ==================================================================

Every method starts from the same base learning rate α, converted where
``docs/variants.md`` says the variant's learning rate lives on another scale.
With the learning rate inside the velocity, a gradient that keeps pointing the
same way moves momentum 0.9 by α / (1 − 0.9) = 10α per step. QHM's buffer is an
average, so it gets α_QHM = 10α; AggMo's long-run step is
(α_AggMo / 3)·(1 + 10 + 100) = 37·α_AggMo, so it gets α_AggMo = 10α / 37. The
schedules keep α. Gradient descent keeps α as well (a tenth of the others'
long-run step), as in ``momentum_sweep.py``. QHM and AggMo use the settings
their papers recommend; the Sutskever schedule starts at momentum 0.5 and its
stage length is chosen so that it reaches its cap half way through the run;
Demon decays from 0.9 to 0 over the whole run.

(1) Quadratic: ``f(x) = ½ (x − x*)ᵀ A (x − x*)`` in ``--quad-dim`` dimensions,
with ``A = Q diag(λ) Qᵀ`` for a random rotation ``Q`` and eigenvalues λ spaced
geometrically over ``[1/κ, 1]`` (condition number κ = ``--kappa``); a random
minimizer and start, fixed by ``--quad-seed``. Full gradients, float64, one
run per method. Reported: the step from which the relative error
``‖x_t − x*‖ / ‖x_0 − x*‖`` stays below ``--quad-target``, and the final error.

(2) Digits: a ReLU MLP classifier on scikit-learn's bundled 8x8 digits,
minibatch SGD, several seeds (a seed fixes the initial weights and the
minibatch order, shared by all methods). Every (method, seed) model trains
in one compiled program: ``jax.vmap`` over seeds, ``lax.scan`` over steps, the
methods side by side. Reported:
steps to a target training loss (measured every ``--eval-every`` steps on the
whole training set), final training loss and test accuracy, mean ± std over
seeds.

A run is flagged as diverged, not dropped: on the quadratic when the error
became NaN/inf or rose above ten times its initial value; on digits by the
rule of ``momentum_sweep.py`` (NaN/inf, a loss above ten times the initial
loss, or a final loss above half the initial one after having been three times
lower). Outputs in ``--out``: ``variants.csv`` (one row per problem and
method) and ``variants.png`` (error and training loss per step); a conclusion
computed from the numbers is printed at the end.

Usage::

    python examples/variants.py
    python examples/variants.py --quick
    python examples/variants.py --digits-lr 0.05 --seeds 8 --out /tmp/variants
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common
import _data
import jax
import jax.numpy as jnp
import numpy as np
import optax
from momentum_sweep import diverged_runs, steps_to_target

import momentum_jax
from momentum_jax import schedules

DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "variants"
MOMENTUM = 0.9  # momentum, Nesterov, and the reference for the learning-rate conversions
QHM_MOMENTUM, QHM_NU = 0.999, 0.7
AGGMO_MOMENTA = (0.0, 0.9, 0.99)
DEMON_INIT = 0.9
QUAD_CAP, DIGITS_CAP = 0.99, 0.95  # the Sutskever schedule's max_momentum per problem
CAP_AT = 0.5  # the Sutskever schedule reaches its cap at this share of the run
QUAD_EXPLOSION = 10.0  # quadratic: relative error above this counts as diverged
FULL = {"steps": 2000, "seeds": 5}
QUICK = {"steps": 600, "seeds": 2}
PROBLEMS = ("quadratic", "digits")

METHODS = ("gd", "momentum", "nesterov", "qhm", "aggmo", "sutskever", "demon")
LABELS = {
    "gd": "gradient descent",
    "momentum": "momentum",
    "nesterov": "Nesterov",
    "qhm": "QHM",
    "aggmo": "AggMo",
    "sutskever": "Nesterov + Sutskever",
    "demon": "momentum + Demon",
}
COLORS = {
    "gd": "black",
    "momentum": "tab:blue",
    "nesterov": "tab:orange",
    "qhm": "tab:green",
    "aggmo": "tab:purple",
    "sutskever": "tab:red",
    "demon": "tab:brown",
}


# ---------------------------------------------------------------------------
# The methods, with their learning rates converted from the base rate
# ---------------------------------------------------------------------------


def aggmo_lr_factor(momenta: Sequence[float] = AGGMO_MOMENTA, momentum: float = MOMENTUM) -> float:
    """α_AggMo / α such that AggMo's long-run step equals momentum's ``α / (1 − μ)``."""
    aggmo_gain = sum(1.0 / (1.0 - b) for b in momenta) / len(momenta)
    return (1.0 / (1.0 - momentum)) / aggmo_gain


def stages_to_cap(cap: float) -> int:
    """The first stage ``k`` of ``schedules.sutskever`` (momentum ``1 − 1/(2k + 2)``) at ``cap``."""
    # A small tolerance: 0.5 / (1 - 0.99) is 50.000000000000004 in floating point.
    return max(0, math.ceil(0.5 / (1.0 - cap) - 1.0 - 1e-9))


def sutskever_stage_length(cap: float, num_steps: int, share: float = CAP_AT) -> int:
    """``steps_per_stage`` such that the schedule reaches ``cap`` at ``share`` of the run."""
    return max(1, int(share * num_steps) // max(1, stages_to_cap(cap)))


def schedule_note(cap: float, num_steps: int) -> str:
    """A sentence on how the two schedules move the momentum during a run of ``num_steps``."""
    stage = sutskever_stage_length(cap, num_steps)
    return (
        f"Sutskever: μ = 0.5 at step 0, raised every {stage} steps, {cap:g} from step "
        f"{stage * stages_to_cap(cap)}; Demon: μ = {DEMON_INIT:g} at step 0, "
        f"{float(schedules.demon(DEMON_INIT, num_steps)(num_steps // 2)):.3g} at step "
        f"{num_steps // 2}, 0 at step {num_steps}."
    )


@dataclasses.dataclass(frozen=True)
class Spec:
    """One method on one problem: the transform and how it was configured."""

    key: str
    optimizer: optax.GradientTransformation
    learning_rate: float
    lr_rule: str  # how learning_rate follows from the base rate α
    call: str  # the momentum_jax call, for the table and the CSV

    @property
    def label(self) -> str:
        return LABELS[self.key]


def make_specs(base_lr: float, num_steps: int, cap: float) -> list[Spec]:
    """All methods for one problem with base learning rate ``base_lr`` and ``num_steps`` updates."""
    qhm_lr = base_lr / (1.0 - MOMENTUM)
    aggmo_lr = base_lr * aggmo_lr_factor()
    stage = sutskever_stage_length(cap, num_steps)
    momenta = ", ".join(f"{b:g}" for b in AGGMO_MOMENTA)
    return [
        Spec("gd", momentum_jax.momentum(base_lr, 0.0), base_lr, "α", f"momentum({base_lr:g}, 0)"),
        Spec(
            "momentum",
            momentum_jax.momentum(base_lr, MOMENTUM),
            base_lr,
            "α",
            f"momentum({base_lr:g}, {MOMENTUM:g})",
        ),
        Spec(
            "nesterov",
            momentum_jax.nesterov(base_lr, MOMENTUM),
            base_lr,
            "α",
            f"nesterov({base_lr:g}, {MOMENTUM:g})",
        ),
        Spec(
            "qhm",
            momentum_jax.qhm(qhm_lr, QHM_MOMENTUM, QHM_NU),
            qhm_lr,
            f"α/(1−{MOMENTUM:g})",
            f"qhm({qhm_lr:.4g}, momentum={QHM_MOMENTUM:g}, nu={QHM_NU:g})",
        ),
        Spec(
            "aggmo",
            momentum_jax.aggmo(aggmo_lr, AGGMO_MOMENTA),
            aggmo_lr,
            f"α·{aggmo_lr_factor():.4g}",
            f"aggmo({aggmo_lr:.4g}, momenta=({momenta}))",
        ),
        Spec(
            "sutskever",
            momentum_jax.nesterov(base_lr, schedules.sutskever(cap, steps_per_stage=stage)),
            base_lr,
            "α",
            f"nesterov({base_lr:g}, sutskever({cap:g}, steps_per_stage={stage}))",
        ),
        Spec(
            "demon",
            momentum_jax.momentum(base_lr, schedules.demon(DEMON_INIT, total_steps=num_steps)),
            base_lr,
            "α",
            f"momentum({base_lr:g}, demon({DEMON_INIT:g}, total_steps={num_steps}))",
        ),
    ]


# ---------------------------------------------------------------------------
# Problem 1: an ill-conditioned quadratic
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class QuadraticRun:
    """One method on the quadratic."""

    spec: Spec
    error: np.ndarray  # relative error ‖x_t − x*‖ / ‖x_0 − x*‖ for t = 0..steps
    steps_to_target: int | None
    diverged: bool

    @property
    def final_error(self) -> float:
        return float(self.error[-1])


def make_quadratic(
    dim: int, kappa: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(A, eigenvalues, minimizer, start)``: ``A = Q diag(λ) Qᵀ`` with λ in ``[1/κ, 1]``."""
    rng = np.random.default_rng(seed)
    eigenvalues = np.geomspace(1.0 / kappa, 1.0, dim)
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    matrix = (rotation * eigenvalues) @ rotation.T
    matrix = 0.5 * (matrix + matrix.T)
    minimizer = rng.standard_normal(dim)
    start = minimizer + rng.standard_normal(dim)
    return matrix, eigenvalues, minimizer, start


def run_quadratic(
    specs: Sequence[Spec], *, dim: int, kappa: float, seed: int, num_steps: int, target: float
) -> list[QuadraticRun]:
    """Every method on the quadratic in float64: a ``lax.scan`` each, one compiled program."""
    matrix, _, minimizer, start = make_quadratic(dim, kappa, seed)
    initial = float(np.linalg.norm(start - minimizer))
    with jax.enable_x64(True):
        a, x_star = jnp.asarray(matrix), jnp.asarray(minimizer)

        def loss(x: jax.Array) -> jax.Array:
            d = x - x_star
            return 0.5 * d @ (a @ d)

        def distance(x: jax.Array) -> jax.Array:
            return jnp.linalg.norm(x - x_star)

        @jax.jit
        def program(x0: jax.Array) -> list[jax.Array]:
            # run_trajectory's own jit inlines here: all methods compile together.
            return [
                _common.run_trajectory(loss, spec.optimizer, x0, num_steps, record=distance)[0]
                for spec in specs
            ]

        distances = program(jnp.asarray(start))
        errors = [np.asarray(d, np.float64) / initial for d in distances]
    runs = []
    for spec, error in zip(specs, errors, strict=True):
        finite = np.isfinite(error)
        diverged = bool(not finite.all() or error[finite].max() > QUAD_EXPLOSION)
        reached = None if diverged else _common.first_step_below(error, target, stay=True)
        runs.append(QuadraticRun(spec, error, reached, diverged))
    return runs


# ---------------------------------------------------------------------------
# Problem 2: an MLP on digits, all methods and seeds in one program
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DigitsRun(_common.SeedOutcomes):
    """One method on digits; arrays have one row per seed."""

    spec: Spec
    train_loss: np.ndarray  # (seeds, evals + 1), the first column before training
    test_accuracy: np.ndarray  # (seeds,)
    diverged: np.ndarray  # (seeds,) bool
    steps: np.ndarray  # (seeds,) steps to the target loss; NaN if missed or diverged

    @property
    def converged(self) -> bool:
        """No seed diverged and every seed reached the target loss."""
        return self.num_diverged == 0 and self.num_reached == self.num_seeds

    def _kept(self, values: np.ndarray) -> np.ndarray:
        return values[~self.diverged & np.isfinite(values)]

    @property
    def final_loss(self) -> np.ndarray:
        return self._kept(self.train_loss[:, -1])

    @property
    def accuracy(self) -> np.ndarray:
        return self._kept(self.test_accuracy)

    def mean(self, values: np.ndarray) -> float:
        return float(values.mean()) if values.size else float("nan")

    def std(self, values: np.ndarray) -> float:
        return float(values.std()) if values.size else float("nan")


def train_methods(
    optimizers: Sequence[optax.GradientTransformation],
    data: _data.Dataset,
    seeds: Sequence[int],
    *,
    hidden: Sequence[int],
    batch_size: int,
    num_steps: int,
    eval_every: int,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], float, float]:
    """Train one MLP per (optimizer, seed), all in one jitted program.

    Each optimizer's models are ``jax.vmap``-ed over seeds and stepped by
    ``lax.scan``; the optimizers sit side by side in the same program (one
    XLA compilation for all of them took about half as long as one per
    optimizer, on CPU). A seed fixes the initial weights and the minibatch sequence
    exactly as in :func:`_common.train_sweep`, the same for every optimizer.

    Returns:
      ``(results, compile_seconds, run_seconds)``; ``results`` holds, per
      optimizer, the training loss on the whole training set every
      ``eval_every`` steps, shape ``(seeds, num_steps // eval_every + 1)``
      (step 0 first), and the final test accuracy per seed.
    """
    sizes = (data.num_features, *hidden, 10)
    num_train = data.x_train.shape[0]

    def train(
        optimizer: optax.GradientTransformation,
        seed: jax.Array,
        x: jax.Array,
        y: jax.Array,
        x_test: jax.Array,
        y_test: jax.Array,
    ) -> tuple[jax.Array, jax.Array]:
        init_key, data_key = jax.random.split(jax.random.key(seed))
        params = _common.init_mlp(init_key, sizes)

        def sgd_step(carry: tuple[Any, Any], t: jax.Array) -> tuple[tuple[Any, Any], None]:
            params, state = carry
            idx = jax.random.randint(jax.random.fold_in(data_key, t), (batch_size,), 0, num_train)
            grads = jax.grad(_common.cross_entropy)(params, x[idx], y[idx])
            updates, state = optimizer.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        def block(carry: tuple[Any, Any], t0: jax.Array) -> tuple[tuple[Any, Any], jax.Array]:
            carry, _ = jax.lax.scan(sgd_step, carry, t0 + jnp.arange(eval_every))
            return carry, _common.cross_entropy(carry[0], x, y)

        initial = _common.cross_entropy(params, x, y)
        starts = eval_every * jnp.arange(num_steps // eval_every)
        (params, _), losses = jax.lax.scan(block, (params, optimizer.init(params)), starts)
        losses = jnp.concatenate([initial[None], losses])
        return losses, _common.accuracy(params, x_test, y_test)

    def program(seeds: jax.Array, *arrays: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
        return [
            jax.vmap(functools.partial(train, optimizer), in_axes=(0, None, None, None, None))(
                seeds, *arrays
            )
            for optimizer in optimizers
        ]

    # The data travel as arguments, not as constants baked into the program.
    inputs = (
        jnp.asarray(seeds, jnp.int32),
        jnp.asarray(data.x_train),
        jnp.asarray(data.y_train),
        jnp.asarray(data.x_test),
        jnp.asarray(data.y_test),
    )
    start = time.perf_counter()
    compiled = jax.jit(program).lower(*inputs).compile()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    outputs = jax.block_until_ready(compiled(*inputs))
    run_seconds = time.perf_counter() - start
    results = [
        (np.asarray(losses, np.float64), np.asarray(accuracy, np.float64))
        for losses, accuracy in outputs
    ]
    return results, compile_seconds, run_seconds


def run_digits(
    specs: Sequence[Spec],
    data: _data.Dataset,
    seeds: Sequence[int],
    *,
    hidden: Sequence[int],
    batch_size: int,
    num_steps: int,
    eval_every: int,
    target: float,
) -> tuple[list[DigitsRun], np.ndarray, str]:
    """Every method on digits; returns the runs, the evaluated steps and a timing note."""
    eval_steps = np.arange(num_steps // eval_every + 1) * eval_every
    results, compile_seconds, run_seconds = train_methods(
        [spec.optimizer for spec in specs],
        data,
        seeds,
        hidden=hidden,
        batch_size=batch_size,
        num_steps=num_steps,
        eval_every=eval_every,
    )
    runs = []
    for spec, (losses, accuracy) in zip(specs, results, strict=True):
        diverged = diverged_runs(losses)
        reached = np.where(diverged, np.nan, steps_to_target(losses, eval_steps, target))
        runs.append(DigitsRun(spec, losses, accuracy, diverged, reached))
    timing = f"compile {compile_seconds:.1f} s, run {run_seconds:.1f} s"
    return runs, eval_steps, timing


# ---------------------------------------------------------------------------
# Tables and CSV
# ---------------------------------------------------------------------------

CSV_HEADERS = [
    "problem",
    "method",
    "optimizer",
    "learning_rate",
    "lr_rule",
    "runs",
    "diverged",
    "reached_target",
    "target",
    "steps_to_target_mean",
    "steps_to_target_std",
    "final_value_mean",
    "final_value_std",
    "test_accuracy_mean",
    "test_accuracy_std",
]


def _number(value: float | None) -> object:
    if value is None or not np.isfinite(value):
        return ""
    return float(f"{value:.6g}")


def quadratic_rows(runs: Sequence[QuadraticRun]) -> list[list[str]]:
    rows = []
    for r in runs:
        if r.diverged:
            steps, final = "diverged", "diverged"
        else:
            steps = "not reached" if r.steps_to_target is None else str(r.steps_to_target)
            final = f"{r.final_error:.2e}"
        rows.append([r.spec.label, r.spec.call, steps, final, "yes" if r.diverged else "no"])
    return rows


def digits_rows(runs: Sequence[DigitsRun]) -> list[list[str]]:
    rows = []
    for r in runs:
        diverged = f"{r.num_diverged}/{r.num_seeds}"
        if r.num_diverged == r.num_seeds:
            rows.append([r.spec.label, r.spec.call, "diverged", "diverged", "diverged", diverged])
            continue
        steps = _common.mean_std(r.steps, ".0f")
        if r.num_reached == 0:
            steps = "not reached"
        elif r.num_reached < r.num_seeds:
            steps = f"{steps} ({r.num_reached}/{r.num_seeds} reached)"
        rows.append(
            [
                r.spec.label,
                r.spec.call,
                steps,
                _common.mean_std(r.final_loss, ".2g"),
                _common.mean_std(r.accuracy, ".1f", scale=100.0),
                diverged,
            ]
        )
    return rows


def csv_rows(
    quadratic: Sequence[QuadraticRun],
    digits: Sequence[DigitsRun],
    quad_target: float,
    loss_target: float,
) -> list[list[object]]:
    rows: list[list[object]] = []
    for q in quadratic:
        rows.append(
            [
                "quadratic",
                q.spec.key,
                q.spec.call,
                _number(q.spec.learning_rate),
                q.spec.lr_rule,
                1,
                int(q.diverged),
                int(q.steps_to_target is not None),
                quad_target,
                _number(q.steps_to_target),
                "",
                "" if q.diverged else _number(q.final_error),
                "",
                "",
                "",
            ]
        )
    for d in digits:
        finite_steps = d.steps[np.isfinite(d.steps)]
        rows.append(
            [
                "digits",
                d.spec.key,
                d.spec.call,
                _number(d.spec.learning_rate),
                d.spec.lr_rule,
                d.num_seeds,
                d.num_diverged,
                d.num_reached,
                loss_target,
                _number(d.mean(finite_steps)),
                _number(d.std(finite_steps)),
                _number(d.mean(d.final_loss)),
                _number(d.std(d.final_loss)),
                _number(d.mean(d.accuracy)),
                _number(d.std(d.accuracy)),
            ]
        )
    return rows


# ---------------------------------------------------------------------------
# The written conclusion: every number in it comes from the runs
# ---------------------------------------------------------------------------


def _join(parts: Sequence[str]) -> str:
    return ", ".join(parts) if parts else "none"


def quadratic_conclusion(runs: Sequence[QuadraticRun], target: float, num_steps: int) -> list[str]:
    lines = []
    reached = sorted(
        (r for r in runs if r.steps_to_target is not None), key=lambda r: r.steps_to_target
    )
    missed = [r for r in runs if r.steps_to_target is None and not r.diverged]
    diverged = [r for r in runs if r.diverged]
    if reached:
        text = f"Quadratic, steps until the error stays below {target:g}: " + ", ".join(
            f"{r.spec.label} {r.steps_to_target}" for r in reached
        )
        text += " steps"
    else:
        text = f"Quadratic: no method reached error {target:g} within {num_steps} steps"
    if missed:
        text += f"; not within {num_steps} steps (final error): " + ", ".join(
            f"{r.spec.label} ({r.final_error:.1e})"
            for r in sorted(missed, key=lambda r: r.final_error)
        )
    text += f"; diverged: {_join([r.spec.label for r in diverged])}."
    lines.append(text)

    by_key = {r.spec.key: r for r in runs}
    gd = by_key.get("gd")
    if gd is not None and not gd.diverged:
        others = [r for r in runs if r.spec.key != "gd" and not r.diverged]
        better = [r for r in others if r.final_error < gd.final_error]
        if gd.steps_to_target is None:
            text = (
                f"Gradient descent at the same α did not reach {target:g} (final error "
                f"{gd.final_error:.1e})"
            )
        else:
            text = f"Gradient descent at the same α needed {gd.steps_to_target} steps"
            faster = [r for r in reached if r.spec.key != "gd"]
            if faster:
                best = faster[0]
                text += (
                    f"; {best.spec.label} needed {gd.steps_to_target / best.steps_to_target:.1f}x "
                    "fewer"
                )
        text += (
            f"; {len(better)} of {len(others)} stable momentum methods ended with a lower "
            "error than gradient descent"
        )
        if len(better) < len(others):
            text += " (not: " + _join([r.spec.label for r in others if r not in better]) + ")"
        lines.append(text + ".")
    return lines


def digits_conclusion(runs: Sequence[DigitsRun], target: float, num_steps: int) -> list[str]:
    lines = []
    converged = sorted((r for r in runs if r.converged), key=lambda r: float(np.mean(r.steps)))
    short = [r for r in runs if not r.converged and r.num_diverged < r.num_seeds]
    text = f"Digits: mean steps to training loss {target:g} (every seed reaching it): " + _join(
        [f"{r.spec.label} {np.mean(r.steps):.0f}" for r in converged]
    )
    if short:
        text += f"; not every seed within {num_steps} steps: " + ", ".join(
            f"{r.spec.label} ({r.num_reached}/{r.num_seeds})" for r in short
        )
    by_key = {r.spec.key: r for r in runs}
    sgd = by_key.get("gd")
    if converged and sgd is not None and sgd.converged and converged[0] is not sgd:
        text += (
            f". {converged[0].spec.label} needed "
            f"{np.mean(sgd.steps) / np.mean(converged[0].steps):.1f}x fewer steps than SGD"
        )
    lines.append(text + ".")

    stable = [r for r in runs if r.final_loss.size]
    if stable:
        ordered = sorted(stable, key=lambda r: r.mean(r.final_loss))
        lines.append(
            "Final training loss, lowest first: "
            + ", ".join(f"{r.spec.label} {r.mean(r.final_loss):.2g}" for r in ordered)
            + "."
        )
    accurate = [r for r in runs if r.accuracy.size]
    if accurate:
        top = max(accurate, key=lambda r: r.mean(r.accuracy))
        low = min(accurate, key=lambda r: r.mean(r.accuracy))
        spread = 100 * (top.mean(top.accuracy) - low.mean(low.accuracy))
        noise = 100 * max((r.std(r.accuracy) for r in accurate if r.accuracy.size > 1), default=0)
        text = (
            f"Test accuracy: from {100 * low.mean(low.accuracy):.1f}% ({low.spec.label}) to "
            f"{100 * top.mean(top.accuracy):.1f}% ({top.spec.label}), a spread of {spread:.1f} "
            "points"
        )
        if noise > 0:
            verdict = "within" if spread <= 2 * noise else "larger than"
            text += f", {verdict} twice the largest seed-to-seed std ({noise:.1f} points)" + (
                ", so these seeds do not separate the methods" if verdict == "within" else ""
            )
        lines.append(text + ".")
    bad = [r for r in runs if r.num_diverged]
    lines.append(
        "Diverged digits runs: "
        + _join([f"{r.spec.label} {r.num_diverged}/{r.num_seeds}" for r in bad])
        + "."
    )
    return lines


def versus_momentum(
    quadratic: Sequence[QuadraticRun],
    digits: Sequence[DigitsRun],
    quad_target: float,
    loss_target: float,
) -> list[str]:
    """One line per variant: how it compares with plain momentum on both problems."""
    q_by = {r.spec.key: r for r in quadratic}
    d_by = {r.spec.key: r for r in digits}
    lines = []
    base_q, base_d = q_by.get("momentum"), d_by.get("momentum")
    for key in METHODS:
        if key in ("gd", "momentum"):
            continue
        parts = []
        q = q_by.get(key)
        if q is not None and base_q is not None:
            if q.diverged:
                parts.append("quadratic: diverged")
            elif q.steps_to_target is not None and base_q.steps_to_target is not None:
                parts.append(
                    f"quadratic: {q.steps_to_target} vs {base_q.steps_to_target} steps to "
                    f"{quad_target:g} ({q.steps_to_target / base_q.steps_to_target:.2f}x)"
                )
            else:
                parts.append(
                    f"quadratic: final error {q.final_error:.1e} vs {base_q.final_error:.1e}"
                )
        d = d_by.get(key)
        if d is not None and base_d is not None and d.final_loss.size and base_d.final_loss.size:
            text = "digits: "
            # Rounded first, plus 0.0, so that a tiny negative gap prints as +0.0, not -0.0.
            gap = round(100 * (d.mean(d.accuracy) - base_d.mean(base_d.accuracy)), 1) + 0.0
            if d.converged and base_d.converged:
                text += f"{np.mean(d.steps) / np.mean(base_d.steps):.2f}x the steps to loss "
                text += f"{loss_target:g}, "
            text += (
                f"final loss {d.mean(d.final_loss) / base_d.mean(base_d.final_loss):.2g}x, "
                f"test accuracy {gap:+.1f} points"
            )
            if d.num_diverged:
                text += f", {d.num_diverged}/{d.num_seeds} seeds diverged"
            parts.append(text)
        if parts:
            lines.append(f"{LABELS[key]} vs momentum — " + "; ".join(parts) + ".")
    return lines


# ---------------------------------------------------------------------------
# Figure
# ---------------------------------------------------------------------------


def plot(
    quadratic: Sequence[QuadraticRun],
    digits: Sequence[DigitsRun],
    eval_steps: np.ndarray,
    *,
    quad_title: str,
    digits_title: str,
    quad_target: float,
    loss_target: float,
    path: Path,
) -> Path:
    """Two panels: quadratic error per step and digits training loss per step, log scale."""
    plt = _common.get_pyplot()
    fig, (ax_q, ax_d) = plt.subplots(1, 2, figsize=(11.0, 4.0))
    floor = 1e-12
    for r in quadratic:
        error = np.where(np.isfinite(r.error), r.error, 1e3)
        ax_q.plot(
            np.arange(error.size),
            np.clip(error, floor, 1e3),
            "--" if r.diverged else "-",
            color=COLORS[r.spec.key],
            lw=1.4,
        )
    ax_q.axhline(quad_target, color="0.4", lw=0.8, ls=":")
    ax_q.set_yscale("log")
    ax_q.set_ylim(floor, 10.0)
    ax_q.set_ylabel("‖x − x*‖ / ‖x₀ − x*‖")
    ax_q.set_title(quad_title, fontsize=10)

    finite = np.concatenate([r.train_loss[np.isfinite(r.train_loss)] for r in digits])
    finite = finite[finite > 0]
    initial = max(float(np.max(r.train_loss[:, 0])) for r in digits)
    low = max(float(finite.min()) * 0.7, 1e-7) if finite.size else 1e-7
    high = 4.0 * initial
    for r in digits:
        curves = np.where(np.isfinite(r.train_loss), np.clip(r.train_loss, low, high), high)
        color = COLORS[r.spec.key]
        style = "--" if r.num_diverged else "-"
        ax_d.plot(eval_steps, np.median(curves, axis=0), style, color=color, lw=1.4)
        if r.num_seeds > 1:
            ax_d.fill_between(
                eval_steps, curves.min(axis=0), curves.max(axis=0), color=color, alpha=0.12
            )
    ax_d.axhline(loss_target, color="0.4", lw=0.8, ls=":")
    ax_d.set_yscale("log")
    ax_d.set_ylim(low, high)
    ax_d.set_ylabel("training loss (median, min–max band)")
    ax_d.set_title(digits_title, fontsize=10)
    for ax, target in ((ax_q, quad_target), (ax_d, loss_target)):
        ax.set_xlabel("step")
        ax.grid(True, which="major", alpha=0.3)
        ax.annotate(
            f"target {target:g}",
            (0.02, target),
            xycoords=("axes fraction", "data"),
            ha="left",
            va="bottom",
            fontsize=8,
            color="0.3",
        )

    from matplotlib.lines import Line2D

    diverged = {r.spec.key for r in quadratic if r.diverged}
    diverged |= {r.spec.key for r in digits if r.num_diverged}
    handles = [
        Line2D(
            [],
            [],
            color=COLORS[key],
            lw=1.6,
            ls="--" if key in diverged else "-",
            label=LABELS[key] + (" (diverged runs: dashed)" if key in diverged else ""),
        )
        for key in dict.fromkeys(r.spec.key for r in [*quadratic, *digits])
    ]
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=7,
        fontsize=8.5,
        frameon=False,
        handlelength=1.6,
        columnspacing=1.2,
    )
    return _common.save_figure(fig, path)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Compare momentum, Nesterov, QHM, AggMo, Nesterov with Sutskever's momentum "
            "schedule and momentum with Demon (all momentum_jax transforms, one base learning "
            "rate converted per variant) against gradient descent on an ill-conditioned "
            "quadratic and on an MLP classifier for scikit-learn's digits. Prints tables and a "
            "conclusion computed from them; writes a CSV file and a PNG figure."
        ),
        formatter_class=_common.HelpFormatter,
    )
    quad = parser.add_argument_group("quadratic")
    quad.add_argument("--kappa", type=float, default=1000.0, help="condition number L/m")
    quad.add_argument("--quad-dim", type=int, default=200, help="dimension")
    quad.add_argument("--quad-steps", type=int, default=3000, help="number of steps")
    quad.add_argument(
        "--quad-lr",
        type=float,
        default=0.5,
        help="base learning rate α (the largest eigenvalue is 1)",
    )
    quad.add_argument(
        "--quad-target",
        type=float,
        default=1e-6,
        help="relative error that defines 'steps to target'",
    )
    quad.add_argument("--quad-seed", type=int, default=0, help="seed of the rotation and start")
    digits = parser.add_argument_group("digits")
    digits.add_argument(
        "--digits-steps",
        type=int,
        default=None,
        help=f"training steps, a multiple of --eval-every (default {FULL['steps']}, "
        f"{QUICK['steps']} with --quick)",
    )
    digits.add_argument("--digits-lr", type=float, default=0.1, help="base learning rate α")
    _common.add_mlp_training_arguments(
        digits, full_seeds=FULL["seeds"], quick_seeds=QUICK["seeds"], target_loss=0.01
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"fewer digits steps and seeds ({QUICK['steps']} steps, {QUICK['seeds']} seeds)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    args.digits_steps = preset["steps"] if args.digits_steps is None else args.digits_steps
    args.seeds = preset["seeds"] if args.seeds is None else args.seeds
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    if args.digits_steps < 1 or args.eval_every < 1 or args.digits_steps % args.eval_every:
        parser.error(
            f"--digits-steps must be a positive multiple of --eval-every, got --digits-steps "
            f"{args.digits_steps} and --eval-every {args.eval_every}"
        )
    if args.kappa <= 1.0:
        parser.error(f"--kappa must be above 1, got {args.kappa}")
    if args.quad_dim < 2 or args.quad_steps < 1:
        parser.error("--quad-dim must be at least 2 and --quad-steps at least 1")
    if not 0.0 < args.quad_target < 1.0:
        parser.error(f"--quad-target must be in (0, 1), got {args.quad_target}")
    if args.quad_lr <= 0.0 or args.digits_lr <= 0.0:
        parser.error("learning rates must be positive")
    return args


@dataclasses.dataclass(frozen=True)
class Results:
    """What :func:`main` measured."""

    quadratic: list[QuadraticRun]
    digits: list[DigitsRun]
    eval_steps: np.ndarray
    conclusion: list[str]


def main(argv: Sequence[str] | None = None) -> Results:
    """Run every method on both problems, print tables and a conclusion, write CSV and PNG."""
    args = parse_args(argv)
    factor = aggmo_lr_factor()
    gain = sum(1.0 / (1.0 - b) for b in AGGMO_MOMENTA)
    print(
        f"Learning rates: one base α per problem (quadratic {args.quad_lr:g}, digits "
        f"{args.digits_lr:g}), used as is by gradient descent, momentum, Nesterov and the "
        f"two schedules (lr inside the velocity: a steady gradient moves momentum "
        f"{MOMENTUM:g} by α/(1−{MOMENTUM:g}) = {1 / (1 - MOMENTUM):g}α per step).\n"
        f"  QHM averages its buffer: α_QHM = α/(1−{MOMENTUM:g}) = {1 / (1 - MOMENTUM):g}α.\n"
        f"  AggMo's long-run step is (α_AggMo/{len(AGGMO_MOMENTA)})·{gain:g} = "
        f"{gain / len(AGGMO_MOMENTA):.4g}·α_AggMo, so α_AggMo = {factor:.4g}α.\n"
    )

    # (1) the quadratic
    start = time.perf_counter()
    quad_specs = make_specs(args.quad_lr, args.quad_steps, QUAD_CAP)
    quadratic = run_quadratic(
        quad_specs,
        dim=args.quad_dim,
        kappa=args.kappa,
        seed=args.quad_seed,
        num_steps=args.quad_steps,
        target=args.quad_target,
    )
    print(
        f"(1) Quadratic, {args.quad_dim} dimensions, eigenvalues in [1/{args.kappa:g}, 1] "
        f"(rotated), α = {args.quad_lr:g}, {args.quad_steps} steps, float64 "
        f"({time.perf_counter() - start:.1f} s)"
    )
    print(
        _common.format_table(
            [
                "method",
                "optimizer",
                f"steps to error {args.quad_target:g}",
                "final error",
                "diverged",
            ],
            quadratic_rows(quadratic),
        )
    )
    print(
        "error: ‖x_t − x*‖ / ‖x_0 − x*‖; steps: first step from which it stays below the "
        f"target. {schedule_note(QUAD_CAP, args.quad_steps)}\n"
    )

    # (2) digits
    data = _data.load_digits()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    sizes = "-".join(str(n) for n in (data.num_features, *args.hidden, 10))
    digit_specs = make_specs(args.digits_lr, args.digits_steps, DIGITS_CAP)
    digits, eval_steps, timing = run_digits(
        digit_specs,
        data,
        seeds,
        hidden=args.hidden,
        batch_size=args.batch_size,
        num_steps=args.digits_steps,
        eval_every=args.eval_every,
        target=args.target_loss,
    )
    print(
        f"(2) Digits: MLP {sizes}, {len(data.y_train)} train / {len(data.y_test)} test "
        f"examples, batch {args.batch_size}, α = {args.digits_lr:g}, {args.digits_steps} steps, "
        f"{len(seeds)} seeds x {len(digit_specs)} methods in one program ({timing})"
    )
    print(
        _common.format_table(
            [
                "method",
                "optimizer",
                f"steps to loss {args.target_loss:g}",
                "final train loss",
                "test acc (%)",
                "diverged",
            ],
            digits_rows(digits),
        )
    )
    print(
        f"mean ± std over seeds (runs that did not diverge); loss measured every "
        f"{args.eval_every} steps on all training examples. "
        f"{schedule_note(DIGITS_CAP, args.digits_steps)}\n"
    )

    lines = [
        *quadratic_conclusion(quadratic, args.quad_target, args.quad_steps),
        *digits_conclusion(digits, args.target_loss, args.digits_steps),
        *versus_momentum(quadratic, digits, args.quad_target, args.target_loss),
    ]
    print("Conclusion:")
    for line in lines:
        print(f"- {line}")

    out: Path = args.out
    written = [
        _common.write_csv(
            out / "variants.csv",
            CSV_HEADERS,
            csv_rows(quadratic, digits, args.quad_target, args.target_loss),
        ),
        plot(
            quadratic,
            digits,
            eval_steps,
            quad_title=f"Quadratic, κ = {args.kappa:g}, {args.quad_dim} dims, α = {args.quad_lr:g}",
            digits_title=f"MLP {sizes} on digits, α = {args.digits_lr:g}, {len(seeds)} seeds",
            quad_target=args.quad_target,
            loss_target=args.target_loss,
            path=out / "variants.png",
        ),
    ]
    print("\nwrote " + ", ".join(str(p) for p in written))
    return Results(quadratic, digits, eval_steps, lines)


if __name__ == "__main__":
    main(sys.argv[1:])
