"""One table of every public transform, crossed with every property of the contract.

Each :class:`Row` names a factory and splits its arguments in two: ``hyper``,
the numeric hyperparameters (``optax.inject_hyperparams`` injects every one of
them, zeros included), and ``static``, everything else (booleans, dtypes, tuples
and schedules, passed through ``static_args`` unchanged). Every property below
runs over every row (optax's optimizers-under-test pattern):

* jit equals eager over several steps of a quadratic with a non-diagonal
  Hessian (so the gradients change every step), and the jitted step is traced
  once;
* eager ``init`` and jitted ``update`` under ``optax.inject_hyperparams`` follow
  the plain transform's trajectory, with all numeric hyperparameters injected
  at once and with each one injected alone;
* where optax has a numerically equivalent optimizer, the row follows its
  trajectory; where the row is a composition of blocks (optax's or our own),
  it is bit-identical to that composition written out;
* the state's structure, shapes and dtypes survive ``lax.scan`` and ``lax.cond``
  carries for float16, bfloat16, float32, complex64 and weakly typed params, and
  float64 under x64; updates come back in the gradients' dtypes;
* ``jax.eval_shape(tx.init, params)`` matches ``tx.init(params)``;
* bfloat16 and float16 scalar hyperparameters are accepted, checked in the
  precision the arithmetic uses;
* ``None`` leaves pass through, and integer or boolean leaves whose gradient is
  ``None`` get no buffer and a ``None`` update (as Equinox models need).
"""

from __future__ import annotations

import dataclasses
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

import momentum_jax
from momentum_jax import compat
from tests import _jax_compat, _problems

STEPS = 4
LR = 0.05
MU = 0.9


def _decay(count: Any) -> Any:
    return LR / (1.0 + 0.1 * count)


def _rising(count: Any) -> Any:
    return jnp.minimum(0.5 + 0.1 * count, 0.95)


def scale_by_momentum_then_lr(
    learning_rate: Any,
    momentum: Any,
    dampening: Any = 0.0,
    nesterov: bool = False,
    accumulator_dtype: Any = None,
    layout: str = "per_leaf",
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> optax.GradientTransformation:
    """The building block as the api shows it: chained with optax's learning rate."""
    return optax.chain(
        momentum_jax.scale_by_momentum(
            momentum,
            nesterov=nesterov,
            dampening=dampening,
            accumulator_dtype=accumulator_dtype,
            layout=layout,
            stochastic_rounding=stochastic_rounding,
            seed=seed,
        ),
        optax.scale_by_learning_rate(learning_rate),
    )


# The learning-rate-free variant blocks are looked up when a row is built, not
# at import: a block that is not exported yet fails its own rows and no others.
def scale_by_qhm_then_lr(
    learning_rate: Any, momentum: Any, nu: Any, layout: str = "per_leaf"
) -> Any:
    block = momentum_jax.scale_by_qhm(momentum=momentum, nu=nu, layout=layout)
    return optax.chain(block, optax.scale_by_learning_rate(learning_rate))


def scale_by_aggmo_then_lr(learning_rate: Any, momenta: Any, layout: str = "per_leaf") -> Any:
    block = momentum_jax.scale_by_aggmo(momenta=momenta, layout=layout)
    return optax.chain(block, optax.scale_by_learning_rate(learning_rate))


def momentum_then_round_params(
    learning_rate: Any, momentum: Any, seed: int = 0, layout: str = "per_leaf"
) -> optax.GradientTransformation:
    """bfloat16 params: stochastically rounded velocity, then the params stage."""
    return optax.chain(
        momentum_jax.momentum(
            learning_rate, momentum, stochastic_rounding=True, seed=seed, layout=layout
        ),
        momentum_jax.stochastic_round_params(seed=seed),
    )


@dataclasses.dataclass(frozen=True)
class Row:
    """One public transform with representative hyperparameters."""

    id: str
    factory: Callable[..., optax.GradientTransformation]
    hyper: dict[str, float]
    static: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The optax optimizer it is numerically equivalent to (the same trajectory
    # up to rounding), where optax has one.
    reference: Callable[[], optax.GradientTransformation] | None = None
    # The same optimizer composed of optax's (or our own) blocks: bit for bit.
    blocks: Callable[[], optax.GradientTransformation] | None = None
    complex_params: bool = True

    def build(self, **override: Any) -> optax.GradientTransformation:
        return self.factory(**{**self.hyper, **self.static, **override})

    def injected(self, **override: Any) -> optax.GradientTransformation:
        inject = optax.inject_hyperparams(self.factory, static_args=tuple(self.static))
        return inject(**{**self.hyper, **self.static, **override})


ROWS = [
    # --- momentum_jax.momentum / nesterov: lr inside the velocity.
    Row(
        "momentum",
        momentum_jax.momentum,
        {"learning_rate": LR, "momentum": MU},
        reference=lambda: optax.sgd(LR, MU),
        # lr inside the velocity is the order of two optax stages.
        blocks=lambda: optax.chain(optax.scale_by_learning_rate(LR), optax.trace(MU)),
    ),
    Row(
        "momentum_zero_weight_decay",
        momentum_jax.momentum,
        {"learning_rate": LR, "momentum": MU, "weight_decay": 0.0},
        reference=lambda: optax.sgd(LR, MU),
    ),
    Row(
        "momentum_weight_decay",
        momentum_jax.momentum,
        {"learning_rate": LR, "momentum": MU, "weight_decay": 0.01},
        reference=lambda: optax.chain(optax.add_decayed_weights(0.01), optax.sgd(LR, MU)),
        blocks=lambda: optax.chain(
            optax.add_decayed_weights(0.01), optax.scale_by_learning_rate(LR), optax.trace(MU)
        ),
    ),
    Row(
        # A learning-rate schedule inside the velocity: unlike optax.sgd's
        # v = mu v + g, theta -= lr_t v, each lr_t scales only its own gradient.
        "momentum_lr_schedule",
        momentum_jax.momentum,
        {"momentum": MU},
        {"learning_rate": _decay},
        blocks=lambda: optax.chain(optax.scale_by_learning_rate(_decay), optax.trace(MU)),
    ),
    Row(
        "momentum_schedules",
        momentum_jax.momentum,
        {"weight_decay": 0.01},
        {"learning_rate": _decay, "momentum": _rising},
    ),
    Row(
        "momentum_float32_accumulator",
        momentum_jax.momentum,
        {"learning_rate": LR, "momentum": MU},
        {"accumulator_dtype": jnp.float32},
        reference=lambda: optax.sgd(LR, MU),
        complex_params=False,
    ),
    Row(
        "momentum_nesterov_flag",
        momentum_jax.momentum,
        {"learning_rate": LR, "momentum": MU, "weight_decay": 0.0},
        {"nesterov": True},
        reference=lambda: optax.sgd(LR, MU, nesterov=True),
    ),
    Row(
        "nesterov",
        momentum_jax.nesterov,
        {"learning_rate": LR, "momentum": MU},
        reference=lambda: optax.sgd(LR, MU, nesterov=True),
    ),
    Row(
        "nesterov_momentum_schedule",
        momentum_jax.nesterov,
        {"learning_rate": LR, "weight_decay": 0.01},
        {"momentum": _rising},
    ),
    Row(
        "nesterov_float32_accumulator",
        momentum_jax.nesterov,
        {"learning_rate": LR, "momentum": MU},
        {"accumulator_dtype": jnp.float32},
        reference=lambda: optax.sgd(LR, MU, nesterov=True),
        complex_params=False,
    ),
    # --- scale_by_momentum: the gradient buffer, lr outside.
    Row(
        "scale_by_momentum",
        scale_by_momentum_then_lr,
        {"learning_rate": LR, "momentum": MU, "dampening": 0.0},
        blocks=lambda: optax.chain(optax.trace(MU), optax.scale_by_learning_rate(LR)),
    ),
    Row(
        "scale_by_momentum_dampening",
        scale_by_momentum_then_lr,
        {"learning_rate": LR, "momentum": MU, "dampening": 0.1},
    ),
    Row(
        "scale_by_momentum_nesterov",
        scale_by_momentum_then_lr,
        {"learning_rate": LR, "momentum": MU, "dampening": 0.0},
        {"nesterov": True},
        blocks=lambda: optax.chain(
            optax.trace(MU, nesterov=True), optax.scale_by_learning_rate(LR)
        ),
    ),
    Row(
        "scale_by_momentum_lr_schedule",
        scale_by_momentum_then_lr,
        {"momentum": MU},
        {"learning_rate": _decay},
        blocks=lambda: optax.sgd(_decay, MU),
    ),
    Row(
        "scale_by_momentum_momentum_schedule",
        scale_by_momentum_then_lr,
        {"learning_rate": LR, "dampening": 0.1},
        {"momentum": _rising},
    ),
    Row(
        "scale_by_momentum_float32_accumulator",
        scale_by_momentum_then_lr,
        {"learning_rate": LR, "momentum": MU},
        {"accumulator_dtype": jnp.float32},
        blocks=lambda: optax.chain(optax.trace(MU), optax.scale_by_learning_rate(LR)),
        complex_params=False,
    ),
    # --- framework presets.
    Row(
        "torch_sgd",
        compat.torch_sgd,
        {"lr": LR, "momentum": MU, "dampening": 0.0, "weight_decay": 0.0},
        blocks=lambda: optax.sgd(LR, MU),
    ),
    Row(
        "torch_sgd_defaults",
        compat.torch_sgd,
        {"lr": LR, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0},
        blocks=lambda: optax.sgd(LR),
    ),
    Row(
        "torch_sgd_dampening_weight_decay",
        compat.torch_sgd,
        {"lr": LR, "momentum": MU, "dampening": 0.1, "weight_decay": 0.01},
    ),
    Row(
        "torch_sgd_nesterov",
        compat.torch_sgd,
        {"lr": LR, "momentum": MU, "dampening": 0.0, "weight_decay": 0.01},
        {"nesterov": True},
        blocks=lambda: optax.chain(
            optax.add_decayed_weights(0.01), optax.sgd(LR, MU, nesterov=True)
        ),
    ),
    Row(
        "torch_sgd_maximize_lr_schedule",
        compat.torch_sgd,
        {"momentum": MU, "weight_decay": 0.0},
        {"lr": _decay, "maximize": True},
        blocks=lambda: optax.chain(optax.scale(-1.0), optax.sgd(_decay, MU)),
    ),
    Row(
        "keras_sgd",
        compat.keras_sgd,
        {"learning_rate": LR, "momentum": MU},
        reference=lambda: optax.sgd(LR, MU),
    ),
    Row(
        "keras_sgd_defaults",
        compat.keras_sgd,
        {"learning_rate": LR, "momentum": 0.0},
        blocks=lambda: optax.sgd(LR),
    ),
    Row(
        "keras_sgd_zero_weight_decay",
        compat.keras_sgd,
        {"learning_rate": LR, "momentum": MU, "weight_decay": 0.0},
        reference=lambda: optax.sgd(LR, MU),
    ),
    Row(
        "keras_sgd_nesterov_weight_decay",
        compat.keras_sgd,
        {"learning_rate": LR, "momentum": MU, "weight_decay": 0.01},
        {"nesterov": True},
        # Keras shrinks theta by lr * wd * theta beside the momentum step.
        reference=lambda: optax.chain(
            optax.sgd(LR, MU, nesterov=True), optax.add_decayed_weights(-LR * 0.01)
        ),
    ),
    Row(
        "tf1_momentum",
        compat.tf1_momentum,
        {"learning_rate": LR, "momentum": MU},
        blocks=lambda: optax.sgd(LR, MU),
    ),
    Row(
        "tf1_momentum_nesterov_lr_schedule",
        compat.tf1_momentum,
        {"momentum": MU},
        {"learning_rate": _decay, "use_nesterov": True},
        blocks=lambda: optax.sgd(_decay, MU, nesterov=True),
    ),
    # --- variants and their learning-rate-free blocks.
    Row("qhm", momentum_jax.qhm, {"learning_rate": LR, "momentum": 0.999, "nu": 0.7}),
    Row(
        "qhm_lr_schedule",
        momentum_jax.qhm,
        {"momentum": MU, "nu": 0.7},
        {"learning_rate": _decay},
        blocks=lambda: optax.chain(
            momentum_jax.scale_by_qhm(MU, 0.7), optax.scale_by_learning_rate(_decay)
        ),
    ),
    Row(
        "aggmo",
        momentum_jax.aggmo,
        {"learning_rate": LR},
        {"momenta": (0.0, 0.9, 0.99)},
        blocks=lambda: optax.chain(
            momentum_jax.scale_by_aggmo((0.0, 0.9, 0.99)), optax.scale_by_learning_rate(LR)
        ),
    ),
    Row(
        "aggmo_one_buffer",
        momentum_jax.aggmo,
        {"learning_rate": LR},
        {"momenta": (MU,)},
        blocks=lambda: optax.sgd(LR, MU),
    ),
    Row(
        "scale_by_qhm",
        scale_by_qhm_then_lr,
        {"learning_rate": LR, "momentum": 0.999, "nu": 0.7},
        blocks=lambda: momentum_jax.qhm(LR, 0.999, 0.7),
    ),
    Row(
        "scale_by_aggmo",
        scale_by_aggmo_then_lr,
        {"learning_rate": LR},
        {"momenta": (0.0, 0.9, 0.99)},
        blocks=lambda: momentum_jax.aggmo(LR, (0.0, 0.9, 0.99)),
    ),
]
# Stochastic rounding into bfloat16 buffers: each transform with the option on.
_SR = {"accumulator_dtype": jnp.bfloat16, "stochastic_rounding": True, "seed": 3}
ROWS += [
    Row(
        f"{row.id}_stochastic_rounding",
        row.factory,
        row.hyper,
        {**row.static, **_SR},
        complex_params=False,
    )
    for row in ROWS
    if row.id
    in {
        "momentum",
        "nesterov_momentum_schedule",
        "scale_by_momentum_dampening",
        "torch_sgd_nesterov",
        "keras_sgd_nesterov_weight_decay",
        "tf1_momentum",
        "qhm",
        "aggmo",
    }
]
ROWS.append(
    Row(
        "stochastic_round_params",
        momentum_then_round_params,
        {"learning_rate": LR, "momentum": MU},
        {"seed": 5},
    )
)
# The packed layout: every property of the table holds for every row in it too.
ROWS += [
    dataclasses.replace(row, id=f"{row.id}[packed]", static={**row.static, "layout": "packed"})
    for row in ROWS
]

# The fast tier (``pytest -m "not slow"``) runs the first row of each public transform.
FAST = {row.id for row in {row.factory: row for row in reversed(ROWS)}.values()}


def _tiered(cases: list[Any], ids: list[str]) -> list[Any]:
    """``cases`` (rows, or tuples starting with one) as pytest params, tiered."""
    params = []
    for case, case_id in zip(cases, ids, strict=True):
        args = case if isinstance(case, tuple) else (case,)
        marks = () if args[0].id in FAST else pytest.mark.slow
        params.append(pytest.param(*args, id=case_id, marks=marks))
    return params


def _over(rows: list[Row]) -> Any:
    return pytest.mark.parametrize("row", _tiered(rows, [row.id for row in rows]))


rows = _over(ROWS)
REFERENCED = [row for row in ROWS if row.reference is not None]
COMPOSED = [row for row in ROWS if row.blocks is not None]


def test_the_table_covers_every_public_transform() -> None:
    """A new export must get a row (its id starts with the export's name)."""
    public = [
        name
        for name in momentum_jax.__all__
        if callable(fn := getattr(momentum_jax, name))
        and "GradientTransformation" in str(inspect.signature(fn).return_annotation)
    ]
    assert {"momentum", "nesterov", "scale_by_momentum", "qhm", "aggmo"} <= set(public)
    public += list(compat.__all__)
    for name in public:
        assert any(row.id == name or row.id.startswith(f"{name}_") for row in ROWS), name
    for row in ROWS:
        assert row.hyper, f"{row.id}: nothing for inject_hyperparams to inject"


def _run(
    init: Callable[[Any], Any], step: Callable[[Any, Any], tuple[Any, Any]], steps: int = STEPS
) -> list[Any]:
    params = _problems.initial_params()
    state = init(params)
    out = []
    for _ in range(steps):
        params, state = step(params, state)
        out.append(params)
    return out


@rows
def test_jit_equals_eager_and_traces_once(row: Row) -> None:
    tx = row.build()
    traces = []

    def counted(params: Any, state: Any) -> tuple[Any, Any]:
        traces.append(None)
        return _problems.step_fn(tx)(params, state)

    eager = _run(tx.init, _problems.step_fn(tx))
    jitted = _run(tx.init, jax.jit(counted))
    chex.assert_trees_all_close(jitted, eager, rtol=1e-5, atol=1e-7)
    assert len(traces) == 1, f"{row.id}: the jitted step was traced {len(traces)} times"
    # The run is long enough to move the params visibly.
    assert float(jnp.abs(eager[-1]["w"] - _problems.W0).max()) > 1e-2


@rows
def test_inject_hyperparams_eager_init_jitted_update_equals_plain(row: Row) -> None:
    """What NNX and Equinox users do: every hyperparameter injected, init eager, update jitted."""
    tx = row.build()
    injected = row.injected()
    state = injected.init(_problems.initial_params())
    # Defaults that are numbers (weight_decay=0.0, say) are injected too.
    assert set(row.hyper) <= set(state.hyperparams)
    expected = _run(tx.init, _problems.step_fn(tx))
    got = _run(injected.init, jax.jit(_problems.step_fn(injected)))
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-7)


ALONE = [(row, name) for row in ROWS for name in row.hyper]


@pytest.mark.parametrize(
    ("row", "name"), _tiered(ALONE, [f"{row.id}-{name}" for row, name in ALONE])
)
def test_inject_hyperparams_each_hyperparameter_alone_equals_plain(row: Row, name: str) -> None:
    """One traced hyperparameter among concrete ones (zeros too) must not change the chain."""
    others = tuple(p for p in inspect.signature(row.factory).parameters if p != name)
    injected = optax.inject_hyperparams(row.factory, static_args=others)(**row.hyper, **row.static)
    assert set(injected.init(_problems.initial_params()).hyperparams) == {name}
    tx = row.build()
    expected = _run(tx.init, _problems.step_fn(tx))
    got = _run(injected.init, jax.jit(_problems.step_fn(injected)))
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-7)


@_over(REFERENCED)
def test_follows_the_optax_equivalent(row: Row) -> None:
    assert row.reference is not None
    reference = row.reference()
    expected = _run(reference.init, _problems.step_fn(reference))
    tx = row.build()
    got = _run(tx.init, _problems.step_fn(tx))
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-7)


@_over(COMPOSED)
def test_is_bit_identical_to_its_composition_of_blocks(row: Row) -> None:
    """Each reuse of a block is exact: the same bits over 15 steps of the quadratic."""
    assert row.blocks is not None
    expected = _problems.trajectory(row.blocks(), 15)
    got = _problems.trajectory(row.build(), 15)
    for step, (a, b) in enumerate(zip(got, expected, strict=True)):
        for key in b:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{key!r}, step {step + 1}")


def _mixed_params(row: Row, x64: bool) -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    params = {
        "f32": jnp.asarray(rng.standard_normal(3), jnp.float32),
        # A weakly typed scalar, as jnp.asarray(0.5) gives (float64 under x64).
        "weak": jnp.asarray(0.5),
    }
    if x64:
        params["f64"] = jnp.asarray(rng.standard_normal(3), jnp.float64)
        return params
    params["f16"] = jnp.asarray(rng.standard_normal(3), jnp.float16)
    params["bf16"] = jnp.asarray(rng.standard_normal((2, 2)), jnp.bfloat16)
    if row.complex_params:
        params["c64"] = jnp.asarray(
            rng.standard_normal(2) + 1j * rng.standard_normal(2), "complex64"
        )
    return params


def _gradient_sequence(params: Any, steps: int) -> Any:
    """``steps`` different gradients per leaf, stacked on a leading axis for scan."""
    rng = np.random.default_rng(1)

    def draw(p: jax.Array) -> jax.Array:
        g = rng.standard_normal((steps, *p.shape))
        if jnp.issubdtype(p.dtype, jnp.complexfloating):
            g = g + 1j * rng.standard_normal((steps, *p.shape))
        return jnp.asarray(g, p.dtype)

    return jax.tree.map(draw, params)


@rows
@pytest.mark.parametrize("x64", [False, True], ids=["x32", "x64"])
def test_state_is_a_stable_scan_and_cond_carry_for_every_dtype(row: Row, x64: bool) -> None:
    with _jax_compat.enable_x64(x64):
        tx = row.build()
        params = _mixed_params(row, x64)
        state = tx.init(params)
        grads = _gradient_sequence(params, STEPS)

        def body(carry: Any, g: Any) -> tuple[Any, None]:
            params, state = carry
            updates, new_state = tx.update(g, state, params)
            chex.assert_trees_all_equal_shapes_and_dtypes(updates, g)
            new_params = optax.apply_updates(params, updates)
            chex.assert_trees_all_equal_shapes_and_dtypes(new_params, params)
            # lax.cond needs identical structure, shapes and dtypes on both branches.
            finite = jnp.all(jnp.asarray([jnp.isfinite(u).all() for u in jax.tree.leaves(updates)]))
            carry = jax.lax.cond(finite, lambda: (new_params, new_state), lambda: (params, state))
            return carry, None

        (params_n, state_n), _ = jax.jit(lambda c, gs: jax.lax.scan(body, c, gs))(
            (params, state), grads
        )
        chex.assert_trees_all_equal_structs(state_n, state)
        chex.assert_trees_all_equal_shapes_and_dtypes(state_n, state)
        weak = [_jax_compat.is_weakly_typed(leaf) for leaf in jax.tree.leaves(state)]
        assert [_jax_compat.is_weakly_typed(leaf) for leaf in jax.tree.leaves(state_n)] == weak
        chex.assert_tree_all_finite(params_n)
        assert not np.array_equal(np.asarray(params_n["f32"]), np.asarray(params["f32"]))


@rows
def test_eval_shape_of_init_matches_init(row: Row) -> None:
    tx = row.build()
    params = _mixed_params(row, x64=False)
    abstract = jax.eval_shape(tx.init, params)
    concrete = tx.init(params)
    chex.assert_trees_all_equal_structs(abstract, concrete)
    chex.assert_trees_all_equal_shapes_and_dtypes(abstract, concrete)


@rows
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
def test_low_precision_scalar_hyperparameters_are_accepted(row: Row, dtype: Any) -> None:
    """A bfloat16 scalar is a real number, although numpy's dtype kind for it is 'V'."""
    low = {name: jnp.asarray(value, dtype) for name, value in row.hyper.items()}
    rounded = {name: float(value) for name, value in low.items()}
    if rounded.get("momentum", 0.0) >= 1.0:
        # 0.999 is 1.0 in bfloat16: checked in the dtype the arithmetic uses.
        with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
            row.build(**low)
        return
    tx = row.build(**low)
    expected_tx = row.build(**rounded)
    got = _run(tx.init, _problems.step_fn(tx), steps=3)
    expected = _run(expected_tx.init, _problems.step_fn(expected_tx), steps=3)
    # Products of two hyperparameters (lr * weight_decay, 1 - dampening) may
    # round in the hyperparameters' own precision.
    eps = float(jnp.finfo(dtype).eps)
    chex.assert_trees_all_close(got, expected, rtol=eps, atol=eps * 1e-3)
    # inject_hyperparams casts every hyperparameter to the params' dtype.
    injected = row.injected()
    params = {"w": jnp.asarray([0.5, -1.0, 2.0], dtype)}
    state = injected.init(params)
    # Eager: the jitted update under injection is test_inject_hyperparams_*.
    update = injected.update
    for k in range(2):
        grads = {"w": jnp.asarray([1.0, -0.5 * k, 0.25 + k], dtype)}
        updates, new_state = update(grads, state, params)
        chex.assert_trees_all_equal_shapes_and_dtypes(updates, grads)
        chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
        params, state = optax.apply_updates(params, updates), new_state


@rows
def test_none_leaves_pass_through(row: Row) -> None:
    tx = row.build()
    trained = {"w": jnp.asarray([0.5, -1.0, 2.0])}
    params = {**trained, "frozen": None}
    state, reference_state = tx.init(params), tx.init(trained)
    for k in range(3):
        g = jnp.asarray([1.0, -0.5 * k, 0.25 + k])
        updates, state = tx.update({"w": g, "frozen": None}, state, params)
        expected, reference_state = tx.update({"w": g}, reference_state, trained)
        assert updates["frozen"] is None
        chex.assert_trees_all_close(updates["w"], expected["w"], rtol=1e-6)
        params = optax.apply_updates(params, updates)
        trained = optax.apply_updates(trained, expected)


@rows
def test_integer_and_boolean_leaves_without_gradients_get_no_buffer(row: Row) -> None:
    """As Equinox's ``eqx.filter(model, eqx.is_array)`` and ``filter_grad`` give them."""
    tx = row.build()
    trained = {"w": jnp.asarray([0.5, -1.0, 2.0])}
    params = {**trained, "steps": jnp.arange(5, dtype=jnp.int32), "flag": jnp.asarray(True)}
    state = tx.init(params)
    kinds = {(leaf.shape, leaf.dtype) for leaf in jax.tree.leaves(state)}
    assert ((5,), jnp.dtype(jnp.int32)) not in kinds, f"{row.id}: a buffer for the int leaf"
    assert not any(dtype == jnp.bool_ for _, dtype in kinds), f"{row.id}: a buffer for a bool"
    reference_state = tx.init(trained)
    update = jax.jit(tx.update)
    for k in range(3):
        g = jnp.asarray([1.0, -0.5 * k, 0.25 + k])
        updates, state = update({"w": g, "steps": None, "flag": None}, state, params)
        expected, reference_state = tx.update({"w": g}, reference_state, trained)
        assert updates["steps"] is None
        assert updates["flag"] is None
        chex.assert_trees_all_close(updates["w"], expected["w"], rtol=1e-6)
        # optax.apply_updates has no rule for a None update; Equinox's has.
        params = eqx.apply_updates(params, updates)
        trained = optax.apply_updates(trained, expected)
    chex.assert_trees_all_equal(params["steps"], jnp.arange(5, dtype=jnp.int32))
