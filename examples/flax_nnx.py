"""Flax NNX: a digits classifier trained with momentum_jax inside ``nnx.Optimizer``.

The optimizer is an ordinary optax transform, so ``nnx.Optimizer`` takes it as
it takes ``optax.sgd``; ``wrt=nnx.Param`` keeps the optimizer away from any
other state the model holds. The data are scikit-learn's bundled 8x8 digits
(no download). Needs Flax 0.11 or newer (``optimizer.update(model, grads)``).

    python examples/flax_nnx.py --steps 300
"""

from __future__ import annotations

from collections.abc import Sequence

import _common
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import momentum_jax


class MLP(nnx.Module):
    def __init__(self, hidden: int, *, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(64, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 10, rngs=rngs)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return self.out(nnx.relu(self.hidden(x)))


def loss_fn(model: MLP, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def train_step(model: MLP, optimizer: nnx.Optimizer, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def accuracy(model: MLP, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    return jnp.mean(jnp.argmax(model(x), axis=-1) == y)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = _common.client_parser(__doc__).parse_args(argv)

    x_train, y_train, x_test, y_test = _common.load_digits(args.seed)

    model = MLP(128, rngs=nnx.Rngs(args.seed))
    tx = momentum_jax.nesterov(args.learning_rate, momentum=args.momentum)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    rng = np.random.default_rng(args.seed + 1)
    losses = []
    for _ in range(args.steps):
        batch = rng.choice(len(x_train), size=args.batch_size, replace=False)
        losses.append(float(train_step(model, optimizer, x_train[batch], y_train[batch])))
    result = {
        "first_loss": losses[0],
        "final_loss": float(np.mean(losses[-20:])),
        "test_accuracy": float(accuracy(model, x_test, y_test)),
    }
    print(
        f"Flax NNX + momentum_jax.nesterov: loss {result['first_loss']:.3f} -> "
        f"{result['final_loss']:.3f} (mean of the last 20 steps), "
        f"test accuracy {result['test_accuracy']:.3f} after {args.steps} steps"
    )
    return result


if __name__ == "__main__":
    main()
