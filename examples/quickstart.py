"""Quick start: a jit-compiled training loop with momentum_jax inside an optax chain.

Trains a one-hidden-layer classifier on scikit-learn's bundled 8x8 handwritten
digits (no download) with Nesterov momentum, a warm-up + cosine learning-rate
schedule and global-norm clipping, then reports test accuracy.

    python examples/quickstart.py --steps 600
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import momentum_jax


def load_digits_split(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The bundled 8x8 digits, scaled to [0, 1] and split 80/20."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> list[dict[str, jax.Array]]:
    layers = []
    keys = jax.random.split(key, len(sizes) - 1)
    for k, (fan_in, fan_out) in zip(keys, itertools.pairwise(sizes), strict=True):
        w = jax.random.normal(k, (fan_in, fan_out)) * jnp.sqrt(2.0 / fan_in)
        layers.append({"w": w, "b": jnp.zeros(fan_out)})
    return layers


def logits(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def loss_fn(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits(params, x), y).mean()


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=600, help="training steps")
    parser.add_argument("--batch-size", type=int, default=128, help="minibatch size")
    parser.add_argument(
        "--learning-rate", type=float, default=0.1, help="peak of the warm-up + cosine schedule"
    )
    parser.add_argument("--momentum", type=float, default=0.9, help="Nesterov momentum")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the data split, the weights and the batches"
    )
    args = parser.parse_args(argv)

    x_train, y_train, x_test, y_test = map(jnp.asarray, load_digits_split(args.seed))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=args.learning_rate,
        warmup_steps=max(args.steps // 20, 1),
        decay_steps=args.steps,
    )
    optimizer = optax.chain(
        optax.clip_by_global_norm(1.0),
        momentum_jax.nesterov(schedule, momentum=args.momentum),
    )
    key, init_key = jax.random.split(jax.random.key(args.seed))
    params = init_mlp(init_key, [64, 64, 10])
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(params: Any, opt_state: Any, key: jax.Array) -> tuple[Any, Any, jax.Array]:
        idx = jax.random.randint(key, (args.batch_size,), 0, x_train.shape[0])
        loss, grads = jax.value_and_grad(loss_fn)(params, x_train[idx], y_train[idx])
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    # Per step: the loss of that step's minibatch (noisy). At the end: the loss
    # over the whole training set, a different number.
    start = time.perf_counter()
    for step in range(args.steps):
        key, batch_key = jax.random.split(key)
        params, opt_state, loss = train_step(params, opt_state, batch_key)
        if step % max(args.steps // 6, 1) == 0 or step == args.steps - 1:
            print(
                f"step {step:5d}  minibatch loss {float(loss):.4f}  lr {float(schedule(step)):.4f}"
            )
    seconds = time.perf_counter() - start

    accuracy = float(jnp.mean(jnp.argmax(logits(params, x_test), -1) == y_test))
    train_loss = float(loss_fn(params, x_train, y_train))
    print(
        f"after {args.steps} steps: loss over all {len(x_train)} training examples "
        f"{train_loss:.4f}, test accuracy {accuracy:.3f} ({seconds:.1f} s)"
    )
    return {"train_loss": train_loss, "test_accuracy": accuracy}


if __name__ == "__main__":
    main()
