"""Real clients: short training runs in Flax NNX and Equinox against optax itself.

At a constant learning rate :func:`momentum_jax.momentum` and optax's ``sgd``
with momentum give the same iterates (``-v_t`` with the rate inside the
velocity is ``-lr * b_t`` with it outside), and so do the Nesterov forms; the
presets reduce to the same. Each run below trains the same model twice, once
with our transform and once with optax's, and the losses and params must agree
step for step. The runs go through each framework's own machinery:
``nnx.Optimizer(..., wrt=nnx.Param)`` under ``nnx.jit`` with a frozen part
(``optax.partition``), and ``eqx.filter_jit`` with a model that holds an integer
array, which ``eqx.filter_grad`` gives a ``None`` gradient. The packed state
layout runs through both, alone and inside a chain.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

import momentum_jax
from momentum_jax import compat

pytestmark = pytest.mark.slow  # trains Flax NNX and Equinox models

LR = 0.05
MU = 0.9
STEPS = 8

X = jax.random.normal(jax.random.key(1), (16, 4))
Y = jnp.sin(X @ jnp.array([[1.0], [-2.0], [0.5], [1.5]]))

Pair = tuple[Callable[[], optax.GradientTransformation], Callable[[], optax.GradientTransformation]]

# ours, optax's
PAIRS: dict[str, Pair] = {
    "momentum": (lambda: momentum_jax.momentum(LR, MU), lambda: optax.sgd(LR, MU)),
    "nesterov": (
        lambda: momentum_jax.nesterov(LR, MU),
        lambda: optax.sgd(LR, MU, nesterov=True),
    ),
    "injected_nesterov": (
        lambda: optax.inject_hyperparams(momentum_jax.nesterov)(learning_rate=LR, momentum=MU),
        lambda: optax.sgd(LR, MU, nesterov=True),
    ),
    "injected_torch_sgd": (
        lambda: optax.inject_hyperparams(compat.torch_sgd)(lr=LR, momentum=MU),
        lambda: optax.sgd(LR, MU),
    ),
    "injected_keras_sgd": (
        lambda: optax.inject_hyperparams(compat.keras_sgd, static_args="nesterov")(
            learning_rate=LR, momentum=MU, nesterov=True
        ),
        lambda: optax.sgd(LR, MU, nesterov=True),
    ),
    "clipped": (
        lambda: optax.chain(optax.clip_by_global_norm(0.05), momentum_jax.momentum(LR, MU)),
        lambda: optax.chain(optax.clip_by_global_norm(0.05), optax.sgd(LR, MU)),
    ),
    "multisteps": (
        lambda: optax.MultiSteps(momentum_jax.nesterov(LR, MU), every_k_schedule=2),
        lambda: optax.MultiSteps(optax.sgd(LR, MU, nesterov=True), every_k_schedule=2),
    ),
    # The packed state layout, alone and in a chain.
    "packed_nesterov": (
        lambda: momentum_jax.nesterov(LR, MU, layout="packed"),
        lambda: optax.sgd(LR, MU, nesterov=True),
    ),
    "packed_torch_sgd": (
        lambda: momentum_jax.compat.torch_sgd(LR, MU, weight_decay=0.01, layout="packed"),
        lambda: optax.chain(optax.add_decayed_weights(0.01), optax.sgd(LR, MU)),
    ),
}
NNX_CASES = list(PAIRS)
EQX_CASES = [
    "momentum",
    "nesterov",
    "injected_nesterov",
    "injected_torch_sgd",
    "clipped",
    "packed_nesterov",
]


# --- Flax NNX -----------------------------------------------------------------------


class NnxModel(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.body = nnx.Linear(4, 8, rngs=rngs)
        self.head = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(jnp.tanh(self.body(x)))


_NNX_UPDATE_TAKES_MODEL = "model" in inspect.signature(nnx.Optimizer.update).parameters


def _frozen_body(params: Any) -> Any:
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if path[0].key == "body" else "train", params
    )


def _train_nnx(tx: optax.GradientTransformation) -> tuple[list[jax.Array], Any, Any]:
    model = NnxModel(nnx.Rngs(0))
    # Plain arrays: the State holds the live Variables that update() replaces.
    start = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    # optax.partition is optax 0.2.5's name for multi_transform (0.2.4, our floor).
    partition = getattr(optax, "partition", None) or optax.multi_transform
    tx = partition({"train": tx, "frozen": optax.set_to_zero()}, _frozen_body)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model: NnxModel, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> Any:
        def loss_fn(model: NnxModel) -> jax.Array:
            return jnp.mean((model(x) - y) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        if _NNX_UPDATE_TAKES_MODEL:
            optimizer.update(model, grads)
        else:  # Flax 0.10 (the newest for Python 3.10): Optimizer.update(grads)
            optimizer.update(grads)  # type: ignore[call-arg]
        return loss

    losses = [step(model, optimizer, X, Y) for _ in range(STEPS)]
    return losses, start, nnx.to_pure_dict(nnx.state(model, nnx.Param))


@pytest.mark.parametrize("case", NNX_CASES)
def test_flax_nnx_optimizer_matches_optax(case: str) -> None:
    ours, theirs = PAIRS[case]
    losses, start, end = _train_nnx(ours())
    expected_losses, _, expected_end = _train_nnx(theirs())
    chex.assert_trees_all_close(losses, expected_losses, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(end, expected_end, rtol=1e-5, atol=1e-7)
    assert float(losses[-1]) < float(losses[0])
    # The partitioned-off layer never moves; the trained one does.
    chex.assert_trees_all_equal(end["body"], start["body"])
    assert float(jnp.abs(end["head"]["kernel"] - start["head"]["kernel"]).max()) > 1e-3


# --- Equinox ------------------------------------------------------------------------


class EqxModel(eqx.Module):
    mlp: eqx.nn.MLP
    # An integer array: kept by eqx.filter(model, eqx.is_array), never trained.
    seen: jax.Array


def _train_eqx(
    tx: optax.GradientTransformation, keep: Any = eqx.is_array
) -> tuple[list[jax.Array], EqxModel]:
    model = EqxModel(
        eqx.nn.MLP(4, 1, 8, 1, activation=jnp.tanh, key=jax.random.key(0)),
        jnp.zeros((), jnp.int32),
    )
    state = tx.init(eqx.filter(model, keep))

    def loss_fn(model: EqxModel, x: jax.Array, y: jax.Array) -> jax.Array:
        return jnp.mean((jax.vmap(model.mlp)(x) - y) ** 2)

    @eqx.filter_jit
    def step(model: EqxModel, state: Any, x: jax.Array, y: jax.Array) -> Any:
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, x, y)
        assert grads.seen is None
        updates, state = tx.update(grads, state, eqx.filter(model, keep))
        model = eqx.apply_updates(model, updates)
        model = eqx.tree_at(lambda m: m.seen, model, model.seen + 1)
        return model, state, loss

    losses = []
    for _ in range(STEPS):
        model, state, loss = step(model, state, X, Y)
        losses.append(loss)
    return losses, model


@pytest.mark.parametrize("case", EQX_CASES)
def test_equinox_filter_jit_with_an_integer_leaf_matches_optax(case: str) -> None:
    ours, theirs = PAIRS[case]
    losses, model = _train_eqx(ours())
    # The reference sees the float leaves only: optax before 0.2.5 (our floor is
    # 0.2.4) cannot pair a None gradient with an integer param.
    expected_losses, expected_model = _train_eqx(theirs(), eqx.is_inexact_array)
    chex.assert_trees_all_close(losses, expected_losses, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(
        eqx.filter(model, eqx.is_inexact_array),
        eqx.filter(expected_model, eqx.is_inexact_array),
        rtol=1e-5,
        atol=1e-7,
    )
    assert float(losses[-1]) < float(losses[0])
    assert int(model.seen) == STEPS
