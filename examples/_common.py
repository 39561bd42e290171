"""Shared code for the examples: optimizers, scan loops, a small MLP, tables and figures.

The examples import this module as ``_common`` (each script's own directory is
on ``sys.path`` when it runs as ``python examples/NAME.py``).

* :func:`build_optimizer` — the one place where a method name becomes a
  ``momentum_jax`` transform; gradient descent is ``momentum_jax.momentum``
  with ``momentum=0``.
* :func:`run_trajectory` — one optimizer on one deterministic objective, as a
  single ``lax.scan``.
* :func:`train_sweep` — many MLPs (variants x momenta x seeds) trained by one
  compiled program: ``jax.vmap`` over momenta and seeds, ``lax.scan`` over steps.
* :func:`format_table`, :func:`write_csv`, :func:`get_pyplot`,
  :func:`save_figure`, :class:`HelpFormatter` — output and command-line helpers.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import itertools
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import momentum_jax

if TYPE_CHECKING:
    from types import ModuleType

    from _data import Dataset
    from matplotlib.figure import Figure

# ---------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------

VARIANTS = ("heavy_ball", "nesterov")
LABELS = {"gd": "gradient descent", "heavy_ball": "heavy ball", "nesterov": "Nesterov"}


def build_optimizer(
    variant: str, learning_rate: float | jax.Array, momentum: float | jax.Array
) -> optax.GradientTransformationExtraArgs:
    """The ``momentum_jax`` transform for ``variant`` (``"heavy_ball"`` or ``"nesterov"``).

    ``momentum`` may be a traced JAX scalar (the transforms never branch on
    it), so one program can be vmapped over momentum values. With
    ``momentum=0`` both variants are plain gradient descent.
    """
    if variant == "heavy_ball":
        return momentum_jax.momentum(learning_rate, momentum)
    if variant == "nesterov":
        return momentum_jax.nesterov(learning_rate, momentum)
    raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")


def run_trajectory(
    loss_fn: Callable[[Any], jax.Array],
    optimizer: optax.GradientTransformation,
    params: Any,
    num_steps: int,
    record: Callable[[Any], Any] | None = None,
) -> tuple[Any, jax.Array]:
    """Run ``num_steps`` optimizer steps on ``loss_fn`` in one compiled ``lax.scan``.

    Args:
      loss_fn: the objective, ``params -> scalar``.
      optimizer: any optax transformation.
      params: the starting point.
      num_steps: number of updates.
      record: what to keep from each iterate (default: the params themselves).

    Returns:
      ``(records, losses)`` for the iterates ``0..num_steps`` (the start
      included), each with a leading axis of length ``num_steps + 1``.
    """
    keep: Callable[[Any], Any] = (lambda p: p) if record is None else record

    def step(carry: tuple[Any, Any], _: None) -> tuple[tuple[Any, Any], tuple[Any, jax.Array]]:
        params, state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = optimizer.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), (keep(params), loss)

    @jax.jit
    def run(params: Any) -> tuple[Any, jax.Array]:
        carry = (params, optimizer.init(params))
        (final, _), (records, losses) = jax.lax.scan(step, carry, None, length=num_steps)
        records = jax.tree.map(
            lambda r, last: jnp.concatenate([r, last[None]]), records, keep(final)
        )
        return records, jnp.concatenate([losses, loss_fn(final)[None]])

    return run(params)


def first_step_below(values: np.ndarray, threshold: float, *, stay: bool = False) -> int | None:
    """Index of the first entry ``<= threshold`` (``None`` if there is none).

    With ``stay=True``, the first index from which every later entry is also
    ``<= threshold``; NaN counts as above the threshold.
    """
    below = np.asarray(values) <= threshold
    if stay:
        above = np.flatnonzero(~below)
        if above.size == 0:
            return 0
        index = int(above[-1]) + 1
        return index if index < below.size else None
    hits = np.flatnonzero(below)
    return int(hits[0]) if hits.size else None


# ---------------------------------------------------------------------------
# A small MLP classifier (pure JAX)
# ---------------------------------------------------------------------------

MLPParams = list[tuple[jax.Array, jax.Array]]


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> MLPParams:
    """Weights ``N(0, 2/fan_in)`` (He, for ReLU) and zero biases for layer sizes ``sizes``."""
    shapes = list(itertools.pairwise(sizes))
    # One draw for all layers: each random op costs compile time on CPU.
    noise = jax.random.normal(key, (sum(a * b for a, b in shapes),), jnp.float32)
    params, offset = [], 0
    for fan_in, fan_out in shapes:
        block = noise[offset : offset + fan_in * fan_out].reshape(fan_in, fan_out)
        offset += fan_in * fan_out
        params.append((block * math.sqrt(2.0 / fan_in), jnp.zeros((fan_out,), jnp.float32)))
    return params


def mlp_logits(params: MLPParams, x: jax.Array) -> jax.Array:
    """ReLU hidden layers, linear output layer."""
    for weights, bias in params[:-1]:
        x = jax.nn.relu(x @ weights + bias)
    weights, bias = params[-1]
    return x @ weights + bias


def cross_entropy(params: MLPParams, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of the MLP on ``(x, y)``."""
    logits = mlp_logits(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def accuracy(params: MLPParams, x: jax.Array, y: jax.Array) -> jax.Array:
    """Share of rows of ``x`` whose largest logit is the label."""
    return jnp.mean(jnp.argmax(mlp_logits(params, x), axis=-1) == y)


# ---------------------------------------------------------------------------
# Many MLPs in one compiled program
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """Everything :func:`train_sweep` measured; array axes are (variant, momentum, seed, ...).

    Attributes:
      variants: the variant names, e.g. ``("heavy_ball", "nesterov")``.
      momenta: the momentum values, shape ``(M,)``.
      seeds: the seeds (each fixes the initial weights and the minibatch order).
      eval_steps: the steps at which the training loss was measured, shape ``(E,)``;
        the first is 0 (before training), the last is the number of steps.
      train_loss: training loss on the evaluation subset, shape ``(V, M, S, E)``.
      test_loss: final test loss, shape ``(V, M, S)``.
      test_accuracy: final test accuracy in ``[0, 1]``, shape ``(V, M, S)``.
      compile_seconds: time spent initializing the models and compiling the programs.
      train_seconds: time spent training and testing.
    """

    variants: tuple[str, ...]
    momenta: np.ndarray
    seeds: tuple[int, ...]
    eval_steps: np.ndarray
    train_loss: np.ndarray
    test_loss: np.ndarray
    test_accuracy: np.ndarray
    compile_seconds: float
    train_seconds: float


def _evals_per_chunk(total_evals: int, target_chunks: int) -> int:
    # The largest divisor of total_evals giving at least target_chunks chunks,
    # so that every chunk has the same length and the program compiles once.
    limit = max(1, total_evals // target_chunks)
    return max(d for d in range(1, limit + 1) if total_evals % d == 0)


def train_sweep(
    data: Dataset,
    *,
    momenta: Sequence[float],
    seeds: Sequence[int],
    variants: Sequence[str] = VARIANTS,
    hidden: Sequence[int] = (64, 64),
    learning_rate: float = 0.05,
    batch_size: int = 64,
    num_steps: int = 1000,
    eval_every: int = 10,
    eval_size: int = 2048,
    progress: bool = True,
    target_chunks: int = 25,
) -> SweepResult:
    """Train one MLP per (variant, momentum, seed) with minibatch SGD + momentum.

    All models train together in one jitted program: ``jax.vmap`` over
    momentum values and seeds (momentum enters ``momentum_jax`` as a traced
    scalar), ``lax.scan`` over steps, one vmapped program per variant inside
    the same ``jax.jit``. The program runs in equal chunks of steps so a
    progress bar can move between them; it compiles once.

    Each step draws ``batch_size`` training rows uniformly with replacement.
    Every ``eval_every`` steps the full-batch loss on the first ``eval_size``
    training rows is recorded. A seed fixes the initial weights and the
    minibatch sequence, so for a given seed all momentum values and variants
    start from the same weights and see the same batches.

    Returns:
      A :class:`SweepResult`.
    """
    if num_steps <= 0 or eval_every <= 0 or num_steps % eval_every:
        raise ValueError(
            f"num_steps must be a positive multiple of eval_every, got num_steps={num_steps}, "
            f"eval_every={eval_every}."
        )
    for variant in variants:
        build_optimizer(variant, learning_rate, 0.0)  # validates the name and learning rate
    for mu in momenta:
        build_optimizer(variants[0], learning_rate, mu)  # validates the momentum range
    x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    x_eval, y_eval = jnp.asarray(data.x_train[:eval_size]), jnp.asarray(data.y_train[:eval_size])
    x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    num_train = x_train.shape[0]
    sizes = (data.num_features, *hidden, 10)
    mus = jnp.asarray(momenta, jnp.float32)
    num_momenta = len(momenta)

    @jax.jit
    def setup(seeds: jax.Array) -> tuple[jax.Array, list[tuple[MLPParams, Any]]]:
        keys = jax.vmap(lambda s: jax.random.split(jax.random.key(s)))(seeds)
        seed_params = jax.vmap(lambda k: init_mlp(k, sizes))(keys[:, 0])
        # Same initial weights for every momentum value: broadcast along a new axis 0.
        params = jax.tree.map(lambda p: jnp.broadcast_to(p, (num_momenta, *p.shape)), seed_params)
        states = [
            (params, jax.vmap(jax.vmap(build_optimizer(v, learning_rate, 0.0).init))(params))
            for v in variants
        ]
        return keys[:, 1], states

    def per_model_chunk(variant: str, evals: int) -> Callable[..., Any]:
        def chunk(
            mu: jax.Array,
            params: MLPParams,
            opt_state: Any,
            data_key: jax.Array,
            step0: jax.Array,
            x: jax.Array,
            y: jax.Array,
            xe: jax.Array,
            ye: jax.Array,
        ) -> tuple[tuple[MLPParams, Any], jax.Array]:
            optimizer = build_optimizer(variant, learning_rate, mu)

            def sgd_step(carry: tuple[MLPParams, Any], t: jax.Array) -> tuple[Any, None]:
                params, opt_state = carry
                idx = jax.random.randint(
                    jax.random.fold_in(data_key, t), (batch_size,), 0, num_train
                )
                grads = jax.grad(cross_entropy)(params, x[idx], y[idx])
                updates, opt_state = optimizer.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), None

            def block(carry: tuple[MLPParams, Any], t0: jax.Array) -> tuple[Any, jax.Array]:
                carry, _ = jax.lax.scan(sgd_step, carry, t0 + jnp.arange(eval_every))
                return carry, cross_entropy(carry[0], xe, ye)

            starts = step0 + eval_every * jnp.arange(evals)
            return jax.lax.scan(block, (params, opt_state), starts)

        over_seeds = jax.vmap(chunk, in_axes=(None, 0, 0, 0, None, None, None, None, None))
        return jax.vmap(over_seeds, in_axes=(0, 0, 0, None, None, None, None, None, None))

    total_evals = num_steps // eval_every
    evals = _evals_per_chunk(total_evals, target_chunks)
    chunk_fns = [per_model_chunk(variant, evals) for variant in variants]

    # The data travel as arguments, not closed-over constants, so that a large
    # dataset is not baked into the compiled program.
    def program(states: Any, step0: jax.Array, inputs: tuple[jax.Array, ...]) -> Any:
        new_states, losses = [], []
        for fn, (params, opt_state) in zip(chunk_fns, states, strict=True):
            state, loss = fn(inputs[0], params, opt_state, inputs[1], step0, *inputs[2:])
            new_states.append(state)
            losses.append(loss)
        return new_states, jnp.stack(losses)

    def evaluate(states: Any, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        def both(params: MLPParams) -> tuple[jax.Array, jax.Array]:
            return cross_entropy(params, x, y), accuracy(params, x, y)

        results = [jax.vmap(jax.vmap(both))(params) for params, _ in states]
        return jnp.stack([r[0] for r in results]), jnp.stack([r[1] for r in results])

    start = time.perf_counter()
    data_keys, states = setup(jnp.asarray(seeds))
    step0 = jnp.asarray(0, jnp.int32)
    inputs = (mus, data_keys, x_train, y_train, x_eval, y_eval)
    compiled = jax.jit(program).lower(states, step0, inputs).compile()
    evaluate_jit = jax.jit(evaluate)
    initial_loss, _ = evaluate_jit(states, x_eval, y_eval)
    compile_seconds = time.perf_counter() - start

    start = time.perf_counter()
    chunk_losses = [np.asarray(initial_loss)[..., None]]
    with tqdm(
        total=num_steps, desc="training", unit="step", disable=not progress, leave=False
    ) as bar:
        bar.set_postfix_str(f"{len(variants) * num_momenta * len(seeds)} models")
        for step in range(0, num_steps, evals * eval_every):
            states, loss = compiled(states, jnp.asarray(step, jnp.int32), inputs)
            chunk_losses.append(np.asarray(loss))  # (variant, momentum, seed, evals)
            bar.update(evals * eval_every)
    test_loss, test_accuracy = evaluate_jit(states, x_test, y_test)
    test_accuracy = np.asarray(test_accuracy)
    train_seconds = time.perf_counter() - start

    return SweepResult(
        variants=tuple(variants),
        momenta=np.asarray(momenta, np.float64),
        seeds=tuple(int(s) for s in seeds),
        eval_steps=np.arange(total_evals + 1) * eval_every,
        train_loss=np.concatenate(chunk_losses, axis=-1).astype(np.float64),
        test_loss=np.asarray(test_loss, np.float64),
        test_accuracy=test_accuracy.astype(np.float64),
        compile_seconds=compile_seconds,
        train_seconds=train_seconds,
    )


# ---------------------------------------------------------------------------
# Tables, CSV and figures
# ---------------------------------------------------------------------------


def mean_std(values: Sequence[float] | np.ndarray, fmt: str = ".3g", scale: float = 1.0) -> str:
    """``"mean ± std"`` of the finite values (``"n/a"`` if there are none)."""
    array = np.asarray(values, np.float64) * scale
    array = array[np.isfinite(array)]
    if array.size == 0:
        return "n/a"
    if array.size == 1:
        return format(float(array[0]), fmt)
    return f"{format(float(array.mean()), fmt)} ± {format(float(array.std()), fmt)}"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: a header, a rule, one line per row; columns padded to fit."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])]).rstrip()


def write_csv(
    path: str | os.PathLike[str], headers: Sequence[str], rows: Sequence[Sequence[Any]]
) -> Path:
    """Write ``rows`` under ``headers`` as CSV, creating the parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(headers)
        writer.writerows(rows)
    return path


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except ``None`` (the help text then explains it)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def get_pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 90) -> Path:
    """Save ``fig`` as a 256-colour palette PNG (parent directory created) and close it.

    A palette keeps a figure with shaded areas around a third of the size of a
    full-colour PNG, with no visible difference for line plots.
    """
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    get_pyplot().close(fig)
    buffer.seek(0)
    with Image.open(buffer) as image:
        palette = image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
        palette.save(path, format="PNG", optimize=True)
    return path


def add_mlp_training_arguments(
    group: Any, *, full_seeds: int, quick_seeds: int, target_loss: float
) -> None:
    """The digits-MLP training options shared by the examples that train one."""
    group.add_argument(
        "--seeds",
        type=int,
        default=None,
        help=f"number of seeds; each fixes the initial weights and the minibatch order "
        f"(default {full_seeds}, {quick_seeds} with --quick)",
    )
    group.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, +1, ...")
    group.add_argument("--batch-size", type=int, default=64, help="minibatch size")
    group.add_argument(
        "--hidden", type=int, nargs="+", default=[64, 64], help="hidden layer widths of the MLP"
    )
    group.add_argument(
        "--target-loss",
        type=float,
        default=target_loss,
        help="training loss that defines 'steps to target' (convergence speed)",
    )
    group.add_argument(
        "--eval-every", type=int, default=10, help="measure the training loss every N steps"
    )


class SeedOutcomes:
    """Counts over the seeds of one configuration.

    Mixed into result records that have ``diverged`` (a bool per seed) and
    ``steps`` (steps to the target loss per seed, NaN where it was missed).
    """

    diverged: np.ndarray
    steps: np.ndarray

    @property
    def num_seeds(self) -> int:
        return int(self.diverged.size)

    @property
    def num_diverged(self) -> int:
        return int(self.diverged.sum())

    @property
    def num_reached(self) -> int:
        return int(np.isfinite(self.steps).sum())
