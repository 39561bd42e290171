"""Smoke test of examples/variants.py in a small configuration: its numbers, not its wording."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import variants  # noqa: E402

from momentum_jax import schedules  # noqa: E402

pytestmark = pytest.mark.slow  # runs the variants example

ARGS = ["--quick", "--dim", "50", "--quad-steps", "1500", "--quad-target", "1e-3"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("variants")
    return out, variants.main([*ARGS, "--out", str(out)])


def test_files(run: tuple[Path, dict]) -> None:
    out, result = run
    with (out / "variants.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == variants.CSV_HEADER
    assert [(r["problem"], r["method"]) for r in rows] == [
        (p, m) for p in ("quadratic", "digits") for m in variants.LABELS
    ]
    digits = {r["method"]: r for r in rows if r["problem"] == "digits"}
    for i, name in enumerate(variants.LABELS):
        assert int(digits[name]["seeds"]) == variants.QUICK["seeds"]
        assert float(digits[name]["final_mean"]) == pytest.approx(result["loss"][i, :, -1].mean())
    png = (out / "variants.png").read_bytes()
    assert png[:4] == b"\x89PNG"
    assert len(png) > 5_000


def test_quadratic(run: tuple[Path, dict]) -> None:
    errors = run[1]["errors"]
    for name, error in errors.items():
        assert error.shape == (1501,)
        assert error.dtype == np.float64
        assert np.isfinite(error).all()
        assert error[0] == 1.0
        assert error[-1] < 0.1, name  # every method makes progress
    # With momentum the κ = 1000 quadratic converges far faster than gradient descent.
    for name in ("momentum", "nesterov", "aggmo", "sutskever"):
        assert errors[name][-1] < errors["gd"][-1] / 100, name
    steps = run[1]["quad_steps"]
    assert np.isfinite(steps["momentum"])
    assert steps["momentum"] < 1500
    assert np.isnan(steps["gd"])


def test_digits(run: tuple[Path, dict]) -> None:
    loss, acc, diverged = run[1]["loss"], run[1]["accuracy"], run[1]["diverged"]
    assert loss.shape == (7, variants.QUICK["seeds"], variants.QUICK["steps"] // 10 + 1)
    assert not diverged.any()
    assert np.isfinite(loss).all()
    assert (loss[..., -1] < 0.1 * loss[..., 0]).all()
    assert (acc > 0.9).all()
    # All methods start from the same weights for a given seed.
    np.testing.assert_allclose(loss[..., 0], loss[:1, :, 0].repeat(7, 0), rtol=1e-6)
    # Gradient descent (a tenth of the others' long-run step) trails momentum: in
    # the quick run it does not reach the target, which is said, not "slower".
    gd_steps, gd_final = run[1]["verdicts"]["gd"]
    assert gd_final == "higher"
    if np.isnan(run[1]["steps"][0]).any():
        assert gd_steps.startswith("did not reach the target (")
    else:
        assert gd_steps == "slower"
    for steps, final in run[1]["verdicts"].values():
        assert steps in {"faster", "slower", "no clear difference"} or steps.startswith(
            "did not reach the target ("
        )
        assert final in {"lower", "higher", "no clear difference"}


@pytest.mark.parametrize(("cap", "steps"), [(0.99, 3000), (0.95, 2000), (0.9, 400)])
def test_sutskever_reaches_its_cap_half_way(cap: float, steps: int) -> None:
    schedule = schedules.sutskever(cap, variants.stage_length(cap, steps))
    momenta = np.asarray([float(schedule(t)) for t in range(0, steps, 5)])
    assert momenta[0] == 0.5
    assert momenta.max() == pytest.approx(cap, abs=1e-6)
    first_at_cap = 5 * int(np.argmax(momenta >= cap - 1e-6))
    assert steps // 2 - variants.stage_length(cap, steps) <= first_at_cap <= steps // 2
