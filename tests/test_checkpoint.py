"""Checkpoints: save mid-training, resume in a fresh process, get the same bits.

The training runs in subprocesses (``tests/_worker.py checkpoint``) over the
contract table's ``CHECKPOINT_ROWS``: one saves after ``SPLIT`` steps in each
format (orbax, pickle, npz) and goes on to ``TOTAL`` uninterrupted, a second
one starts from nothing but the checkpoint files and finishes the run. The
rows use schedules that move at every step, so a lost or reset step counter
changes the trajectory. In-process: pickle and Flax serialization keep every
public transform's state in both layouts, and the npz recipe rebuilds a chain
state from a fresh init.
"""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import momentum_jax
from tests import _problems, _subprocess
from tests import _worker as worker
from tests._table import CHECKPOINT_ROWS, TRANSFORMS, Row, over, rows_named

pytestmark = pytest.mark.slow  # checkpoints in subprocesses

HAS_ORBAX = importlib.util.find_spec("orbax") is not None and (
    importlib.util.find_spec("orbax.checkpoint") is not None
)
FORMATS = ["orbax", "pickle", "npz"] if HAS_ORBAX else ["pickle", "npz"]
CASES = [row.id for row in CHECKPOINT_ROWS]


def _run_worker(command: str, directory: Path) -> dict[str, Any]:
    report: dict[str, Any] = _subprocess.run_json(
        ["tests/_worker.py", "checkpoint", command, str(directory), ",".join(FORMATS)],
        what=f"checkpoint {command}",
    )
    return report


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("checkpoints")
    saved = _run_worker("save", directory)
    resumed = _run_worker("resume", directory)
    return {"directory": directory, "save": saved, "resume": resumed}


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def _cases_and_formats() -> list[Any]:
    params = []
    for case in CASES:
        for fmt in worker.CHECKPOINT_FORMATS:
            marks = [] if fmt != "orbax" or HAS_ORBAX else [pytest.mark.skip("needs orbax")]
            params.append(pytest.param(case, fmt, id=f"{case}-{fmt}", marks=marks))
    return params


@pytest.mark.parametrize(("case", "fmt"), _cases_and_formats())
def test_resumed_run_is_bit_identical(runs: dict[str, Any], case: str, fmt: str) -> None:
    directory = runs["directory"]
    uninterrupted = _load(directory / f"{worker.file_name(case)}-uninterrupted.npz")
    resumed = _load(directory / f"{worker.file_name(case)}-{fmt}.npz")
    after_split = {
        f"step{k}/{leaf}" for k in range(worker.SPLIT + 1, worker.TOTAL + 1) for leaf in ("w", "b")
    }
    assert set(resumed) == after_split | {k for k in uninterrupted if k.startswith("state/")}
    for key in sorted(resumed):
        assert np.array_equal(resumed[key], uninterrupted[key]), f"{key} differs after resuming"
    # The run really moves after the split, so equality is not trivial.
    last, split = f"step{worker.TOTAL}/w", f"step{worker.SPLIT}/w"
    assert not np.array_equal(uninterrupted[last], uninterrupted[split])


@pytest.mark.parametrize(("case", "fmt"), _cases_and_formats())
def test_restored_state_has_the_structure_of_a_fresh_init(
    runs: dict[str, Any], case: str, fmt: str
) -> None:
    assert runs["resume"]["signature_matches"][f"{case}-{fmt}"]


@pytest.mark.skipif(not HAS_ORBAX, reason="needs orbax-checkpoint")
@pytest.mark.parametrize("case", CASES)
def test_the_step_counter_is_part_of_the_checkpoint(runs: dict[str, Any], case: str) -> None:
    # Every counter in the state (a chain has several) comes back as SPLIT.
    counters = runs["resume"]["restored_counters"][case]
    assert counters
    assert all(count == worker.SPLIT for count in counters)
    # Restoring everything but the counter gives a different run: the
    # schedules read it, so the bit-identical test above would catch its loss.
    directory = runs["directory"]
    uninterrupted = _load(directory / f"{worker.file_name(case)}-uninterrupted.npz")
    reset = _load(directory / f"{worker.file_name(case)}-orbax-count-reset.npz")
    key = f"step{worker.TOTAL}/w"
    assert not np.array_equal(reset[key], uninterrupted[key])


def test_workers_emit_no_warnings(runs: dict[str, Any]) -> None:
    assert runs["save"]["warnings"] == []
    assert runs["resume"]["warnings"] == []


BOTH_LAYOUTS = TRANSFORMS + rows_named(*(f"{row.id}[packed]" for row in TRANSFORMS))


@over(BOTH_LAYOUTS)
def test_pickle_and_flax_serialization_keep_the_state(row: Row) -> None:
    serialization = pytest.importorskip("flax.serialization")
    tx = row.build()
    params = {"w": jnp.arange(3.0), "b": jnp.ones((2, 2)), "frozen": None}
    state = tx.init(params)
    for k in range(2):
        grads = {"w": jnp.array([1.0, -2.0, 0.5 + k]), "b": jnp.full((2, 2), 0.5 - k)}
        grads["frozen"] = None
        _, state = tx.update(grads, state, params)
    pickled = pickle.loads(pickle.dumps(jax.device_get(state)))
    flax = serialization.from_bytes(tx.init(params), serialization.to_bytes(state))
    for restored in (pickled, flax):
        assert jax.tree.structure(restored) == jax.tree.structure(state)
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
            assert np.asarray(a).dtype == np.asarray(b).dtype
            assert np.array_equal(a, b)
        # The restored state steps exactly like the original.
        u1, _ = tx.update(grads, restored, params)
        u2, _ = tx.update(grads, state, params)
        assert np.array_equal(u1["w"], u2["w"])
        # The packed layout is static: it travels in the tree structure.
        packed = _problems.packed_nodes(restored)
        assert [node.layout for node in packed] == [
            node.layout for node in _problems.packed_nodes(state)
        ]
        assert bool(packed) == (row.layout == "packed")


def test_npz_round_trip_rebuilds_the_tree_from_a_fresh_init(tmp_path: Path) -> None:
    """The numpy recipe in-process, with a chain state and a bfloat16 leaf."""
    tx = optax.chain(optax.clip_by_global_norm(1.0), momentum_jax.nesterov(0.1, 0.9))
    params = {"w": jnp.ones(3, jnp.bfloat16), "b": jnp.zeros(2)}
    state = tx.init(params)
    _, state = tx.update({"w": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(2)}, state, params)
    worker.save_npz(tmp_path / "state.npz", params, state)
    params_back, state_back = worker.restore_npz(tmp_path / "state.npz", params, tx.init(params))
    assert worker.signature((params_back, state_back)) == worker.signature((params, state))
    for a, b in zip(jax.tree.leaves(state_back), jax.tree.leaves(state), strict=True):
        assert np.array_equal(a, b)
    assert state_back[1].velocity["w"].dtype == jnp.bfloat16
