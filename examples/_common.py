"""Helpers shared by the examples: data, a small MLP trained many times at once, outputs.

The scripts import this module as ``_common`` (a script's own folder is on
``sys.path`` when it runs as ``python examples/NAME.py``).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

OUT = Path(__file__).resolve().parent / "out"
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # x_train, y_train, x_test, y_test


def float64() -> Any:
    """A context in which JAX computes in float64 (``jax.enable_x64``; older JAX: experimental)."""
    context = getattr(jax, "enable_x64", None)
    if context is not None:
        return context(True)
    from jax import experimental

    return experimental.enable_x64()


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default; a flag or an option without one shows none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of a script's docstring, as plain text."""
    description = doc.split("\n\n")[0].replace("``", "")  # no reST literals in --help
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)


def out_help(name: str) -> str:
    return f"output folder (default: examples/out/{name}/, {name}_quick/ with --quick)"


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def sized_parser(
    doc: str, name: str, full: dict[str, int], quick: dict[str, int], unit: str = "steps"
) -> argparse.ArgumentParser:
    """:func:`parser` with ``--quick``, ``--steps``, ``--seeds`` and ``--out``, for a script
    whose run has ``full`` and ``quick`` sizes (dicts with ``steps`` and ``seeds``)."""
    options = parser(doc)
    options.add_argument(
        "--quick",
        action="store_true",
        help=f"a short smoke run ({quick['steps']} {unit}, {quick['seeds']} seeds) "
        f"instead of {full['steps']} {unit} and {full['seeds']} seeds",
    )
    options.add_argument(
        "--steps",
        type=positive,
        help=f"{unit} (default: {full['steps']}, {quick['steps']} with --quick)",
    )
    options.add_argument(
        "--seeds",
        type=positive,
        help=f"number of seeds (default: {full['seeds']}, {quick['seeds']} with --quick)",
    )
    options.add_argument("--out", type=Path, help=out_help(name))
    return options


def client_parser(doc: str) -> argparse.ArgumentParser:
    """Options of the client examples (flax_nnx.py, equinox_mlp.py): one digits run."""
    options = parser(doc)
    options.add_argument("--steps", type=int, default=300, help="training steps")
    options.add_argument(
        "--learning-rate", type=float, default=0.05, help="learning rate of momentum_jax.nesterov"
    )
    options.add_argument("--momentum", type=float, default=0.9, help="and its momentum")
    options.add_argument("--batch-size", type=int, default=128, help="minibatch size")
    options.add_argument(
        "--seed", type=int, default=0, help="seed of the data split, the weights and the batches"
    )
    return options


def out_dir(name: str, quick: bool, out: Path | None) -> Path:
    """``--out`` if given, else ``examples/out/NAME`` (``NAME_quick`` for a quick run)."""
    path = out if out is not None else OUT / (f"{name}_quick" if quick else name)
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- data -------------------------------------------------------------------


def load_digits(seed: int = 0) -> Data:
    """scikit-learn's bundled 8x8 digits in [0, 1], shuffled by ``seed`` and split 75/25."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    x, y = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = 3 * len(x) // 4
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def read_idx(path: Path) -> np.ndarray:
    """One IDX file of unsigned bytes (plain or gzipped), as an array of its shape."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as error:
        raise ValueError(f"{path}: cannot decompress ({error})") from error
    if len(raw) < 4 or raw[:3] != b"\0\0\x08":
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    shape = tuple(int(n) for n in np.frombuffer(raw, ">u4", ndim, offset=4))
    if len(shape) != ndim or len(raw) != 4 + 4 * ndim + int(np.prod(shape)):
        raise ValueError(f"{path}: size does not match the header's shape {shape}")
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_mnist(data_dir: Path) -> Data:
    """MNIST from ``data_dir``: the four IDX files (plain or ``.gz``), else ``mnist.npz``."""
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: no such directory")
    arrays = {}
    npz = data_dir / "mnist.npz"
    first = data_dir / IDX_FILES["x_train"]
    if not first.exists() and not first.with_name(first.name + ".gz").exists() and npz.exists():
        try:
            with np.load(npz) as archive:
                arrays = {key: archive[key] for key in IDX_FILES}
        except KeyError as error:
            raise ValueError(
                f"{npz}: missing array {error}; needs {', '.join(IDX_FILES)}"
            ) from None
        except (OSError, ValueError) as error:
            raise ValueError(f"{npz}: not a readable .npz archive ({error})") from error
    else:
        for key, stem in IDX_FILES.items():
            path = data_dir / stem
            if not path.exists() and (data_dir / f"{stem}.gz").exists():
                path = data_dir / f"{stem}.gz"
            if not path.exists():
                raise FileNotFoundError(f"{path}: not found (nor {npz})")
            arrays[key] = read_idx(path)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y):
            raise ValueError(f"{data_dir}: {len(x)} {split} images but {len(y)} labels")
    return tuple(  # type: ignore[return-value]
        arrays[k].reshape(len(arrays[k]), -1).astype(np.float32) / 255.0
        if k.startswith("x")
        else arrays[k].astype(np.int32)
        for k in IDX_FILES
    )


def load_data(name: str, data_dir: Path | None) -> Data:
    if name == "digits":
        return load_digits()
    if data_dir is None:
        raise ValueError("--data mnist needs --data-dir DIR (the IDX files or mnist.npz)")
    return load_mnist(Path(data_dir).expanduser())


# --- a small MLP, many copies trained in one program -----------------------


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> list[tuple[jax.Array, jax.Array]]:
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        (jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a), jnp.zeros(b))
        for k, (a, b) in zip(keys, itertools.pairwise(sizes), strict=True)
    ]


def logits(params: list[tuple[jax.Array, jax.Array]], x: jax.Array) -> jax.Array:
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    return x @ params[-1][0] + params[-1][1]


def cross_entropy(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits(params, x), y).mean()


def train_mlps(
    data: Data,
    optimizers: dict[str, Callable[[jax.Array], optax.GradientTransformation]],
    hypers: Sequence[float],
    seeds: Sequence[int],
    *,
    steps: int,
    eval_every: int = 10,
    batch_size: int = 64,
    hidden: Sequence[int] = (64, 64),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train one MLP per (method, hyperparameter, seed), all in one jitted program.

    ``optimizers[name](h)`` builds a method's transform from a traced scalar
    ``h`` (e.g. the momentum); ``jax.vmap`` runs over ``hypers`` and ``seeds``,
    ``lax.scan`` over the steps. A seed fixes the initial weights and the
    minibatches, shared by every method and hyperparameter.

    Returns ``(eval_steps, train_loss, test_accuracy)`` with shapes ``(E,)``,
    ``(methods, hypers, seeds, E)`` and ``(methods, hypers, seeds)``.
    """
    x, y, x_test, y_test = map(jnp.asarray, data)
    sizes = (x.shape[1], *hidden, 10)

    def one(make: Callable[..., Any], h: jax.Array, seed: jax.Array) -> Any:
        init_key, data_key = jax.random.split(jax.random.key(seed))
        optimizer = make(h)
        params = init_mlp(init_key, sizes)

        def step(carry: Any, t: jax.Array) -> Any:
            params, state = carry
            idx = jax.random.randint(jax.random.fold_in(data_key, t), (batch_size,), 0, len(x))
            grads = jax.grad(cross_entropy)(params, x[idx], y[idx])
            updates, state = optimizer.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        def block(carry: Any, t0: jax.Array) -> Any:
            carry, _ = jax.lax.scan(step, carry, t0 + jnp.arange(eval_every))
            return carry, cross_entropy(carry[0], x, y)

        starts = jnp.arange(0, steps - steps % eval_every, eval_every)
        carry, losses = jax.lax.scan(block, (params, optimizer.init(params)), starts)
        parts = [cross_entropy(params, x, y)[None], losses]
        if steps % eval_every:  # the last steps, evaluated once more at the end
            carry, _ = jax.lax.scan(step, carry, jnp.arange(steps - steps % eval_every, steps))
            parts.append(cross_entropy(carry[0], x, y)[None])
        params_end = carry[0]
        losses = jnp.concatenate(parts)
        accuracy = jnp.mean(jnp.argmax(logits(params_end, x_test), -1) == y_test)
        return losses, accuracy

    @jax.jit
    def program(hs: jax.Array, ss: jax.Array) -> Any:
        outs = []
        for make in optimizers.values():
            over_seeds = jax.vmap(lambda h, s, make=make: one(make, h, s), (None, 0))
            outs.append(jax.vmap(over_seeds, (0, None))(hs, ss))
        return jnp.stack([o[0] for o in outs]), jnp.stack([o[1] for o in outs])

    loss, acc = program(jnp.asarray(hypers, jnp.float32), jnp.asarray(seeds))
    eval_steps = np.unique(np.append(np.arange(0, steps + 1, eval_every), steps))
    return eval_steps, np.asarray(loss, np.float64), np.asarray(acc, np.float64)


# --- numbers ------------------------------------------------------------------


# The words every example prints. A run that "diverged" (``diverged``) is left
# out of the means; "never" in a table and "did not reach the target" in a
# verdict mean the same: that run's loss never got to the target.
NEVER = "never"
MISSED = "did not reach the target"
ONE_SEED = "not compared (one seed: no spread)"
DIVERGED_RULES = (
    "NaN/inf",
    "rose above 10x its initial loss",
    "ended above half its initial loss",
)


def divergence(loss: np.ndarray) -> np.ndarray:
    """Per run (last axis: time), the first of ``DIVERGED_RULES`` it breaks, or "".

    The last rule catches runs that blew up into a dead network (stuck near
    chance) or undid their progress, without ever producing a NaN.
    """
    first = loss[..., :1]
    rules = [
        ~np.all(np.isfinite(loss), -1),
        np.any(loss > 10 * first, -1),
        loss[..., -1] > 0.5 * first[..., 0],
    ]
    return np.select(rules, DIVERGED_RULES, "")


def diverged(loss: np.ndarray) -> np.ndarray:
    """Per run: NaN/inf, above 10x the initial loss, or ending above half of it."""
    return divergence(loss) != ""


def why_diverged(reasons: np.ndarray) -> str:
    """'2/2: ended above half its initial loss' for one setting's runs (reasons per seed)."""
    bad = [r for r in np.asarray(reasons).ravel() if r]
    said = ", ".join(sorted(set(bad), key=DIVERGED_RULES.index))
    return f"{len(bad)}/{np.asarray(reasons).size}" + (f": {said}" if bad else "")


def steps_to(loss: np.ndarray, eval_steps: np.ndarray, target: float) -> np.ndarray:
    """First evaluated step with ``loss <= target`` (NaN where never reached)."""
    hit = loss <= target
    return np.where(hit.any(-1), eval_steps[hit.argmax(-1)], np.nan)


def spread(values: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation over seeds (std 0 for one seed; NaN propagates)."""
    v = np.asarray(values, np.float64)
    std = v.std(axis, ddof=1) if v.shape[axis] > 1 else np.zeros_like(v.mean(axis))
    return v.mean(axis), std


def mean_std(values: np.ndarray, fmt: str = ".0f") -> str:
    """'mean ± std' over the finite values; NaN counts as "never" (a target not reached).

    No value at all means every run was left out: "all diverged".
    """
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0:
        return "all diverged"
    reached = v[np.isfinite(v)]
    if reached.size == 0:
        return NEVER
    mean, std = spread(reached)
    text = f"{mean:{fmt}} ± {std:{fmt}}" if reached.size > 1 else f"{mean:{fmt}}"
    if reached.size == v.size:
        return text
    return f"{text} ({v.size - reached.size}/{v.size} {NEVER})"


def steps_verdict(a: np.ndarray, b: np.ndarray) -> str:
    """Steps to a target of a against b: faster, slower, no clear difference, or not reached."""
    missed = int(np.isnan(np.asarray(a, np.float64)).sum())
    if missed:
        return f"{MISSED} ({missed}/{np.asarray(a).size} seeds)"
    return verdict(a, b, "faster", "slower")


def clearly_less(a: np.ndarray, b: np.ndarray) -> bool:
    """a is lower than b beyond the seed spread: mean(a) + std(a) < mean(b) - std(b).

    Needs two seeds or more. NaN means "never reached": a NaN in a is never a win;
    where b has some, a wins if every seed of a is below every value b reached.
    """
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if min(a.size, b.size) < 2 or not np.isfinite(a).all():
        return False
    if not np.isfinite(b).all():
        reached = b[np.isfinite(b)]
        return bool(reached.size == 0 or a.max() < reached.min())
    (mean_a, std_a), (mean_b, std_b) = spread(a), spread(b)
    return bool(mean_a + std_a < mean_b - std_b)


def verdict(a: np.ndarray, b: np.ndarray, less: str = "lower", more: str = "higher") -> str:
    """``less`` or ``more`` where a differs from b beyond the seed spread (see clearly_less)."""
    if min(np.size(a), np.size(b)) < 2:
        return ONE_SEED
    if clearly_less(a, b):
        return less
    return more if clearly_less(b, a) else "no clear difference"


def float32_verdict(column: np.ndarray, reference: np.ndarray) -> str:
    """How a column's final losses compare with float32's, beyond the seed spread or not."""
    said = verdict(column, reference, "better than float32", "worse than float32")
    return "within the float32 seed spread" if said == "no clear difference" else said


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with path.open("w", newline="") as stream:
        csv.writer(stream).writerows([header, *rows])


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> None:
    """Save as a 256-colour PNG: a third of the size of full colour, same look for line plots."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    pyplot().close(fig)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(
            path, optimize=True
        )
