"""Smoke and sanity tests of ``examples/variants.py`` in a tiny configuration."""

from __future__ import annotations

import contextlib
import csv
import io
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import variants  # noqa: E402

from momentum_jax import schedules  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUAD_LR = 0.5
DIGITS_LR = 0.1
ARGS = [
    "--quick",
    "--digits-steps",
    "200",
    "--seeds",
    "2",
    "--hidden",
    "32",
    "--quad-dim",
    "50",
    "--quad-steps",
    "1500",
    "--quad-target",
    "1e-3",
    "--quad-lr",
    str(QUAD_LR),
    "--digits-lr",
    str(DIGITS_LR),
]


@pytest.fixture(scope="module")
def example_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, variants.Results, str]:
    out = tmp_path_factory.mktemp("variants")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        results = variants.main([*ARGS, "--out", str(out)])
    return out, results, stdout.getvalue()


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def table_body(printed: str, header_start: str, rows: int) -> list[str]:
    """The rows of the printed table whose header line starts with ``header_start``."""
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    assert set(lines[header + 1]) == {"-", " "}
    body = lines[header + 2 : header + 2 + rows]
    after = lines[header + 2 + rows]
    assert not any(after.startswith(variants.LABELS[m]) for m in variants.METHODS)
    return body


def test_files_written(example_run: tuple[Path, variants.Results, str]) -> None:
    out, results, _ = example_run
    rows = read_csv(out / "variants.csv")
    assert list(rows[0]) == variants.CSV_HEADERS
    assert len(rows) == len(variants.PROBLEMS) * len(variants.METHODS)
    assert {(r["problem"], r["method"]) for r in rows} == {
        (p, m) for p in variants.PROBLEMS for m in variants.METHODS
    }
    png = (out / "variants.png").read_bytes()
    assert png[:8] == PNG_MAGIC
    assert 5_000 < len(png) < 150_000
    assert len(results.quadratic) == len(results.digits) == len(variants.METHODS)


def test_printed_tables_and_conclusion(example_run: tuple[Path, variants.Results, str]) -> None:
    _, results, printed = example_run
    n = len(variants.METHODS)
    quad = table_body(printed, "method  ", n)
    assert [line.split("  ")[0].strip() for line in quad] == [
        variants.LABELS[m] for m in variants.METHODS
    ]
    later = printed[printed.index("(2) Digits") :]
    digits = table_body(later, "method  ", n)
    assert all(line.rstrip().endswith("/2") for line in digits)  # diverged k/seeds
    # The learning-rate conversions are stated.
    assert "α_QHM = α/(1−0.9) = 10α" in printed
    assert "α_AggMo = 0.2703α" in printed
    # The conclusion quotes the measured numbers.
    assert "Conclusion:" in printed
    assert results.conclusion
    gd = next(r for r in results.quadratic if r.spec.key == "gd")
    assert f"{gd.final_error:.1e}" in printed
    for line in results.conclusion:
        assert f"- {line}" in printed


def test_learning_rate_conversions(example_run: tuple[Path, variants.Results, str]) -> None:
    out, _, _ = example_run
    rates = {
        (r["problem"], r["method"]): float(r["learning_rate"])
        for r in read_csv(out / "variants.csv")
    }
    for problem, alpha in (("quadratic", QUAD_LR), ("digits", DIGITS_LR)):
        for method in ("gd", "momentum", "nesterov", "sutskever", "demon"):
            assert rates[(problem, method)] == pytest.approx(alpha)
        assert rates[(problem, "qhm")] == pytest.approx(alpha / (1 - 0.9))
        assert rates[(problem, "aggmo")] == pytest.approx(alpha * 10 / 37, rel=1e-5)
    assert variants.aggmo_lr_factor() == pytest.approx(10 / 37)


def test_quadratic_numbers(example_run: tuple[Path, variants.Results, str]) -> None:
    _, results, _ = example_run
    by_key = {r.spec.key: r for r in results.quadratic}
    for r in results.quadratic:
        assert not r.diverged, r.spec.key
        assert np.all(np.isfinite(r.error)), r.spec.key
        assert r.error[0] == pytest.approx(1.0)
        assert r.error.dtype == np.float64
    gd = by_key["gd"]
    # Every momentum method ends closer to the minimizer than gradient descent at the same α.
    for key, r in by_key.items():
        if key != "gd":
            assert r.final_error < gd.final_error, key
    for key in ("momentum", "nesterov", "aggmo", "sutskever"):
        steps = by_key[key].steps_to_target
        assert steps is not None, key
        assert gd.steps_to_target is None or steps < gd.steps_to_target
        assert by_key[key].error[steps:].max() <= 1e-3


def test_quadratic_matches_a_plain_numpy_iteration(
    example_run: tuple[Path, variants.Results, str],
) -> None:
    # Gradient descent written out in NumPy gives the same errors as the example's run.
    _, results, _ = example_run
    matrix, _, minimizer, start = variants.make_quadratic(50, 1000.0, 0)
    x, errors = start.copy(), [1.0]
    initial = np.linalg.norm(start - minimizer)
    for _ in range(1500):
        x = x - QUAD_LR * matrix @ (x - minimizer)
        errors.append(np.linalg.norm(x - minimizer) / initial)
    gd = next(r for r in results.quadratic if r.spec.key == "gd")
    np.testing.assert_allclose(gd.error, errors, rtol=1e-9)
    eigenvalues = np.linalg.eigvalsh(matrix)
    assert eigenvalues.max() / eigenvalues.min() == pytest.approx(1000.0, rel=1e-6)


def test_digits_numbers(example_run: tuple[Path, variants.Results, str]) -> None:
    _, results, _ = example_run
    for r in results.digits:
        assert r.num_diverged == 0, r.spec.key
        assert r.train_loss.shape == (2, 200 // 10 + 1)
        assert np.all(np.isfinite(r.train_loss)), r.spec.key
        # Ten classes: chance is 10%.
        assert np.all(r.test_accuracy > 0.6), (r.spec.key, r.test_accuracy)
        assert r.train_loss[:, -1].max() < r.train_loss[:, 0].min()
    by_key = {r.spec.key: r for r in results.digits}
    # The same seed gives every method the same initial weights.
    for r in results.digits:
        np.testing.assert_allclose(r.train_loss[:, 0], by_key["gd"].train_loss[:, 0], rtol=1e-6)
    assert np.all(by_key["momentum"].test_accuracy > 0.85)
    assert np.mean(by_key["momentum"].final_loss) < np.mean(by_key["gd"].final_loss)


def test_float32_restored(example_run: tuple[Path, variants.Results, str]) -> None:
    assert jnp.ones(1).dtype == jnp.float32


@pytest.mark.parametrize(("cap", "stage"), [(0.5, 0), (0.75, 1), (0.9, 4), (0.95, 9), (0.99, 49)])
def test_sutskever_stage_arithmetic(cap: float, stage: int) -> None:
    assert variants.stages_to_cap(cap) == stage
    if stage:
        length = variants.sutskever_stage_length(cap, 3000)
        schedule = schedules.sutskever(cap, steps_per_stage=length)
        reached = length * stage
        assert reached <= 1500
        assert float(schedule(reached)) == pytest.approx(cap, abs=1e-6)
        assert float(schedule(reached - 1)) < cap - 1e-4


def test_divergence_is_flagged(tmp_path: Path) -> None:
    # At α = 1 QHM's converted rate 10α is too large for the top eigenvalue.
    specs = variants.make_specs(1.0, 400, variants.QUAD_CAP)
    runs = variants.run_quadratic(specs, dim=20, kappa=1000.0, seed=0, num_steps=400, target=1e-6)
    by_key = {r.spec.key: r for r in runs}
    assert by_key["qhm"].diverged
    assert by_key["qhm"].steps_to_target is None
    assert not by_key["momentum"].diverged
    rows = {row[0]: row for row in variants.quadratic_rows(runs)}
    assert rows["QHM"][2:] == ["diverged", "diverged", "yes"]
    text = " ".join(variants.quadratic_conclusion(runs, 1e-6, 400))
    assert "diverged: QHM" in text

    # A digits method whose every seed blew up, next to a healthy one.
    steps = np.arange(4) * 10
    good = np.array([[2.3, 0.5, 0.05, 0.005], [2.3, 0.6, 0.06, 0.004]])
    bad = np.array([[2.3, 40.0, np.nan, np.nan], [2.3, np.inf, np.nan, np.nan]])
    digit_specs = {s.key: s for s in variants.make_specs(0.1, 30, variants.DIGITS_CAP)}

    def run(key: str, losses: np.ndarray) -> variants.DigitsRun:
        diverged = variants.diverged_runs(losses)
        reached = np.where(diverged, np.nan, variants.steps_to_target(losses, steps, 0.01))
        return variants.DigitsRun(
            digit_specs[key], losses, np.array([0.9, 0.92]), diverged, reached
        )

    digits = [run("momentum", good), run("qhm", bad)]
    assert digits[1].num_diverged == 2
    table = variants.digits_rows(digits)
    assert table[1][2:] == ["diverged", "diverged", "diverged", "2/2"]
    lines = variants.digits_conclusion(digits, 0.01, 30)
    assert any("QHM 2/2" in line for line in lines)
    assert variants.versus_momentum(runs, digits, 1e-6, 0.01)
    path = variants.plot(
        runs,
        digits,
        steps,
        quad_title="q",
        digits_title="d",
        quad_target=1e-6,
        loss_target=0.01,
        path=tmp_path / "diverged.png",
    )
    assert path.read_bytes()[:8] == PNG_MAGIC
