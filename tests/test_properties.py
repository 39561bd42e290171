"""Property-based tests: random pytrees, dtypes and hyperparameters.

Trees nest dicts, lists and tuples around ``None`` leaves, scalars and empty
arrays. Dtypes are float16, bfloat16, float32, complex64 and float64 (the last
under ``jax.enable_x64``). The transforms are the rows of the contract table
(tests/_table.py), which tests/test_contract.py checks on one fixed tree; here
the trees are drawn. Each property is one the API promises:

* jit and eager give the same updates and states, for every row of the table;
* the state's structure, shapes and dtypes (weak types included) never change,
  for every row of the table;
* ``momentum=0`` is SGD for :func:`momentum_jax.momentum` and the identity for
  :func:`momentum_jax.scale_by_momentum`;
* with no weight decay, :func:`momentum_jax.momentum` is linear in a constant
  learning rate.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import momentum_jax
from tests import _jax_compat, _problems
from tests._table import ROWS

pytestmark = pytest.mark.slow  # property-based search

SETTINGS = settings(max_examples=30, deadline=None, database=None)
# Each example of a row drawn from the table compiles it: fewer, as the table
# itself runs every row on a fixed tree.
ROW_SETTINGS = settings(max_examples=15, deadline=None, database=None)
STEPS = 3
DTYPES = ["float16", "bfloat16", "float32", "complex64", "float64"]
SHAPES = [(), (0,), (2, 0), (3,), (2, 3)]


@dataclasses.dataclass(frozen=True)
class Leaf:
    """A placeholder for an array leaf (not a pytree node) in a drawn tree."""

    shape: tuple[int, ...]


leaves = st.one_of(st.none(), st.sampled_from(SHAPES).map(Leaf))
nested = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.dictionaries(st.sampled_from(["a", "b", "c"]), children, max_size=3),
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
    ),
    max_leaves=6,
)


def _with_data(anchor: Leaf, rest: Any, kind: str) -> Any:
    # Most random trees hold only None and empty leaves; one leaf with
    # elements keeps every example meaningful, while ``rest`` keeps the edges.
    if kind == "dict":
        return {"x": anchor, "rest": rest}
    if kind == "list":
        return [rest, anchor]
    if kind == "tuple":
        return (anchor, rest)
    return anchor


tree_specs = st.builds(
    _with_data,
    st.sampled_from([(), (3,), (2, 3)]).map(Leaf),
    nested,
    st.sampled_from(["dict", "list", "tuple", "bare"]),
)


def _dtype(name: str) -> Any:
    return jnp.dtype(name)


@contextlib.contextmanager
def _precision(dtype_name: str) -> Iterator[None]:
    """float64 needs x64, enabled for this example only."""
    if dtype_name != "float64":
        yield
        return
    with _jax_compat.enable_x64(True):
        yield


def materialize(spec: Any, dtype: Any, rng: np.random.Generator) -> Any:
    if spec is None:
        return None
    if isinstance(spec, Leaf):
        real = rng.standard_normal(spec.shape)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            real = real + 1j * rng.standard_normal(spec.shape)
        return jnp.asarray(real, dtype)
    if isinstance(spec, dict):
        return {key: materialize(value, dtype, rng) for key, value in spec.items()}
    children = [materialize(value, dtype, rng) for value in spec]
    return tuple(children) if isinstance(spec, tuple) else children


def signature(tree: Any) -> Any:
    return jax.tree.structure(tree), [
        (leaf.shape, leaf.dtype, _jax_compat.is_weakly_typed(leaf))
        for leaf in jax.tree.leaves(tree)
    ]


def _eps(dtype: Any) -> float:
    return float(jnp.finfo(dtype).eps)


def assert_close(
    actual: Any, expected: Any, ulps: float, what: str, computed_in: Any = None
) -> None:
    """Leaves equal within ``ulps`` of their dtype, or of ``computed_in`` where that is coarser
    (a float32 buffer that Lion or a weight decay fed from bfloat16 arithmetic)."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected), what
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.dtype == e.dtype, what
        inexact = jnp.issubdtype(a.dtype, jnp.inexact)
        coarser = computed_in is not None and inexact and _eps(computed_in) > _eps(a.dtype)
        tol = ulps * _eps(computed_in if coarser else a.dtype) if inexact else 0.0
        tiny = 4 * float(jnp.finfo(a.dtype).tiny) if jnp.issubdtype(a.dtype, jnp.inexact) else 0
        np.testing.assert_allclose(
            np.asarray(a, np.complex128),
            np.asarray(e, np.complex128),
            rtol=tol,
            atol=tol + tiny,
            err_msg=what,
        )


# --- hyperparameters -------------------------------------------------------------


@st.composite
def learning_rates(draw: st.DrawFn) -> Any:
    base = draw(st.floats(0.0, 1.0))
    if draw(st.booleans()):
        return base
    return lambda count: base / (1.0 + 0.5 * count)


@st.composite
def momenta(draw: st.DrawFn) -> Any:
    base = draw(st.floats(0.0, 0.99))
    if draw(st.booleans()):
        return base
    return lambda count: jnp.minimum(base + 0.05 * count, 0.99)


@st.composite
def transforms(draw: st.DrawFn) -> tuple[str, optax.GradientTransformation, str]:
    """A row of the contract table and a param dtype it supports."""
    row = draw(st.sampled_from(ROWS))
    dtypes = DTYPES if row.complex_params else [d for d in DTYPES if "complex" not in d]
    return row.id, row.build(), draw(st.sampled_from(dtypes))


# --- properties --------------------------------------------------------------------


@ROW_SETTINGS
@given(spec=tree_specs, named=transforms(), seed=st.integers(0, 2**16))
def test_jit_equals_eager(
    spec: Any, named: tuple[str, optax.GradientTransformation, str], seed: int
) -> None:
    name, tx, dtype_name = named
    with _precision(dtype_name):
        dtype = _dtype(dtype_name)
        rng = np.random.default_rng(seed)
        params = materialize(spec, dtype, rng)
        grads = [materialize(spec, dtype, rng) for _ in range(STEPS)]
        eager_state = tx.init(params)
        jit_state = jax.jit(tx.init)(params)
        assert_close(jit_state, eager_state, 0, f"{name}: init")
        update = jax.jit(tx.update)
        for k, g in enumerate(grads):
            eager_updates, eager_state = tx.update(g, eager_state, params)
            jit_updates, jit_state = update(g, jit_state, params)
            # Fusion may keep low-precision intermediates wider: a few ulps of the params'
            # dtype, also in a wider buffer fed from arithmetic in that dtype.
            assert_close(jit_updates, eager_updates, 16, f"{name}: updates at step {k + 1}", dtype)
            assert_close(jit_state, eager_state, 16, f"{name}: state at step {k + 1}", dtype)


@ROW_SETTINGS
@given(spec=tree_specs, named=transforms(), seed=st.integers(0, 2**16))
def test_state_structure_and_dtypes_never_drift(
    spec: Any, named: tuple[str, optax.GradientTransformation, str], seed: int
) -> None:
    name, tx, dtype_name = named
    with _precision(dtype_name):
        rng = np.random.default_rng(seed)
        params = materialize(spec, _dtype(dtype_name), rng)
        state = tx.init(params)
        before = signature(state)
        for k in range(STEPS + 1):
            grads = materialize(spec, _dtype(dtype_name), rng)
            updates, state = tx.update(grads, state, params)
            assert signature(state) == before, f"{name}: state changed type at step {k + 1}"
            # Updates come back in the gradients' structure and dtypes (Lion's as optax.lion's).
            expected = _problems.updates_like(grads, state, name)
            assert signature(updates) == signature(expected), f"{name}: updates at step {k + 1}"
            params = optax.apply_updates(params, updates)


@SETTINGS
@given(
    spec=tree_specs,
    dtype_name=st.sampled_from(DTYPES),
    lr=learning_rates(),
    nesterov=st.booleans(),
    scheduled_zero=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_zero_momentum_is_sgd(
    spec: Any, dtype_name: str, lr: Any, nesterov: bool, scheduled_zero: bool, seed: int
) -> None:
    mu: Any = (lambda count: 0.0 * count) if scheduled_zero else 0.0
    tx = momentum_jax.momentum(lr, mu, nesterov=nesterov)
    with _precision(dtype_name):
        dtype = _dtype(dtype_name)
        rng = np.random.default_rng(seed)
        params = materialize(spec, dtype, rng)
        state = tx.init(params)
        for k in range(STEPS):
            grads = materialize(spec, dtype, rng)
            updates, state = tx.update(grads, state, params)
            rate = lr(k) if callable(lr) else lr
            expected = jax.tree.map(lambda g, r=rate: (-np.float64(r) * g).astype(g.dtype), grads)
            assert_close(updates, expected, 2, f"step {k + 1}")


@SETTINGS
@given(
    spec=tree_specs,
    dtype_name=st.sampled_from(DTYPES),
    nesterov=st.booleans(),
    scheduled_zero=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_zero_momentum_buffer_is_the_identity(
    spec: Any, dtype_name: str, nesterov: bool, scheduled_zero: bool, seed: int
) -> None:
    mu: Any = (lambda count: 0.0 * count) if scheduled_zero else 0.0
    tx = momentum_jax.scale_by_momentum(mu, nesterov=nesterov)
    with _precision(dtype_name):
        dtype = _dtype(dtype_name)
        rng = np.random.default_rng(seed)
        state = tx.init(materialize(spec, dtype, rng))
        for _ in range(STEPS):
            grads = materialize(spec, dtype, rng)
            out, state = tx.update(grads, state)
            assert jax.tree.structure(out) == jax.tree.structure(grads)
            for o, g in zip(jax.tree.leaves(out), jax.tree.leaves(grads), strict=True):
                assert o.dtype == g.dtype
                assert np.array_equal(o, g)


@SETTINGS
@given(
    spec=tree_specs,
    dtype_name=st.sampled_from(DTYPES),
    lr=st.floats(1e-3, 1.0),
    mu=momenta(),
    nesterov=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_updates_are_linear_in_a_constant_learning_rate(
    spec: Any, dtype_name: str, lr: float, mu: Any, nesterov: bool, seed: int
) -> None:
    single = momentum_jax.momentum(lr, mu, nesterov=nesterov)
    double = momentum_jax.momentum(2 * lr, mu, nesterov=nesterov)
    with _precision(dtype_name):
        dtype = _dtype(dtype_name)
        rng = np.random.default_rng(seed)
        params = materialize(spec, dtype, rng)
        s1, s2 = single.init(params), double.init(params)
        for k in range(STEPS + 1):
            grads = materialize(spec, dtype, rng)
            u1, s1 = single.update(grads, s1, params)
            u2, s2 = double.update(grads, s2, params)
            # Doubling is exact in binary floating point; allow an ulp or two
            # for rounding of the learning rate itself.
            twice = jax.tree.map(lambda u: (2 * u).astype(u.dtype), u1)
            assert_close(u2, twice, 4, f"step {k + 1}")


# --- examples the properties rest on ---------------------------------------------------


def test_the_tree_strategy_reaches_the_edge_cases() -> None:
    """Guard against a strategy that silently stopped producing None and empty leaves."""
    seen: set[str] = set()

    @settings(max_examples=200, deadline=None, database=None)
    @given(tree_specs)
    def collect(spec: Any) -> None:
        def walk(node: Any) -> None:
            if node is None:
                seen.add("none")
            elif isinstance(node, Leaf):
                seen.add("empty" if 0 in node.shape else "scalar" if node.shape == () else "array")
            else:
                seen.add(type(node).__name__)
                for child in node.values() if isinstance(node, dict) else node:
                    walk(child)

        walk(spec)

    collect()
    assert {"none", "empty", "scalar", "array", "dict", "list", "tuple"} <= seen
