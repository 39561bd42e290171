"""Optimizer state on a device mesh: laid out like the params, updated without communication.

The checks need 8 devices, which JAX only simulates on CPU when
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` is set before it
initialises; ``tests/_worker.py sharding`` runs them in one fresh process and
prints a JSON report that the tests below read:

* every row of the contract table's ``SHARDING_ROWS`` on a 2x4 ('data', 'model')
  mesh, with auto and with explicit mesh axes: eager and jitted init, three
  donated jitted steps, and the compiled update's collectives (none);
* the packed layout: a large split param keeps its sharded buffer, the pack of
  the replicated small params is replicated, ``restore_state`` between the
  layouts keeps both, and over explicit axes a small sharded param is not packed;
* the recipes of docs/production.md: the NaN guard and ZeRO-1;
* that the checks can fail (a misplaced buffer, an empty state, a gather).

Without a mesh, the same rows init under ``eval_shape``, ``jit`` and ``vmap``.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import _subprocess
from tests import _worker as worker
from tests._table import SHARDING_ROWS, Row, over

pytestmark = pytest.mark.slow  # an 8-device subprocess

CASES = [f"{kind}/{row.id}" for kind in worker.MESH_KINDS for row in SHARDING_ROWS]


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    parsed: dict[str, Any] = _subprocess.run_json(
        ["tests/_worker.py", "sharding"], devices=8, what="sharding worker"
    )
    assert parsed["devices"] == 8, "XLA_FLAGS did not give the worker 8 CPU devices"
    return parsed


def test_explicit_mesh_axes_are_checked_wherever_jax_has_them() -> None:
    # The feature detection must not quietly switch the explicit-axes cases
    # off: every JAX from 0.7 on has mesh axis types and jax.set_mesh.
    version = tuple(int(part) for part in jax.__version__.split(".")[:2])
    if version >= (0, 7):
        assert worker.HAS_EXPLICIT_AXES
        assert worker.MESH_KINDS == ("auto", "explicit")


def test_every_row_was_checked(report: dict[str, Any]) -> None:
    assert sorted(report["cases"]) == sorted(CASES)
    assert {row.public for row in SHARDING_ROWS} >= {row.public for row in worker.MESH_ROWS}


@pytest.mark.parametrize("case", CASES)
def test_state_is_laid_out_like_the_params_and_updates_without_communication(
    report: dict[str, Any], case: str
) -> None:
    checked = report["cases"][case]
    assert checked["eager_init"] == []
    # A jitted init has no eager arrays to copy a sharding from; without care
    # every buffer lands whole on one device (out of memory at scale).
    assert checked["jit_init"] == []
    # Three donated jitted steps keep every leaf, params included, where it was.
    assert checked["update"] == []
    # Data-, model-, doubly-sharded and replicated params: the update is
    # elementwise, so each device updates its own shard and talks to no one.
    assert checked["collectives"] == []


def test_the_checks_can_fail(report: dict[str, Any]) -> None:
    detector = report["detector"]
    # A replicated velocity for sharded params is flagged, leaf by leaf (the
    # six sharded params; the replicated ones are fine).
    assert detector["wrong_velocity_problems"] == 6
    # An optimizer state with no buffer at all (optax.identity) is not a pass.
    assert detector["empty_state_problems"] == [worker.EMPTY_STATE]
    # Gathering a sharded array shows up in the compiled HLO.
    assert detector["gather_collectives"] == ["all-gather"]


def test_packed_layout_on_a_mesh(report: dict[str, Any]) -> None:
    packed = report["packed"]
    phases = ["eager_init", "jit_init", "update", "no_collectives"]
    phases += ["restored_per_leaf", "restored_packed"]
    if worker.HAS_EXPLICIT_AXES:
        phases += ["explicit_eager_init", "explicit_jit_init", "explicit_update"]
        phases += ["explicit_checkpoint_on_host", "explicit_int8_cut_blocks"]
    assert sorted(packed) == sorted(phases)
    for phase, problems in packed.items():
        assert problems == [], f"{phase}: {problems}"


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
    assert zero1["restored_velocity_spec"] == ["data"]  # and restore_state keeps it split


def test_the_orbax_recipe_restores_sharded_params_and_state(report: dict[str, Any]) -> None:
    # A jitted step runs on what it restored (an eager init's counters, as a target, were
    # restored onto device 0 alone: "incompatible devices").
    assert report["orbax_recipe"] == {"bit_identical": True, "problems": []}


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


@over(SHARDING_ROWS)
def test_init_without_a_mesh_under_eval_shape_jit_and_vmap(row: Row) -> None:
    """The sharding hint is harmless without a mesh; the jitted init's zeros are exact +0.

    The jitted init derives its zeros from the params, so inf, NaN and -x must
    give +0 there too.
    """
    tx = row.build()
    special = jnp.array([-1.5, jnp.inf, -jnp.inf, jnp.nan, -0.0, 3.0])
    params: dict[str, Any] = {
        "w": jnp.ones((3, 2)),
        "f32": special,
        "bf16": special.astype(jnp.bfloat16),
        "s": jnp.asarray(2.0),
        "e": jnp.ones((2, 0)),
        "none": None,
    }
    if row.complex_params:  # a float32 accumulator refuses complex params
        params["c64"] = (special + 1j * special[::-1]).astype(jnp.complex64)
    eager = tx.init(params)
    abstract = jax.eval_shape(tx.init, params)
    jitted = jax.jit(tx.init)(params)
    vmapped = jax.vmap(tx.init)(jax.tree.map(lambda p: jnp.stack([p, p]), params))
    assert jax.tree.structure(abstract) == jax.tree.structure(eager)
    assert jax.tree.structure(vmapped) == jax.tree.structure(eager)
    for a, e, j in zip(
        jax.tree.leaves(abstract), jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True
    ):
        assert a.shape == e.shape == j.shape
        assert a.dtype == e.dtype == j.dtype
        assert np.array_equal(e, j)
    for state in (jitted, eager):
        buffers = [leaf for leaf in jax.tree.leaves(state) if jnp.ndim(leaf) == 1]
        assert len(buffers) >= 2 + int(row.complex_params)  # f32, bf16 (and c64)
        for buffer in buffers:
            parts = (buffer.real, buffer.imag) if jnp.iscomplexobj(buffer) else (buffer,)
            for part in parts:
                values = np.asarray(part, np.float32)
                assert np.all(values == 0.0), values
                assert not np.any(np.signbit(values)), values
