"""A character-level language model on Python's own sources: float32 against int8 state.

A next-character MLP (16 characters of context, each embedded in 32
dimensions, then 1024 and 512 ReLU units: 1.12M params) is trained on the
standard library's ``.py`` files, which every Python installation ships, with
``momentum_jax.nesterov`` and with ``momentum_jax.lion``, each with a float32
buffer and with an int8 buffer quantized stochastically
(``accumulator_dtype=jnp.int8, stochastic_rounding=True``): about one byte of
optimizer state per param instead of four.

It prints the validation loss (bits per character, on the last tenth of the
text) after each run, mean ± std over seeds, and calls int8 worse or better
than float32 only when the mean ± std intervals do not overlap
(``_common.verdict``), printing both. Writes ``int8_char_lm.csv`` and
``int8_char_lm_loss.png`` to ``examples/out/int8_char_lm/`` (``..._quick/``).

    python examples/int8_char_lm.py            # 600 steps, 3 seeds: 67 s on 2 idle cores
    python examples/int8_char_lm.py --quick    # 64 steps, 2 seeds
"""

from __future__ import annotations

import argparse
import math
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common
import jax
import jax.numpy as jnp
import numpy as np
import optax

import momentum_jax

CONTEXT, EMBED, HIDDEN, VOCAB = 16, 32, (1024, 512), 128
BATCH = 128
OPTIMIZERS = {
    "nesterov": lambda **state: momentum_jax.nesterov(0.05, 0.9, **state),
    "lion": lambda **state: momentum_jax.lion(1e-3, weight_decay=0.01, **state),
}
COLUMNS = {"float32": {}, "int8": {"accumulator_dtype": jnp.int8, "stochastic_rounding": True}}
FULL = {"steps": 600, "seeds": 3, "bytes": 4_000_000}
QUICK = {"steps": 64, "seeds": 2, "bytes": 500_000}
CSV_HEADER = ["optimizer", "state", "bytes_per_param", "bits_per_char_mean", "bits_per_char_std"]
CSV_HEADER.append("verdict")


def load_text(size: int) -> np.ndarray:
    """The first ``size`` bytes of the standard library's top-level modules, in name order,
    as character codes below 128."""
    chunks, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        chunks.append(path.read_bytes())
        total += len(chunks[-1])
        if total >= size:
            break
    text = np.frombuffer(b"".join(chunks)[:size], np.uint8)
    return np.minimum(text, VOCAB - 1).astype(np.int32)


def init(key: jax.Array) -> dict[str, Any]:
    sizes = (CONTEXT * EMBED, *HIDDEN, VOCAB)
    keys = jax.random.split(key, len(sizes))
    layers = [
        {"w": jax.random.normal(k, (a, b)) * math.sqrt(2 / a), "b": jnp.zeros(b)}
        for k, a, b in zip(keys[1:], sizes[:-1], sizes[1:], strict=True)
    ]
    return {"embed": jax.random.normal(keys[0], (VOCAB, EMBED)), "layers": layers}


def loss_fn(params: dict[str, Any], windows: jax.Array) -> jax.Array:
    """Mean cross-entropy (nats) of each window's last character given the ones before it."""
    x = params["embed"][windows[:, :-1]].reshape(len(windows), -1)
    for layer in params["layers"][:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    logits = x @ params["layers"][-1]["w"] + params["layers"][-1]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, windows[:, -1]).mean()


def windows_at(text: jax.Array, starts: jax.Array) -> jax.Array:
    return jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(text, s, CONTEXT + 1))(starts)


def train(
    tx: optax.GradientTransformation, text: np.ndarray, seeds: Sequence[int], steps: int
) -> np.ndarray:
    """Validation loss in bits per character, every ``steps // 8`` steps: (seeds, evaluations)."""
    cut = len(text) * 9 // 10
    train_text, valid_text = jnp.asarray(text[:cut]), jnp.asarray(text[cut:])
    valid = windows_at(valid_text, jnp.arange(0, len(valid_text) - CONTEXT - 1, 97)[:4096])
    every = max(steps // 8, 1)

    def one(seed: jax.Array) -> jax.Array:
        init_key, data_key = jax.random.split(jax.random.key(seed))
        params = init(init_key)

        def step(carry: Any, t: jax.Array) -> Any:
            params, state = carry
            starts = jax.random.randint(
                jax.random.fold_in(data_key, t), (BATCH,), 0, cut - CONTEXT - 1
            )
            grads = jax.grad(loss_fn)(params, windows_at(train_text, starts))
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        def block(carry: Any, t0: jax.Array) -> Any:
            carry, _ = jax.lax.scan(step, carry, t0 + jnp.arange(every))
            return carry, loss_fn(carry[0], valid)

        _, losses = jax.lax.scan(block, (params, tx.init(params)), jnp.arange(0, steps, every))
        return jnp.concatenate([loss_fn(params, valid)[None], losses]) / math.log(2)

    return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(seeds)), np.float64)


def bytes_per_param(tx: optax.GradientTransformation) -> float:
    """Optimizer state per param, measured from the arrays the state holds."""
    params = init(jax.random.key(0))
    state = jax.eval_shape(tx.init, params)
    size = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state)) / size


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _common.parser(__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK['steps']} steps on {QUICK['bytes']:,} bytes of text instead of "
        f"{FULL['steps']} on {FULL['bytes']:,}",
    )
    parser.add_argument("--out", type=Path, help=_common.out_help("int8_char_lm"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    preset = QUICK if args.quick else FULL
    seeds = list(range(preset["seeds"]))
    out = _common.out_dir("int8_char_lm", args.quick, args.out)
    start = time.perf_counter()
    text = load_text(preset["bytes"])
    params = sum(x.size for x in jax.tree.leaves(init(jax.random.key(0))))
    print(f"{len(text):,} characters of {sysconfig.get_paths()['stdlib']}, {params:,} params")
    curves, sizes, rows, verdicts = {}, {}, [], {}
    for name, make in OPTIMIZERS.items():
        for column, options in COLUMNS.items():
            tx = make(**options)
            curves[(name, column)] = train(tx, text, seeds, preset["steps"])
            sizes[(name, column)] = bytes_per_param(tx)
        reference = curves[(name, "float32")][:, -1]
        for column in COLUMNS:
            final = curves[(name, column)][:, -1]
            said = "reference" if column == "float32" else _common.float32_verdict(final, reference)
            verdicts[(name, column)] = said
            mean, std = _common.spread(final)
            rows.append([name, column, sizes[(name, column)], mean, std, said])
            print(
                f"{name:>9} {column:>8}: {_common.mean_std(final, '.4f')} bits/char, "
                f"{sizes[(name, column)]:.2f} bytes of state per param, {said}"
                + (f" [{_common.mean_std(reference, '.4f')}]" if column != "float32" else "")
            )
    _common.write_csv(out / "int8_char_lm.csv", CSV_HEADER, rows)
    plot(curves, preset["steps"], out / "int8_char_lm_loss.png")
    print(f"wrote {out} in {time.perf_counter() - start:.0f} s")
    return {"curves": curves, "verdicts": verdicts, "bytes_per_param": sizes, "out": out}


def plot(curves: dict[tuple[str, str], np.ndarray], steps: int, path: Path) -> None:
    plt = _common.pyplot()
    fig, axes = plt.subplots(1, len(OPTIMIZERS), figsize=(9, 3.6), sharey=True)
    for ax, name in zip(axes, OPTIMIZERS, strict=True):
        for column, style in zip(COLUMNS, (":", "-"), strict=True):
            runs = curves[(name, column)]
            x = np.linspace(0, steps, runs.shape[1])
            ax.plot(
                x, runs.mean(0), style, color="#000000" if style == ":" else "#0072B2", label=column
            )
        ax.set(title=name, xlabel="step")
    axes[0].set_ylabel("validation bits per character")
    axes[-1].legend()
    _common.save(fig, path)


if __name__ == "__main__":
    main()
