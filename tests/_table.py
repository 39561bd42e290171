"""The contract table: every public transform, with representative hyperparameters.

The only list of transforms in the test suite. Every property module and
subprocess worker runs over :data:`ROWS` or a named subset of it (optax's
optimizers-under-test pattern):

* :data:`ROWS`: everything, in both state layouts;
* :data:`BASE_ROWS`: the per-array (default) layout; :data:`PACKED_ROWS`: ``layout="packed"``,
  for the :data:`LAYOUT_ROWS` (all but the int8 buffers, which refuse it);
* :data:`TRANSFORMS`: the first row of each public transform (the fast tier's rows);
* :data:`STATEFUL`, :data:`STATELESS`: rows that keep a buffer, and the presets at
  ``momentum=0``, which keep none (as PyTorch and Keras do);
* :data:`REFERENCED`, :data:`COMPOSED`: rows with an optax equivalent, and rows
  that are a composition of blocks;
* :func:`rows_named` and :func:`rows_with` for other subsets.

Each :class:`Row` names a factory and splits its arguments in two: ``hyper``,
the numeric hyperparameters (``optax.inject_hyperparams`` injects every one of
them, zeros included), and ``static``, everything else (booleans, dtypes, tuples
and schedules, passed through ``static_args`` unchanged).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import jax.numpy as jnp
import optax
import pytest

import momentum_jax
from momentum_jax import compat

LR = 0.05
MU = 0.9


def decay(count: Any) -> Any:
    """A learning-rate schedule that moves at every step."""
    return LR / (1.0 + 0.1 * count)


def rising(count: Any) -> Any:
    """A momentum schedule that moves at every step."""
    return jnp.minimum(0.5 + 0.1 * count, 0.95)


def _public(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a test-side wrapper with the public transform it exercises."""

    def mark(wrapper: Callable[..., Any]) -> Callable[..., Any]:
        wrapper.public = fn  # type: ignore[attr-defined]
        return wrapper

    return mark


@_public(momentum_jax.scale_by_momentum)
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


@_public(momentum_jax.scale_by_qhm)
def scale_by_qhm_then_lr(
    learning_rate: Any,
    momentum: Any,
    nu: Any,
    accumulator_dtype: Any = None,
    layout: str = "per_leaf",
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> optax.GradientTransformation:
    block = momentum_jax.scale_by_qhm(
        momentum=momentum,
        nu=nu,
        accumulator_dtype=accumulator_dtype,
        layout=layout,
        stochastic_rounding=stochastic_rounding,
        seed=seed,
    )
    return optax.chain(block, optax.scale_by_learning_rate(learning_rate))


@_public(momentum_jax.scale_by_aggmo)
def scale_by_aggmo_then_lr(
    learning_rate: Any,
    momenta: Any,
    accumulator_dtype: Any = None,
    layout: str = "per_leaf",
    stochastic_rounding: bool = False,
    seed: int = 0,
) -> optax.GradientTransformation:
    block = momentum_jax.scale_by_aggmo(
        momenta=momenta,
        accumulator_dtype=accumulator_dtype,
        layout=layout,
        stochastic_rounding=stochastic_rounding,
        seed=seed,
    )
    return optax.chain(block, optax.scale_by_learning_rate(learning_rate))


@_public(momentum_jax.stochastic_round_params)
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

    @property
    def public(self) -> Callable[..., Any]:
        """The public factory this row exercises (through a test-side chain or not)."""
        return getattr(self.factory, "public", self.factory)

    @property
    def name(self) -> str:
        """The public factory's name as its errors spell it: ``momentum_jax.compat.torch_sgd``."""
        fn = self.public.__name__
        return f"momentum_jax.compat.{fn}" if fn in compat.__all__ else f"momentum_jax.{fn}"

    @property
    def layout(self) -> str:
        return str(self.static.get("layout", "per_leaf"))


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
        {"learning_rate": decay},
        blocks=lambda: optax.chain(optax.scale_by_learning_rate(decay), optax.trace(MU)),
    ),
    Row(
        "momentum_schedules",
        momentum_jax.momentum,
        {"weight_decay": 0.01},
        {"learning_rate": decay, "momentum": rising},
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
        {"momentum": rising},
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
        {"learning_rate": decay},
        blocks=lambda: optax.sgd(decay, MU),
    ),
    Row(
        "scale_by_momentum_momentum_schedule",
        scale_by_momentum_then_lr,
        {"learning_rate": LR, "dampening": 0.1},
        {"momentum": rising},
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
        {"lr": decay, "maximize": True},
        blocks=lambda: optax.chain(optax.scale(-1.0), optax.sgd(decay, MU)),
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
        {"learning_rate": decay, "use_nesterov": True},
        blocks=lambda: optax.sgd(decay, MU, nesterov=True),
    ),
    # --- variants and their learning-rate-free blocks.
    Row("qhm", momentum_jax.qhm, {"learning_rate": LR, "momentum": 0.999, "nu": 0.7}),
    Row(
        "qhm_lr_schedule",
        momentum_jax.qhm,
        {"momentum": MU, "nu": 0.7},
        {"learning_rate": decay},
        blocks=lambda: optax.chain(
            momentum_jax.scale_by_qhm(MU, 0.7), optax.scale_by_learning_rate(decay)
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
# Lion (optax's, step for step) and int8 buffers: the large arrays of the table's
# param trees (more than 2**16 elements) get int8 codes, the small ones float32.
_INT8 = {"accumulator_dtype": jnp.int8}
_LION = {"learning_rate": LR, "b1": 0.9, "b2": 0.99, "weight_decay": 0.01}
ROWS += [
    Row(
        "lion",
        momentum_jax.lion,
        _LION,
        reference=lambda: optax.lion(LR, 0.9, 0.99, weight_decay=0.01),
    ),
    Row("lion_lr_schedule", momentum_jax.lion, {"b1": 0.95, "b2": 0.98}, {"learning_rate": decay}),
    Row(
        "momentum_int8",
        momentum_jax.momentum,
        {"learning_rate": LR, "momentum": MU},
        _INT8,
        complex_params=False,
    ),
    Row(
        "aggmo_int8_stochastic_rounding",
        momentum_jax.aggmo,
        {"learning_rate": LR},
        {"momenta": (0.0, 0.9, 0.99), **_INT8, "stochastic_rounding": True, "seed": 3},
        complex_params=False,
    ),
    Row(
        "lion_int8_stochastic_rounding",
        momentum_jax.lion,
        _LION,
        {**_INT8, "stochastic_rounding": True, "seed": 3},
        complex_params=False,
    ),
]
ROWS.append(
    Row(
        "stochastic_round_params",
        momentum_then_round_params,
        {"learning_rate": LR, "momentum": MU},
        {"seed": 5},
    )
)
BASE_ROWS = list(ROWS)
# The rows that take both layouts (int8 buffers, one per array, refuse the packed one).
LAYOUT_ROWS = [row for row in BASE_ROWS if row.static.get("accumulator_dtype") is not jnp.int8]
# The packed layout: every property of the table holds for every row in it too.
PACKED_ROWS = [
    dataclasses.replace(row, id=f"{row.id}[packed]", static={**row.static, "layout": "packed"})
    for row in LAYOUT_ROWS
]
ROWS += PACKED_ROWS


def rows_named(*ids: str) -> list[Row]:
    """The rows with these ids, in this order."""
    by_id = {row.id: row for row in ROWS}
    return [by_id[row_id] for row_id in ids]


def rows_with(predicate: Callable[[Row], bool], rows: Iterable[Row] = BASE_ROWS) -> list[Row]:
    return [row for row in rows if predicate(row)]


def first_of_each(rows: Iterable[Row]) -> list[Row]:
    """The first row of each public factory among ``rows``, in table order."""
    seen: dict[Any, Row] = {}
    for row in rows:
        seen.setdefault(row.factory, row)
    return list(seen.values())


# One row per public transform (the fast tier runs these).
TRANSFORMS = first_of_each(BASE_ROWS)
FAST = {row.id for row in first_of_each(ROWS)}
REFERENCED = rows_with(lambda row: row.reference is not None, ROWS)
COMPOSED = rows_with(lambda row: row.blocks is not None, ROWS)
# Rows whose state keeps a param-shaped buffer, and the presets at momentum=0,
# which keep none, as PyTorch and Keras do.
STATELESS = rows_named("torch_sgd_defaults", "keras_sgd_defaults")
STATEFUL = rows_named(
    "torch_sgd_maximize_lr_schedule",
    "momentum_weight_decay",
    "nesterov",
    "scale_by_momentum_dampening",
    "scale_by_momentum_nesterov",
    "torch_sgd_dampening_weight_decay",
    "keras_sgd_nesterov_weight_decay",
    "tf1_momentum_nesterov_lr_schedule",
    "qhm",
    "aggmo",
)
# The subprocess workers (tests/_worker.py): one row per public transform,
# with schedules that move at every step where it takes them, so a lost or
# reset step counter changes the run.
MESH_ROWS = rows_named(
    "momentum_schedules",
    "nesterov_momentum_schedule",
    "scale_by_momentum_dampening",
    "qhm_lr_schedule",
    "scale_by_qhm",
    "aggmo",
    "scale_by_aggmo",
    "torch_sgd_dampening_weight_decay",
    "keras_sgd_nesterov_weight_decay",
    "tf1_momentum_nesterov_lr_schedule",
)
# On a mesh in one process, also float32, stochastically rounded bfloat16 and int8 buffers.
SHARDING_ROWS = MESH_ROWS + rows_named(
    "momentum_float32_accumulator",
    "momentum_stochastic_rounding",
    "stochastic_round_params",
    "momentum_int8",
    "lion_int8_stochastic_rounding",
)
# Saved and resumed in a fresh process: a rounded bfloat16 buffer, a chain
# state, bfloat16 params (see tests/_worker.py) and the packed layout.
CHECKPOINT_ROWS = rows_named(
    "nesterov_momentum_schedule_stochastic_rounding",
    "torch_sgd_maximize_lr_schedule",
    "momentum_schedules",
    "qhm_lr_schedule[packed]",
)
# The transforms that take accumulator_dtype, stochastic_rounding and seed.
BUFFER_TRANSFORMS = rows_with(lambda row: row.factory is not momentum_then_round_params, TRANSFORMS)


def ids(rows: Iterable[Row]) -> list[str]:
    return [row.id for row in rows]


def tiered(cases: list[Any], case_ids: list[str]) -> list[Any]:
    """``cases`` (rows, or tuples starting with one) as pytest params; rows outside FAST are slow."""
    params = []
    for case, case_id in zip(cases, case_ids, strict=True):
        args = case if isinstance(case, tuple) else (case,)
        marks = () if args[0].id in FAST else pytest.mark.slow
        params.append(pytest.param(*args, id=case_id, marks=marks))
    return params


def over(rows: list[Row], name: str = "row") -> Any:
    """``@over(rows)``: parametrize ``row`` over ``rows``, tiered."""
    return pytest.mark.parametrize(name, tiered(rows, ids(rows)))
