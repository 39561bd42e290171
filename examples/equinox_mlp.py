"""Equinox: a digits classifier trained with momentum_jax and ``eqx.filter_jit``.

Equinox models are pytrees that hold arrays and everything else (activation
functions, sizes). ``eqx.filter(model, eqx.is_array)`` gives the optimizer the
arrays alone; ``eqx.filter_value_and_grad`` differentiates the floating-point
ones, and ``eqx.apply_updates`` adds the updates back. The data are
scikit-learn's bundled 8x8 digits (no download).

    python examples/equinox_mlp.py --steps 300
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import _common
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import momentum_jax


def loss_fn(model: eqx.nn.MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(model)(x), y).mean()


def make_step(optimizer: optax.GradientTransformation) -> Any:
    @eqx.filter_jit
    def step(model: eqx.nn.MLP, opt_state: Any, x: jax.Array, y: jax.Array) -> Any:
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    return step


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = _common.client_parser(__doc__).parse_args(argv)

    x_train, y_train, x_test, y_test = _common.load_digits(args.seed)

    model = eqx.nn.MLP(64, 10, width_size=128, depth=1, key=jax.random.key(args.seed))
    optimizer = momentum_jax.nesterov(args.learning_rate, momentum=args.momentum)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    step = make_step(optimizer)

    rng = np.random.default_rng(args.seed + 1)
    losses = []
    for _ in range(args.steps):
        batch = rng.choice(len(x_train), size=args.batch_size, replace=False)
        model, opt_state, loss = step(model, opt_state, x_train[batch], y_train[batch])
        losses.append(float(loss))
    predictions = jnp.argmax(jax.vmap(model)(x_test), axis=-1)
    result = {
        "first_loss": losses[0],
        "final_loss": float(np.mean(losses[-20:])),
        "test_accuracy": float(jnp.mean(predictions == y_test)),
    }
    print(
        f"Equinox + momentum_jax.nesterov: loss {result['first_loss']:.3f} -> "
        f"{result['final_loss']:.3f} (mean of the last 20 steps), "
        f"test accuracy {result['test_accuracy']:.3f} after {args.steps} steps"
    )
    return result


if __name__ == "__main__":
    main()
