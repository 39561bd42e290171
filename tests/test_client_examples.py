"""The Flax NNX and Equinox examples (docs/clients.md) train as they say."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # trains the client examples

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

STEPS = ["--steps", "80", "--batch-size", "64"]


def _flax_version() -> tuple[int, ...]:
    import flax

    return tuple(int(part) for part in flax.__version__.split(".")[:2])


def test_flax_nnx_example_trains() -> None:
    pytest.importorskip("flax")
    if _flax_version() < (0, 11):
        # Flax 0.10 (the newest for Python 3.10) has Optimizer.update(grads).
        pytest.skip("needs flax>=0.11 for nnx.Optimizer.update(model, grads)")
    import flax_nnx

    result = flax_nnx.main(STEPS)
    assert result["final_loss"] < 0.25 * result["first_loss"]
    assert result["test_accuracy"] > 0.85


def test_equinox_example_trains() -> None:
    import equinox_mlp

    result = equinox_mlp.main(STEPS)
    assert result["final_loss"] < 0.25 * result["first_loss"]
    assert result["test_accuracy"] > 0.85
