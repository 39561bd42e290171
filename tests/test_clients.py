"""Real clients: short training runs in Flax NNX and Equinox against optax itself.

At a constant learning rate :func:`momentum_jax.momentum` and optax's ``sgd``
with momentum give the same iterates (``-v_t`` with the rate inside the
velocity is ``-lr * b_t`` with it outside), and so do the Nesterov forms; the
presets reduce to the same. Each run below trains the same model twice, once
with a row of the contract table (tests/_table.py) and once with its optax
equivalent, and the losses and params must agree step for step. The runs go through each framework's own machinery:
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
import numpy as np
import optax
import pytest
from flax import nnx

import momentum_jax
from momentum_jax import compat
from tests._table import Row, rows_named

pytestmark = pytest.mark.slow  # trains Flax NNX and Equinox models

STEPS = 8

X = jax.random.normal(jax.random.key(1), (16, 4))
Y = jnp.sin(X @ jnp.array([[1.0], [-2.0], [0.5], [1.5]]))

# How the user holds the transform: as built, injected, after gradient
# clipping, or under optax.MultiSteps; optax's side gets the same treatment
# (its optimizers have no hyperparameters to inject).
WRAPPERS: dict[str, Callable[[Row, bool], optax.GradientTransformation]] = {
    "plain": lambda row, ours: row.build() if ours else _optax(row),
    "injected": lambda row, ours: row.injected() if ours else _optax(row),
    "clipped": lambda row, ours: optax.chain(
        optax.clip_by_global_norm(0.05), row.build() if ours else _optax(row)
    ),
    "multisteps": lambda row, ours: optax.MultiSteps(
        row.build() if ours else _optax(row), every_k_schedule=2
    ),
}


def _optax(row: Row) -> optax.GradientTransformation:
    """The row's optax equivalent (at a constant learning rate the forms agree)."""
    make = row.reference or row.blocks
    assert make is not None, row.id
    return make()


# (row of the contract table, wrapper): the packed layout alone and in a chain too.
NNX_CASES = [
    (row, wrapper)
    for row_id, wrapper in [
        ("momentum", "plain"),
        ("nesterov", "plain"),
        ("nesterov", "injected"),
        ("torch_sgd", "injected"),
        ("keras_sgd_nesterov_weight_decay", "injected"),
        ("momentum", "clipped"),
        ("nesterov", "multisteps"),
        ("nesterov[packed]", "plain"),
        ("torch_sgd_nesterov[packed]", "plain"),
    ]
    for row in rows_named(row_id)
]
EQX_CASES = [
    case
    for case in NNX_CASES
    if (case[0].id, case[1])
    not in {
        ("keras_sgd_nesterov_weight_decay", "injected"),
        ("nesterov", "multisteps"),
        ("torch_sgd_nesterov[packed]", "plain"),
    }
]


def _ids(cases: list[tuple[Row, str]]) -> list[str]:
    return [f"{row.id}-{wrapper}" for row, wrapper in cases]


# --- Flax NNX -----------------------------------------------------------------------


class NnxModel(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.body = nnx.Linear(4, 8, rngs=rngs)
        self.head = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(jnp.tanh(self.body(x)))


_NNX_UPDATE_TAKES_MODEL = "model" in inspect.signature(nnx.Optimizer.update).parameters


def _nnx_update(optimizer: nnx.Optimizer, model: nnx.Module, grads: Any) -> None:
    if _NNX_UPDATE_TAKES_MODEL:
        optimizer.update(model, grads)
    else:  # Flax 0.10 (the newest for Python 3.10): Optimizer.update(grads)
        optimizer.update(grads)  # type: ignore[call-arg]


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
        _nnx_update(optimizer, model, grads)
        return loss

    losses = [step(model, optimizer, X, Y) for _ in range(STEPS)]
    return losses, start, nnx.to_pure_dict(nnx.state(model, nnx.Param))


@pytest.mark.parametrize(("row", "wrapper"), NNX_CASES, ids=_ids(NNX_CASES))
def test_flax_nnx_optimizer_matches_optax(row: Row, wrapper: str) -> None:
    losses, start, end = _train_nnx(WRAPPERS[wrapper](row, True))
    expected_losses, _, expected_end = _train_nnx(WRAPPERS[wrapper](row, False))
    chex.assert_trees_all_close(losses, expected_losses, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(end, expected_end, rtol=1e-5, atol=1e-7)
    assert float(losses[-1]) < float(losses[0])
    # The partitioned-off layer never moves; the trained one does.
    chex.assert_trees_all_equal(end["body"], start["body"])
    assert float(jnp.abs(end["head"]["kernel"] - start["head"]["kernel"]).max()) > 1e-3


@pytest.mark.parametrize(
    "make",
    [
        lambda: momentum_jax.momentum(
            0.05, 0.9, accumulator_dtype=jnp.int8, stochastic_rounding=True
        ),
        lambda: momentum_jax.lion(1e-3, accumulator_dtype=jnp.int8, weight_decay=0.0),
        lambda: compat.torch_sgd(
            0.05, 0.9, accumulator_dtype=jnp.int8, gradient_accumulation_steps=2
        ),
    ],
    ids=["momentum", "lion", "torch_sgd_accumulating"],
)
def test_flax_nnx_optimizer_with_int8_buffers_is_the_plain_jax_run(make: Any) -> None:
    # NNX writes the new state back into its variables, where an Int8Buffer becomes a
    # mapping of its two fields: the next update must read it as the buffer it was.
    model = nnx.Linear(64, 128, rngs=nnx.Rngs(0))  # an 8192-element kernel: int8 codes
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    x = jax.random.normal(jax.random.key(2), (16, 64))
    tx = make()
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(model: nnx.Linear, optimizer: nnx.Optimizer) -> None:
        _nnx_update(optimizer, model, nnx.grad(lambda m: jnp.mean(jnp.sin(m(x)) ** 2))(model))

    @jax.jit
    def step(params: Any, state: Any) -> Any:
        def loss(p: Any) -> jax.Array:
            return jnp.mean(jnp.sin(x @ p["kernel"] + p["bias"]) ** 2)

        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    for _ in range(4):
        nnx_step(model, optimizer)
        params, state = step(params, state)
    chex.assert_trees_all_equal(nnx.to_pure_dict(nnx.state(model, nnx.Param)), params)
    # dequantize reads the written-back mappings as buffers: the plain run's values, no codes.
    read = jax.tree.leaves(momentum_jax.dequantize(nnx.state(optimizer, nnx.optimizer.OptState)))
    assert not [x for x in read if x.dtype == jnp.int8]
    kernels = [x for x in read if x.shape == (64, 128)]
    expected = [x for x in jax.tree.leaves(momentum_jax.dequantize(state)) if x.shape == (64, 128)]
    assert len(kernels) == len(expected) > 0
    for got, want in zip(kernels, expected, strict=True):
        chex.assert_trees_all_equal(got, want)


def test_flax_nnx_int8_state_is_a_scan_carry_after_one_update() -> None:
    """docs/clients.md: after one update the state has the form NNX writes back, which a
    lax.scan over nnx.split state then carries unchanged (before it, the carry's
    structure would change at the first step)."""
    x = jax.random.normal(jax.random.key(3), (16, 64))

    def update(model: nnx.Linear, optimizer: nnx.Optimizer) -> None:
        _nnx_update(optimizer, model, nnx.grad(lambda m: jnp.mean(jnp.sin(m(x)) ** 2))(model))

    def build() -> tuple[nnx.Linear, nnx.Optimizer]:
        model = nnx.Linear(64, 128, rngs=nnx.Rngs(0))  # an 8192-element kernel: int8 codes
        tx = momentum_jax.momentum(0.1, 0.9, accumulator_dtype=jnp.int8)
        return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

    model, optimizer = build()
    update(model, optimizer)
    graphdef, state = nnx.split((model, optimizer))

    def body(state: Any, _: Any) -> Any:
        model, optimizer = nnx.merge(graphdef, state)
        update(model, optimizer)
        return nnx.state((model, optimizer)), None

    state, _ = jax.jit(lambda s: jax.lax.scan(body, s, None, length=3))(state)
    scanned, _ = nnx.merge(graphdef, state)
    model, optimizer = build()
    for _ in range(4):
        nnx.jit(update)(model, optimizer)
    chex.assert_trees_all_close(
        nnx.to_pure_dict(nnx.state(scanned, nnx.Param)),
        nnx.to_pure_dict(nnx.state(model, nnx.Param)),
        rtol=1e-5,
    )


@pytest.mark.parametrize("how", ["accumulation", "nan guard"])
def test_flax_nnx_int8_accumulates_and_is_guarded_as_clients_md_says(how: str) -> None:
    """docs/clients.md: with int8 buffers in NNX's Optimizer, gradient_accumulation_steps runs,
    and optax.zero_nans before the transform keeps a NaN batch out of the state and the params
    (MultiSteps and apply_if_finite around the transform fail there; apply_if_finite after it
    leaves the NaN in the velocity)."""
    int8 = {"accumulator_dtype": jnp.int8}
    tx = (
        momentum_jax.momentum(0.1, 0.9, gradient_accumulation_steps=2, **int8)
        if how == "accumulation"
        else optax.chain(optax.zero_nans(), momentum_jax.momentum(0.1, 0.9, **int8))
    )
    model = nnx.Linear(64, 128, rngs=nnx.Rngs(0))  # an 8192-element kernel: int8 codes
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    start = np.asarray(model.kernel[...])

    @nnx.jit
    def step(model: nnx.Linear, optimizer: nnx.Optimizer, x: jax.Array) -> None:
        _nnx_update(optimizer, model, nnx.grad(lambda m: jnp.mean(jnp.sin(m(x)) ** 2))(model))

    for k in range(4):
        x = jax.random.normal(jax.random.key(k), (16, 64))
        step(model, optimizer, x * np.nan if how == "nan guard" and k == 1 else x)
    velocity = momentum_jax.dequantize(nnx.state(optimizer, nnx.optimizer.OptState))
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(velocity))
    assert np.isfinite(np.asarray(model.kernel[...])).all()
    assert not np.array_equal(np.asarray(model.kernel[...]), start)


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


@pytest.mark.parametrize(("row", "wrapper"), EQX_CASES, ids=_ids(EQX_CASES))
def test_equinox_filter_jit_with_an_integer_leaf_matches_optax(row: Row, wrapper: str) -> None:
    losses, model = _train_eqx(WRAPPERS[wrapper](row, True))
    # The reference sees the float leaves only: optax before 0.2.5 (our floor is
    # 0.2.4) cannot pair a None gradient with an integer param.
    expected_losses, expected_model = _train_eqx(
        WRAPPERS[wrapper](row, False), eqx.is_inexact_array
    )
    chex.assert_trees_all_close(losses, expected_losses, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(
        eqx.filter(model, eqx.is_inexact_array),
        eqx.filter(expected_model, eqx.is_inexact_array),
        rtol=1e-5,
        atol=1e-7,
    )
    assert float(losses[-1]) < float(losses[0])
    assert int(model.seen) == STEPS
