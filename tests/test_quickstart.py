"""The quick-start example trains to a useful classifier."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # trains the quickstart

pytest.importorskip("sklearn")


def test_quickstart_trains_a_digit_classifier(capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
    spec = importlib.util.spec_from_file_location("quickstart_example", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    result = module.main(["--steps", "300"])
    assert result["test_accuracy"] > 0.9
    assert result["train_loss"] < 0.2
    assert "test accuracy" in capsys.readouterr().out
