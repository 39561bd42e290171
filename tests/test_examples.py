"""Smoke tests of the examples' quick modes (their numbers, not their wording) and the MNIST reader.

The examples import their helper as a top-level module (``_common``), so
``examples/`` goes on ``sys.path`` here, as it does when a script runs.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib
import json
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

import momentum_jax

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import _common  # noqa: E402
import accumulation  # noqa: E402
import convergence_rates  # noqa: E402
import int8_char_lm  # noqa: E402
import int8_state  # noqa: E402
import landscapes  # noqa: E402
import low_precision  # noqa: E402
import momentum_sweep  # noqa: E402

pytestmark = pytest.mark.slow  # runs the examples


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    assert path.stat().st_size > 5_000, path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


# --- momentum_sweep ------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("sweep")
    return momentum_sweep.main(["--quick", "--out", str(out)])


def test_sweep_files(sweep: dict) -> None:
    out = sweep["out"]
    rows = read_csv(out / "momentum_sweep.csv")
    assert list(rows[0]) == momentum_sweep.CSV_HEADER
    assert {(float(r["momentum"]), r["method"]) for r in rows} == {
        (mu, m) for mu in momentum_sweep.MOMENTA for m in momentum_sweep.METHODS
    }
    runs = read_csv(out / "momentum_sweep_runs.csv")
    assert list(runs[0]) == momentum_sweep.RUNS_HEADER
    assert len(runs) == len(rows) * momentum_sweep.QUICK["seeds"]
    assert_png(out / "momentum_sweep_loss.png")
    assert_png(out / "momentum_sweep_summary.png")
    for row in rows:  # the CSV holds the same numbers as the returned arrays
        i = momentum_sweep.METHODS.index(row["method"])
        j = momentum_sweep.MOMENTA.index(float(row["momentum"]))
        assert int(row["diverged"]) == sweep["diverged"][i, j].sum()
        assert int(row["reached"]) == np.isfinite(sweep["steps"][i, j]).sum()


def test_sweep_losses(sweep: dict) -> None:
    loss, steps, diverged = sweep["loss"], sweep["steps"], sweep["diverged"]
    num_seeds = momentum_sweep.QUICK["seeds"]
    assert loss.shape == (2, 8, num_seeds, momentum_sweep.QUICK["steps"] // 10 + 1)
    stable = np.asarray(momentum_sweep.MOMENTA) <= 0.9
    assert not diverged[:, stable].any()
    good = loss[:, stable]
    assert np.isfinite(good).all()
    assert (good[..., -1] < 0.2 * good[..., 0]).all()  # every stable run learned
    assert (sweep["accuracy"][:, stable] > 0.85).all()  # chance is 0.1
    # Momentum 0 is plain SGD for both methods: identical runs.
    np.testing.assert_allclose(loss[0, 0], loss[1, 0], rtol=1e-5)
    # Momentum 0.9 reaches the target loss in every seed; plain SGD does not in 300 steps.
    j = momentum_sweep.MOMENTA.index(0.9)
    assert np.isfinite(steps[:, j]).all()
    assert not np.isfinite(steps[:, 0]).any()
    # 0.99 at this learning rate diverges, and the detector says so: heavy ball in
    # every seed; Nesterov's look-ahead damps it, and with the random streams of
    # older JAX versions a seed may survive the short quick run.
    assert diverged[0, -1].all()
    assert diverged[1, -1].any()


def test_sweep_verdicts_follow_the_numbers() -> None:
    momenta = np.array([0.0, 0.9])
    steps = np.array([[[400, 420, 410], [100, 130, 160]], [[400, 420, 410], [95, 140, 150]]])
    reasons = np.zeros(steps.shape, "<U40")
    lines = momentum_sweep.verdict_lines(momenta, steps.astype(float), reasons)
    # Each verdict carries the numbers it is decided on: mean ± std of both sides.
    assert lines[:2] == [
        "heavy ball vs SGD: faster at 0.9 (130 ± 30 vs 410 ± 10)",
        "Nesterov vs SGD: faster at 0.9 (128 ± 29 vs 410 ± 10)",
    ]
    assert lines[2] == (
        "Nesterov vs heavy ball: no clear difference at 0 (410 ± 10 vs 410 ± 10), "
        "0.9 (128 ± 29 vs 130 ± 30)"
    )
    assert lines[3] == "diverged: none"
    reasons[1, 1, 0] = "ended above half its initial loss"
    steps = np.where(reasons != "", np.nan, steps)
    lines = momentum_sweep.verdict_lines(momenta, steps, reasons)
    # One seed never got there: said so, not called slower.
    assert lines[1] == "Nesterov vs SGD: did not reach the target at 0.9 (1/3 seeds)"
    assert lines[2] == (
        "Nesterov vs heavy ball: no clear difference at 0 (410 ± 10 vs 410 ± 10); "
        "did not reach the target at 0.9 (1/3 seeds)"
    )
    assert lines[3] == "diverged: Nesterov 0.9 (1/3: ended above half its initial loss)"


def saved_figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Collect the figures the examples would save, to read their axes."""
    figures: list[Any] = []
    monkeypatch.setattr(_common, "save", lambda fig, path: figures.append(fig))
    return figures


def test_sweep_figures_say_what_they_mark(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    figures = saved_figures(monkeypatch)
    momenta = np.array([0.0, 0.9, 0.99])
    steps = np.array([[[400.0, 420.0], [100.0, 125.0], [np.nan, np.nan]]] * 2)
    accuracy = np.array([[[0.97, 0.99], [0.99, 1.0], [np.nan, np.nan]]] * 2)  # mean + std > 1
    reasons = np.zeros(steps.shape, "<U40")
    reasons[:, 2] = "ended above half its initial loss"
    momentum_sweep.plot_summary(momenta, steps, accuracy, reasons, 0.05, tmp_path)
    left, right = figures[-1].axes
    assert right.get_ylim()[1] <= 100  # an accuracy axis ends at 100 %
    for ax in (left, right):
        marks = [line for line in ax.lines if line.get_marker() in ("x", "^")]
        assert marks
        for line in marks:  # above the frame (axes coordinates), not inside the data
            assert line.get_transform() == ax.get_xaxis_transform()
            assert (np.asarray(line.get_ydata()) > 1).all()
    legend = [text.get_text() for text in figures[-1].legends[0].get_texts()]
    assert "diverged (a seed or more) (marked above the frame)" in legend

    loss = np.full((2, 3, 2, 4), 2.3)
    loss[:, :2] = np.linspace(2.3, 0.01, 4)
    momentum_sweep.plot_loss(np.arange(4) * 10, loss, momenta, reasons, 0.05, tmp_path / "x")
    left, right = figures[-1].axes
    legend = [text.get_text() for text in right.get_legend().get_texts()]
    assert {"target 0.05", "chance level (ln 10)"} <= set(legend)
    notes = [text.get_text() for text in left.texts]
    assert notes == ["μ = 0.99: diverged\n(2/2: ended above half its initial loss)"]
    for fig in figures:
        _common.pyplot().close(fig)


def test_low_precision_figure_keeps_float32_visible(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    figures = saved_figures(monkeypatch)
    loss = np.ones((3, len(low_precision.COLUMNS), 2, 5))
    low_precision.plot(loss, np.arange(5), tmp_path / "x.png")
    for ax in figures[-1].axes:
        lines = {line.get_label(): line for line in ax.lines}
        top = max(line.get_zorder() for name, line in lines.items() if name != "float32")
        assert lines["float32"].get_zorder() > top  # drawn over the curves that lie on it
        assert lines["float32"].get_linestyle() == ":"
    _common.pyplot().close(figures[-1])


def test_clearly_less() -> None:
    # The old sweep's claim: 372 vs 382 inside a seed spread of ±9 to ±32 is no win.
    a, b = np.array([350, 372, 394.0]), np.array([373, 382, 391.0])
    assert not _common.clearly_less(a, b)
    assert not _common.clearly_less(b, a)
    assert _common.clearly_less(np.array([100, 110.0]), np.array([200, 210.0]))
    assert not _common.clearly_less(np.array([100.0]), np.array([200.0]))  # one seed: no spread
    assert _common.clearly_less(np.array([100, 110.0]), np.array([200, np.nan]))
    # b missed in one seed but was far below a in every other: no win for a.
    slow, fast = np.array([1900, 1950, 1990.0]), np.array([100, 110, np.nan])
    assert not _common.clearly_less(slow, fast)
    assert not _common.clearly_less(fast, slow)
    assert _common.clearly_less(np.array([100, 110.0]), np.array([np.nan, np.nan]))
    assert not _common.clearly_less(np.array([100, np.nan]), np.array([200, 210.0]))


def test_train_mlps_trains_exactly_the_steps_asked_for() -> None:
    """A step count that is not a multiple of the evaluation interval: every step trained
    (no more), and one loss per evaluation step, the last at the end."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 6)).astype(np.float32), rng.integers(0, 10, 32)
    data = (x, y, x, y)
    optimizers = {"momentum": lambda h: momentum_jax.momentum(0.1, h)}

    def run(steps: int, every: int) -> tuple[np.ndarray, np.ndarray]:
        eval_steps, loss, _ = _common.train_mlps(
            data, optimizers, [0.9], [0], steps=steps, eval_every=every, batch_size=8, hidden=(8,)
        )
        assert loss.shape == (1, 1, 1, len(eval_steps))
        return eval_steps, loss[0, 0, 0]

    eval_steps, loss = run(7, 3)
    np.testing.assert_array_equal(eval_steps, [0, 3, 6, 7])
    np.testing.assert_allclose(loss[-1], run(7, 7)[1][-1], rtol=1e-5)
    six = run(6, 3)[1]
    assert not np.isclose(loss[-1], six[-1], rtol=1e-5)  # the seventh step was taken
    np.testing.assert_allclose(loss[:3], six, rtol=1e-5)


def test_one_vocabulary() -> None:
    """Tables say "never" where a target was not reached, verdicts "did not reach the target"."""
    assert _common.mean_std(np.array([120.0, 140.0])) == "130 ± 14"
    assert _common.mean_std(np.array([np.nan, np.nan])) == "never"
    assert _common.mean_std(np.array([350.0, np.nan])) == "350 (1/2 never)"
    assert _common.mean_std(np.array([])) == "all diverged"
    fast, slow = np.array([100, 110.0]), np.array([200, 210.0])
    assert _common.steps_verdict(fast, slow) == "faster"
    assert _common.steps_verdict(slow, fast) == "slower"
    assert _common.steps_verdict(np.array([100, np.nan]), slow) == (
        "did not reach the target (1/2 seeds)"
    )
    # One seed has no spread: no verdict, neither a win nor "within the spread".
    one, two = np.array([0.62]), np.array([0.58])
    assert _common.float32_verdict(one, two) == "not compared (one seed: no spread)"
    assert accumulation.verdict(one, two) == "not compared (one seed: no spread)"
    assert _common.steps_verdict(np.array([100.0]), np.array([400.0])) == _common.ONE_SEED
    lines = momentum_sweep.verdict_lines(
        np.array([0.0, 0.9]), np.array([[[400.0], [100.0]]] * 2), np.zeros((2, 2, 1), "<U40")
    )
    assert lines[0] == "heavy ball vs SGD: not compared (one seed: no spread) at 0.9 (100 vs 400)"


@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        ("low_precision", ["--steps", "100", "--eval-every", "30"], "not a multiple"),
        ("low_precision", ["--eval-every", "0"], "must be at least 1"),
        ("accumulation", ["--steps", "10"], "not a multiple of 4"),
        ("int8_state", ["--seeds", "0"], "must be at least 1"),
        ("momentum_sweep", ["--steps", "0"], "must be at least 1"),
        ("convergence_rates", ["--floor", "1e-3"], "--floor < --fit-from"),
        ("convergence_rates", ["--dim", "0"], "must be at least 1"),
    ],
)
def test_options_that_cannot_run_as_asked_are_refused(
    module: str, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A step count the script would round, or a count below 1, is an error, not a
    silently different run."""
    with pytest.raises(SystemExit) as exited:
        importlib.import_module(module).main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_divergence_and_steps_to() -> None:
    curves = np.array(
        [
            [2.3, 1.0, 0.5, 0.2, 0.1, 0.05],  # healthy
            [2.3, 1.0, np.nan, np.nan, np.nan, np.nan],  # NaN
            [2.3, 1.0, 40.0, 3.0, 1.0, 0.5],  # above 10x the start
            [2.3, 0.3, 0.2, 1.5, 2.2, 2.3],  # undid its progress
            [2.3, 2.0, 1.8, 1.5, 1.2, 1.1],  # slow, not diverged
        ]
    )
    assert _common.diverged(curves).tolist() == [False, True, True, True, False]
    assert _common.divergence(curves).tolist() == ["", *_common.DIVERGED_RULES, ""]
    assert _common.why_diverged(_common.divergence(curves[3:])) == (
        "1/2: ended above half its initial loss"
    )
    reached = _common.steps_to(curves, np.arange(6) * 10, 0.1)
    np.testing.assert_array_equal(reached[[0, 4]], [40.0, np.nan])


def test_quick_runs_write_their_own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_common, "OUT", tmp_path)
    assert _common.out_dir("momentum_sweep", True, None) == tmp_path / "momentum_sweep_quick"
    assert _common.out_dir("momentum_sweep", False, None) == tmp_path / "momentum_sweep"


def test_sweep_on_mnist_files(tmp_path: Path) -> None:
    write_npz(tmp_path / "data", np.random.default_rng(0), n_train=96, n_test=32)
    args = ["--data", "mnist", "--data-dir", str(tmp_path / "data"), "--momenta", "0", "0.9"]
    result = momentum_sweep.main([*args, "--steps", "20", "--seeds", "1", "--hidden", "16",
                                  "--out", str(tmp_path / "out")])  # fmt: skip
    assert result["loss"].shape == (2, 2, 1, 3)
    assert np.isfinite(result["loss"]).all()
    assert len(read_csv(tmp_path / "out" / "momentum_sweep.csv")) == 4


# --- landscapes -----------------------------------------------------------------


def test_landscapes(tmp_path: Path) -> None:
    runs = landscapes.main(["--quick", "--out", str(tmp_path)])
    assert_png(tmp_path / "landscapes.png")
    assert_png(tmp_path / "landscapes_loss.png")
    rows = read_csv(tmp_path / "landscapes.csv")
    assert list(rows[0]) == landscapes.CSV_HEADER
    assert len(rows) == 9
    by = {(r["problem"], r["method"]): r for r in runs}
    for r in runs:
        assert np.isfinite(r["gap"]).all()
        assert r["gap"].min() >= -1e-5
        assert r["gap"][-1] < r["gap"][0]
    # Gradient descent settles in the local minimum; momentum carries both others over.
    gd, hb, nag = (by[("local minimum", m)] for m in landscapes.METHODS)
    assert gd["path"][-1, 0] == pytest.approx(landscapes.LOCAL_X, abs=0.05)
    assert hb["path"][-1, 0] == pytest.approx(landscapes.GLOBAL_X, abs=0.01)
    assert (gd["escaped"], hb["escaped"], nag["escaped"]) == (False, True, True)
    for problem in ("plateau", "ravine"):  # momentum arrives; GD does not in the quick run
        assert np.isnan(by[(problem, "gd")]["steps_to_tol"])
        assert by[(problem, "heavy_ball")]["steps_to_tol"] > 0
        assert by[(problem, "nesterov")]["steps_to_tol"] > 0


# --- convergence_rates -------------------------------------------------------------


def test_convergence_rates(tmp_path: Path) -> None:
    results = convergence_rates.main(["--quick", "--dim", "30", "--out", str(tmp_path)])
    assert_png(tmp_path / "convergence_rates.png")
    rows = read_csv(tmp_path / "convergence_rates.csv")
    assert list(rows[0]) == convergence_rates.CSV_HEADER
    assert len(rows) == 6
    for r in results:
        # The exact rate on this spectrum is the textbook rate (references.md).
        assert r["exact_rate"] == pytest.approx(r["theory_rate"], abs=1e-6)
        # Measured speed (1 − rate) within 10% of theory.
        speed = (1 - r["measured_rate"]) / (1 - r["theory_rate"])
        assert 0.9 < speed < 1.1, r["method"]
        t = int(r["steps_to_tol"])
        assert r["error"][t:].max() <= 1e-6 < r["error"][t - 1]
        assert r["steps_to_tol"] == pytest.approx(r["predicted_steps"], rel=0.25)
    at100 = {r["method"]: r["steps_to_tol"] for r in results if r["kappa"] == 100}
    assert 3 * at100["heavy_ball"] < at100["gd"]
    assert 3 * at100["nesterov"] < at100["gd"]
    assert jnp.ones(1).dtype == jnp.float32  # float64 was on for the script only


def test_low_precision(tmp_path: Path) -> None:
    result = low_precision.main(["--quick", "--out", str(tmp_path)])
    loss = result["loss"]  # (setting, column, seed, eval)
    quick = low_precision.QUICK
    assert loss.shape == (3, 5, quick["seeds"], quick["steps"] // 50 + 1)
    assert np.isfinite(loss).all()
    rows = read_csv(tmp_path / "low_precision.csv")
    assert list(rows[0]) == low_precision.CSV_HEADER
    assert len(rows) == 15
    assert_png(tmp_path / "low_precision_loss.png")
    final = loss[..., -1]
    column = low_precision.COLUMNS.index
    # Every run trains, and the stored-in-bfloat16 params with round-to-nearest
    # stall: above every stochastic-rounding run at every setting.
    assert (final < loss[..., 0]).all()
    for i in range(3):
        stalled = final[i, column("bf16 params + velocity")].min()
        assert stalled > final[i, column("SR params + velocity")].max()
        assert stalled > final[i, column("float32")].max()
    # Each printed verdict follows from the numbers.
    for (mu, name), said in result["verdicts"].items():
        i = [m for m, _ in low_precision.SETTINGS].index(mu)
        if name != "float32":
            assert said == low_precision.verdict(final[i, column(name)], final[i, 0])


def test_accumulation(tmp_path: Path) -> None:
    result = accumulation.main(["--quick", "--out", str(tmp_path)])
    names = list(accumulation.optimizers())
    loss, final = result["loss"], result["final"]  # (optimizer, seed, evaluation)
    assert loss.shape == (6, accumulation.QUICK["seeds"], accumulation.QUICK["steps"] // 40 + 1)
    assert np.isfinite(loss).all()
    assert (final < 0.1 * loss[..., 0]).all()  # every run trained
    rows = read_csv(tmp_path / "accumulation.csv")
    assert list(rows[0]) == accumulation.CSV_HEADER
    assert [r["optimizer"] for r in rows] == names
    assert_png(tmp_path / "accumulation_loss.png")
    # The same runs as MultiSteps, up to float32 rounding (and the bits of stochastic rounding).
    ours, theirs = (final[names.index(f"{who} float32")] for who in ("ours", "MultiSteps"))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    for kind in ("bf16 SR", "int8 SR"):
        ours, theirs = (final[names.index(f"{who} {kind}")] for who in ("ours", "MultiSteps"))
        np.testing.assert_allclose(ours, theirs, rtol=0.05)
    # Bytes per param measured from the states: no accumulator, 4 bytes less than MultiSteps.
    expected = {
        "MultiSteps float32": (4, 4, 4),
        "ours float32": (4, 4, 0),
        "MultiSteps bf16 SR": (4, 2, 4),
        "ours bf16 SR": (4, 2, 0),
        # int8 codes and a scale per 256 elements (4 rows) for the two 64x64 weights,
        # float32 for the rest.
        "MultiSteps int8 SR": (4, 1.28, 4),
        "ours int8 SR": (4, 1.28, 0),
    }
    for name, sizes in expected.items():
        assert result["memory"][name] == pytest.approx(sizes, abs=0.01), name
    # Each printed verdict follows from the numbers.
    reference = final[names.index(accumulation.REFERENCE)]
    for name, said in result["verdicts"].items():
        if name != accumulation.REFERENCE:
            assert said == accumulation.verdict(final[names.index(name)], reference)
            assert said == "same within the seed spread"


def test_int8_state(tmp_path: Path) -> None:
    result = int8_state.main(["--steps", "100", "--seeds", "2", "--out", str(tmp_path)])
    rows = read_csv(tmp_path / "int8_state.csv")
    assert list(rows[0]) == int8_state.CSV_HEADER
    assert len(rows) == 4 * len(int8_state.COLUMNS)
    assert_png(tmp_path / "int8_state_loss.png")
    sizes = result["bytes_per_param"]
    assert sizes["float32"] == 8
    assert 5 < sizes["int8, stochastic"] < 5.2  # 4 for the params, about 1 for the buffer
    for name, (hypers, loss, _) in result["runs"].items():
        assert np.isfinite(loss).all()
        assert (loss[..., -1] < loss[..., 0]).all()
        for j, h in enumerate(hypers):
            for i, column in enumerate(int8_state.COLUMNS[1:], 1):
                said = int8_state.verdict(loss[i, j, :, -1], loss[0, j, :, -1])
                assert result["verdicts"][(name, h, column)] == said


def test_int8_char_lm(tmp_path: Path) -> None:
    result = int8_char_lm.main(["--quick", "--out", str(tmp_path)])
    rows = read_csv(tmp_path / "int8_char_lm.csv")
    assert list(rows[0]) == int8_char_lm.CSV_HEADER
    assert len(rows) == 4
    assert_png(tmp_path / "int8_char_lm_loss.png")
    for (name, column), curve in result["curves"].items():
        assert np.isfinite(curve).all()
        assert (curve[:, -1] < curve[:, 0] - 2).all(), (name, column)  # it learns
        state = result["bytes_per_param"][(name, column)]
        expected = (4, 4.0001) if column == "float32" else (1, 1.05)  # and the step counts
        assert expected[0] < state < expected[1], (name, column, state)


# The scripts with a --quick run; with the others, every example that takes options.
SIZED = [
    "momentum_sweep",
    "landscapes",
    "convergence_rates",
    "low_precision",
    "accumulation",
    "int8_state",
    "int8_char_lm",
]


# Runs each script as `python examples/NAME.py --help` would (its folder first on
# sys.path, __name__ == "__main__"), all in one fresh process: one JAX start-up.
_AS_SCRIPTS = """
import contextlib, io, json, runpy, sys
folder, names, out = sys.argv[1], sys.argv[2:], {}
sys.path[0] = folder  # where python -c put the current folder
for name in names:
    sys.argv = [f"{folder}/{name}.py", "--help"]
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
            code = "no exit"
        except SystemExit as exit:
            code = exit.code
    out[name] = [code, shown.getvalue()]
print(json.dumps(out))
"""


def test_help_runs_as_a_script() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _AS_SCRIPTS, str(EXAMPLES), *SIZED],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout.splitlines()[-1])
    assert list(shown) == SIZED
    for name, (code, text) in shown.items():
        assert code == 0, (name, code)
        assert "--quick" in text, name


@pytest.mark.parametrize("name", [*SIZED, "variants", "quickstart", "flax_nnx", "equinox_mlp"])
def test_help_explains_every_option(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    parsers = []
    parse_args = argparse.ArgumentParser.parse_args

    def record(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        parsers.append(self)
        return parse_args(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", record)
    module = importlib.import_module(name)
    with pytest.raises(SystemExit) as exited:
        module.main(["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    entries = {  # "--steps": "--steps STEPS  training steps (default: 300)"
        entry.split()[0].rstrip(","): " ".join(entry.split())
        for entry in re.split(r"\n  (?=-)", shown.split("options:", 1)[1])
        if entry.strip()
    }
    (parser,) = parsers
    for action in parser._actions:
        option = action.option_strings[-1]
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{name} {option} has no help text"
        flag = isinstance(action, argparse._StoreTrueAction)
        if not flag and action.dest != "data_dir":  # --data-dir has no default
            assert "(default: " in entries[option], f"{name} --help: {entries[option]}"


# --- the MNIST reader ----------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def random_split(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> dict:
    return {"x": rng.integers(0, 256, (n, *shape)), "y": rng.integers(0, 10, n)}


def write_idx(directory: Path, rng: np.random.Generator, gz: bool) -> dict[str, np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    train, test = random_split(rng, 12, (5, 4)), random_split(rng, 7, (5, 4))
    arrays = {
        "x_train": train["x"],
        "y_train": train["y"],
        "x_test": test["x"],
        "y_test": test["y"],
    }
    for key, stem in _common.IDX_FILES.items():
        raw = idx_bytes(arrays[key])
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (directory / stem).write_bytes(raw)
    return arrays


def write_npz(directory: Path, rng: np.random.Generator, n_train: int = 12, n_test: int = 7):
    directory.mkdir(parents=True, exist_ok=True)
    train, test = random_split(rng, n_train, (28, 28)), random_split(rng, n_test, (28, 28))
    arrays = {
        "x_train": train["x"],
        "y_train": train["y"],
        "x_test": test["x"],
        "y_test": test["y"],
    }
    np.savez(directory / "mnist.npz", **{k: v.astype(np.uint8) for k, v in arrays.items()})
    return arrays


def check(data: tuple, arrays: dict[str, np.ndarray]) -> None:
    x_train, y_train, x_test, y_test = data
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        images = arrays[f"x_{split}"]
        assert x.dtype == np.float32
        assert y.dtype == np.int32
        np.testing.assert_array_equal(x, images.reshape(len(images), -1).astype(np.float32) / 255)
        np.testing.assert_array_equal(y, arrays[f"y_{split}"])


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx(tmp_path: Path, gz: bool) -> None:
    arrays = write_idx(tmp_path, np.random.default_rng(1), gz)
    check(_common.load_mnist(tmp_path), arrays)


def test_mnist_npz(tmp_path: Path) -> None:
    arrays = write_npz(tmp_path, np.random.default_rng(2))
    check(_common.load_data("mnist", tmp_path), arrays)


def test_mnist_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _common.load_mnist(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        _common.load_mnist(tmp_path)
    with pytest.raises(ValueError, match="--data-dir"):
        _common.load_data("mnist", None)
    write_idx(tmp_path / "idx", np.random.default_rng(3), gz=False)
    labels = tmp_path / "idx" / _common.IDX_FILES["y_test"]
    labels.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(labels))):
        _common.load_mnist(tmp_path / "idx")
    images = tmp_path / "idx" / _common.IDX_FILES["x_train"]
    raw = images.read_bytes()
    images.write_bytes(b"\x00\x00\x09" + raw[3:])
    with pytest.raises(ValueError, match=re.escape(str(images)) + ".*magic"):
        _common.read_idx(images)
    images.write_bytes(raw[:-5])
    with pytest.raises(ValueError, match=re.escape(str(images)) + ".*size"):
        _common.read_idx(images)
    bad_gz = tmp_path / "bad.gz"
    bad_gz.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=r"bad\.gz"):
        _common.read_idx(bad_gz)


def test_mnist_bad_npz(tmp_path: Path) -> None:
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"mnist\.npz.*y_train"):
        _common.load_mnist(tmp_path)
    (tmp_path / "mnist.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"mnist\.npz"):
        _common.load_mnist(tmp_path)
    write_npz(tmp_path, np.random.default_rng(4))
    with np.load(tmp_path / "mnist.npz") as archive:
        arrays = dict(archive)
    np.savez(tmp_path / "mnist.npz", **{**arrays, "y_test": arrays["y_test"][:3]})
    with pytest.raises(ValueError, match="7 test images but 3 labels"):
        _common.load_mnist(tmp_path)
