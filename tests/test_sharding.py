"""Optimizer state on a device mesh: laid out like the params, updated without communication.

The checks need 8 devices, which JAX only simulates on CPU when
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` is set before it
initialises; ``tests/_sharding_worker.py`` runs them in a fresh process on a
2x4 ('data', 'model') mesh, with auto and with explicit mesh axes, and prints a
JSON report that the tests below read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import _sharding_worker as worker
from tests import _subprocess

pytestmark = pytest.mark.slow  # 8-device subprocesses

WORKER = Path(worker.__file__)
ROOT = WORKER.parents[1]
CASES = [f"{mesh}/{name}" for name in worker.transforms() for mesh in worker.MESH_KINDS]


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    parsed: dict[str, Any] = _subprocess.run_json([str(WORKER)], devices=8, what="sharding worker")
    assert parsed["devices"] == 8, "XLA_FLAGS did not give the worker 8 CPU devices"
    return parsed


def test_explicit_mesh_axes_are_checked_wherever_jax_has_them() -> None:
    # The feature detection must not quietly switch the explicit-axes cases
    # off: every JAX from 0.7 on has mesh axis types and jax.set_mesh.
    version = tuple(int(part) for part in jax.__version__.split(".")[:2])
    if version >= (0, 7):
        assert worker.HAS_EXPLICIT_AXES
        assert worker.MESH_KINDS == ("auto", "explicit")


def test_every_transform_was_checked(report: dict[str, Any]) -> None:
    assert sorted(report["cases"]) == sorted(CASES)
    assert {"momentum", "nesterov", "scale_by_momentum", "torch_sgd", "keras_sgd"} <= set(
        worker.transforms()
    )


@pytest.mark.parametrize("case", CASES)
def test_eager_init_mirrors_param_sharding(report: dict[str, Any], case: str) -> None:
    assert report["cases"][case]["eager_init"] == []


@pytest.mark.parametrize("case", CASES)
def test_jitted_init_mirrors_param_sharding(report: dict[str, Any], case: str) -> None:
    # A jitted init has no eager arrays to copy a sharding from; without care
    # every buffer lands whole on one device (out of memory at scale).
    assert report["cases"][case]["jit_init"] == []


@pytest.mark.parametrize("case", CASES)
def test_donated_jitted_update_keeps_the_sharding(report: dict[str, Any], case: str) -> None:
    assert report["cases"][case]["update"] == []


@pytest.mark.parametrize("case", CASES)
def test_update_needs_no_collectives(report: dict[str, Any], case: str) -> None:
    # Data-, model-, doubly-sharded and replicated params: the update is
    # elementwise, so each device updates its own shard and talks to no one.
    assert report["cases"][case]["collectives"] == []


def test_the_checks_can_fail(report: dict[str, Any]) -> None:
    detector = report["detector"]
    # A replicated velocity for sharded params is flagged, leaf by leaf (the
    # four sharded params; the replicated ones are fine).
    assert detector["wrong_velocity_problems"] == 4
    # Gathering a sharded array shows up in the compiled HLO.
    assert detector["gather_collectives"] == ["all-gather"]


def test_optimizer_state_sharding_zero1(report: dict[str, Any]) -> None:
    """Replicated params, velocity split over 'data': 1/n of the memory, one all-gather."""
    zero1 = report["zero1"]
    n = zero1["num_devices"]
    assert n == 8
    assert zero1["velocity_spec"] == zero1["device_put_spec"] == ["data"]
    assert zero1["count_replicated"]
    assert zero1["params_fully_replicated"]
    assert zero1["velocity_bytes_per_device"] * n == zero1["velocity_bytes_total"]
    assert zero1["param_bytes_per_device"] == zero1["velocity_bytes_total"]
    # The price: each step all-gathers the update so every device can apply
    # it to its full copy of the params. A replicated velocity needs nothing.
    assert zero1["collectives"] == ["all-gather"]
    # One all-gather per leaf, of the whole (param-sized) update.
    shapes = sorted(
        re.fullmatch(r"all-gather f32\[([\d,]*)\].*", r)[1] for r in zero1["collective_results"]
    )
    assert shapes == ["32", "64,32"]
    assert zero1["plain_collectives"] == []
    # In a whole data-parallel step the gradient all-reduce is there anyway;
    # the sharded velocity adds the all-gather (on CPU: XLA on GPU/TPU may turn
    # the all-reduce into a reduce-scatter).
    assert zero1["full_plain_collectives"] == ["all-reduce"]
    assert "all-gather" in zero1["full_step_collectives"]
    # Splitting the velocity changes where numbers live, not the numbers.
    assert zero1["same_as_replicated_run"]


def test_nan_guard_on_a_mesh(report: dict[str, Any]) -> None:
    """optax.apply_if_finite keeps the layout; its price is an all-reduce of booleans."""
    guarded = report["guarded"]
    assert guarded["problems"] == []
    assert guarded["skipped_bad_step"]
    assert guarded["collectives"]
    for result in guarded["collectives"]:
        op, _, types = result.partition(" ")
        assert op == "all-reduce"
        # Only scalar flags travel: "(pred[], pred[])" or "pred[]".
        assert set(re.findall(r"[a-z0-9]+\[[^\]]*\]", types)) == {"pred[]"}, result


def test_worker_emits_no_warnings(report: dict[str, Any]) -> None:
    assert report["warnings"] == []


@pytest.mark.parametrize("name", list(worker.transforms()))
def test_init_under_eval_shape_and_jit_on_one_device(name: str) -> None:
    """The sharding hint is harmless without a mesh: abstract and jitted init still work."""
    tx = worker.transforms()[name]()
    params = {
        "w": jnp.ones((3, 2)),
        "h": jnp.ones(4, jnp.bfloat16),
        "s": jnp.asarray(2.0),
        "e": jnp.ones((2, 0)),
        "none": None,
    }
    eager = tx.init(params)
    abstract = jax.eval_shape(tx.init, params)
    jitted = jax.jit(tx.init)(params)
    vmapped = jax.vmap(tx.init)(jax.tree.map(lambda p: jnp.stack([p, p]), params))
    assert jax.tree.structure(abstract) == jax.tree.structure(eager)
    for a, e, j in zip(
        jax.tree.leaves(abstract), jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True
    ):
        assert a.shape == e.shape == j.shape
        assert a.dtype == e.dtype == j.dtype
        assert np.array_equal(e, j)
    assert jax.tree.structure(vmapped) == jax.tree.structure(eager)


@pytest.mark.parametrize("name", list(worker.transforms()))
def test_jitted_init_buffers_are_exact_positive_zeros(name: str) -> None:
    """The jitted init derives its zeros from the params: inf, NaN and -x must give +0."""
    tx = worker.transforms()[name]()
    special = jnp.array([-1.5, jnp.inf, -jnp.inf, jnp.nan, -0.0, 3.0])
    params = {"f32": special, "bf16": special.astype(jnp.bfloat16)}
    if "accumulator" not in name:  # a float32 accumulator refuses complex params
        params["c64"] = (special + 1j * special[::-1]).astype(jnp.complex64)
    for state in (jax.jit(tx.init)(params), tx.init(params)):
        buffers = [leaf for leaf in jax.tree.leaves(state) if jnp.ndim(leaf) == 1]
        assert len(buffers) >= len(params)
        for buffer in buffers:
            parts = (buffer.real, buffer.imag) if jnp.iscomplexobj(buffer) else (buffer,)
            for part in parts:
                values = np.asarray(part, np.float32)
                assert np.all(values == 0.0), values
                assert not np.any(np.signbit(values)), values
