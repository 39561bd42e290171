"""Smoke tests of the examples in tiny configurations, and tests of the MNIST loader.

The examples are scripts in ``examples/``; they import their helpers as
top-level modules (``_common``, ``_data``), so that directory goes on
``sys.path`` here, as it does when a script runs.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import struct
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import _data  # noqa: E402
import convergence_rates  # noqa: E402
import landscapes  # noqa: E402
import momentum_sweep  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5_000, f"{path} is suspiciously small ({len(data)} bytes)"


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


# ---------------------------------------------------------------------------
# momentum_sweep
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, str]:
    out = tmp_path_factory.mktemp("sweep")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        summaries = momentum_sweep.main(["--quick", "--no-progress", "--out", str(out)])
    return out, summaries, stdout.getvalue()


def test_sweep_writes_table_and_figures(sweep_run: tuple[Path, list, str]) -> None:
    out, summaries, printed = sweep_run
    rows = read_csv(out / "momentum_sweep.csv")
    assert len(rows) == len(summaries) == 8 * 2
    assert list(rows[0]) == momentum_sweep.CSV_HEADERS
    pairs = {(float(r["momentum"]), r["variant"]) for r in rows}
    assert pairs == {
        (mu, v) for mu in momentum_sweep.DEFAULT_MOMENTA for v in ("heavy_ball", "nesterov")
    }
    runs = read_csv(out / "momentum_sweep_runs.csv")
    assert len(runs) == 8 * 2 * momentum_sweep.QUICK["seeds"]
    assert_png(out / "momentum_sweep_loss.png")
    assert_png(out / "momentum_sweep_summary.png")
    # The printed table has a header, a rule and one line per configuration.
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("momentum  variant"))
    assert "diverged" in lines[header]
    assert set(lines[header + 1]) == {"-", " "}
    body = lines[header + 2 : header + 2 + 16]
    assert all(
        line.split()[0] in {f"{mu:g}" for mu in momentum_sweep.DEFAULT_MOMENTA} for line in body
    )
    assert not lines[header + 2 + 16].strip()[:1].isdigit()
    assert "Conclusion:" in printed
    assert "Verdict:" in printed


def test_sweep_numbers_are_sane(sweep_run: tuple[Path, list, str]) -> None:
    _, summaries, _ = sweep_run
    by_key = {(s.variant, s.momentum): s for s in summaries}
    for s in summaries:
        if s.momentum <= 0.9:
            assert s.num_diverged == 0, s
            assert np.all(np.isfinite(s.final_loss)), s
            assert np.all(s.final_loss < 0.5), s
            # Ten classes: chance is 10%; even 400 steps give far more.
            assert np.all(s.test_accuracy > 0.85), s
    # Momentum 0 is plain SGD for both variants: identical runs.
    hb0, nag0 = by_key[("heavy_ball", 0.0)], by_key[("nesterov", 0.0)]
    np.testing.assert_allclose(hb0.final_loss, nag0.final_loss, rtol=1e-5)
    np.testing.assert_allclose(hb0.test_accuracy, nag0.test_accuracy)
    # Momentum 0.9 reaches the target sooner than plain SGD (which may not reach it at all).
    for variant in ("heavy_ball", "nesterov"):
        fast = by_key[(variant, 0.9)]
        assert fast.converged
        assert not hb0.converged or fast.steps_mean < hb0.steps_mean


def test_sweep_csv_matches_summaries(sweep_run: tuple[Path, list, str]) -> None:
    out, summaries, _ = sweep_run
    rows = read_csv(out / "momentum_sweep.csv")
    for row, s in zip(rows, summaries, strict=True):
        assert int(row["diverged"]) == s.num_diverged
        assert int(row["seeds"]) == momentum_sweep.QUICK["seeds"]
        if s.stable:
            assert float(row["test_accuracy_mean"]) == pytest.approx(s.accuracy_mean, abs=1e-6)


def test_divergence_detection() -> None:
    steps = np.arange(6)
    curves = np.array(
        [
            [2.3, 1.0, 0.5, 0.2, 0.1, 0.05],  # healthy
            [2.3, 1.0, np.nan, np.nan, np.nan, np.nan],  # NaN
            [2.3, 1.0, 40.0, 3.0, 1.0, 0.5],  # exploded above 10x the start
            [2.3, 0.3, 0.2, 1.5, 2.2, 2.3],  # undid its progress
            [2.3, 2.2, 2.1, 2.0, 1.95, 1.9],  # slow, not diverged
        ]
    )
    np.testing.assert_array_equal(
        momentum_sweep.diverged_runs(curves), [False, True, True, True, False]
    )
    reached = momentum_sweep.steps_to_target(curves, steps * 10, 0.1)
    np.testing.assert_array_equal(reached[[0, 3, 4]], [40.0, np.nan, np.nan])


def _summary(variant: str, mu: float, steps: list[float], diverged: list[bool]):
    div = np.asarray(diverged)
    return momentum_sweep.ConfigSummary(
        variant=variant,
        momentum=mu,
        diverged=div,
        steps=np.where(div, np.nan, steps),
        final_loss=np.where(div, np.nan, 0.01),
        test_accuracy=np.where(div, np.nan, 0.95),
    )


def test_conclusion_follows_the_numbers() -> None:
    summaries = [
        _summary("heavy_ball", 0.0, [400, 420], [False, False]),
        _summary("nesterov", 0.0, [400, 420], [False, False]),
        _summary("heavy_ball", 0.9, [100, 120], [False, False]),
        _summary("nesterov", 0.9, [200, 220], [False, False]),
        _summary("heavy_ball", 0.99, [np.nan, np.nan], [True, False]),
        _summary("nesterov", 0.99, [300, 300], [False, False]),
    ]
    text = "\n".join(momentum_sweep.conclusion(summaries, 0.05, 1000, 10))
    assert "heavy ball: fastest at momentum 0.9 (110 steps" in text
    assert "3.7x fewer than plain SGD" in text
    assert "Instability, heavy ball: diverged at momentum 0.99 (1/2 runs)" in text
    assert "Instability, Nesterov" not in text
    assert "Nesterov needed fewer steps at 0 of 1" in text
    # Heavy ball was faster where both converged, but it also diverged more often.
    assert "Verdict: mixed" in text


def test_sweep_on_synthetic_mnist(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    write_npz(tmp_path / "data", rng, n_train=96, n_test=32)
    out = tmp_path / "out"
    summaries = momentum_sweep.main(
        [
            "--data",
            "mnist",
            "--data-dir",
            str(tmp_path / "data"),
            "--momenta",
            "0",
            "0.9",
            "--steps",
            "20",
            "--seeds",
            "1",
            "--hidden",
            "16",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert len(summaries) == 2 * 2
    assert len(read_csv(out / "momentum_sweep.csv")) == 4
    assert_png(out / "momentum_sweep_loss.png")


# ---------------------------------------------------------------------------
# landscapes
# ---------------------------------------------------------------------------


def test_landscapes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = landscapes.main(["--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert len(runs) == 3 * 3
    assert_png(tmp_path / "landscapes.png")
    assert_png(tmp_path / "landscapes_loss.png")
    by_key = {(r.problem.key, r.method): r for r in runs}
    for run in runs:
        assert np.all(np.isfinite(run.gap)), run.label
        assert run.gap.min() >= -1e-5  # nothing below the global minimum
    # (a) with this learning rate gradient descent settles in the local minimum;
    # momentum carries both other methods over the barrier.
    gd, hb, nag = (by_key[("local_minimum", m)] for m in ("gd", "heavy_ball", "nesterov"))
    assert gd.escaped is False
    assert hb.escaped is True
    assert nag.escaped is True
    assert gd.path[-1, 0] == pytest.approx(landscapes.LOCAL_MIN_X, abs=0.05)
    assert hb.path[-1, 0] == pytest.approx(landscapes.GLOBAL_MIN_X, abs=0.01)
    assert gd.steps_to_tol is None
    assert hb.steps_to_tol is not None
    # Momentum crosses the plateau and the ravine in fewer steps.
    for key in ("plateau", "ravine"):
        gd_steps = by_key[(key, "gd")].steps_to_tol
        for method in ("heavy_ball", "nesterov"):
            steps = by_key[(key, method)].steps_to_tol
            assert steps is not None
            assert gd_steps is None or steps < gd_steps
    # The table and the summary report the same numbers.
    assert f"{nag.steps_to_tol}" in printed
    assert "stayed there: gradient descent." in printed


# ---------------------------------------------------------------------------
# convergence_rates
# ---------------------------------------------------------------------------


def test_convergence_rates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = convergence_rates.main(["--quick", "--dim", "30", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert_png(tmp_path / "convergence_rates.png")
    assert len(results) == len(convergence_rates.QUICK_KAPPAS) * 3
    table = printed.split("\n\n")[0].splitlines()
    assert len(table) == 2 + len(results)
    for r in results:
        theory = r.setting.theory_rate
        # The spectral radius of the iteration equals the textbook rate (up to the
        # sqrt(eps) error of eigenvalues of a defective matrix).
        assert r.spectral_radius == pytest.approx(theory, abs=1e-6)
        # Measured speed (1 - rate) within 10% of theory; the t·ρ^t-corrected
        # fit within 3% where the slowest mode has a repeated eigenvalue.
        speed = (1 - r.measured_rate) / (1 - theory)
        assert 0.9 < speed < 1.1, (r.setting, r.measured_rate)
        if r.setting.method != "gd":
            assert (1 - r.rate_over_t) / (1 - theory) == pytest.approx(1.0, abs=0.03)
        assert r.steps_to_tol is not None
        assert r.error[r.steps_to_tol :].max() <= 1e-6
        assert r.error.dtype == np.float64
    # Momentum needs far fewer steps than GD at the larger kappa.
    big = {r.setting.method: r for r in results if r.setting.kappa == 100.0}
    assert big["heavy_ball"].steps_to_tol * 3 < big["gd"].steps_to_tol
    assert big["nesterov"].steps_to_tol * 3 < big["gd"].steps_to_tol
    # float64 was switched on for the script only.
    assert jnp.ones(1).dtype == jnp.float32


# ---------------------------------------------------------------------------
# Running the scripts as scripts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["momentum_sweep", "landscapes", "convergence_rates", "variants"])
def test_help_runs_as_a_script(name: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    assert "--out" in result.stdout


# ---------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def make_split(
    rng: np.random.Generator, n: int, shape: tuple[int, int] = (5, 4)
) -> tuple[np.ndarray, np.ndarray]:
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    return images, labels


def write_idx_set(directory: Path, rng: np.random.Generator, *, gz: bool) -> dict[str, np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    x_train, y_train = make_split(rng, 12)
    x_test, y_test = make_split(rng, 7)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    for key, stem in _data.IDX_FILES.items():
        raw = idx_bytes(arrays[key], 2051 if key.startswith("x") else 2049)
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (directory / stem).write_bytes(raw)
    return arrays


def write_npz(
    directory: Path, rng: np.random.Generator, n_train: int = 12, n_test: int = 7
) -> dict[str, np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    x_train, y_train = make_split(rng, n_train, (28, 28))
    x_test, y_test = make_split(rng, n_test, (28, 28))
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    np.savez(directory / "mnist.npz", **arrays)
    return arrays


def check_dataset(data: _data.Dataset, arrays: dict[str, np.ndarray]) -> None:
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        assert x.dtype == np.float32
        assert y.dtype == np.int32
        assert x.shape == (images.shape[0], int(np.prod(images.shape[1:])))
        np.testing.assert_array_equal(x, images.reshape(len(images), -1).astype(np.float32) / 255)
        np.testing.assert_array_equal(y, labels)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_exact(tmp_path: Path, gz: bool) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(images, 2051)
    path = tmp_path / ("images.gz" if gz else "images")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    out = _data.read_idx(path, expected_magic=2051)
    assert out.shape == (2, 3, 4)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, images)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    (tmp_path / "labels").write_bytes(idx_bytes(labels, 2049))
    np.testing.assert_array_equal(_data.read_idx(tmp_path / "labels", 2049), labels)


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_idx(tmp_path: Path, gz: bool) -> None:
    arrays = write_idx_set(tmp_path, np.random.default_rng(1), gz=gz)
    check_dataset(_data.load_mnist(tmp_path), arrays)
    check_dataset(_data.load_dataset("mnist", tmp_path), arrays)


def test_load_mnist_npz(tmp_path: Path) -> None:
    arrays = write_npz(tmp_path, np.random.default_rng(2))
    data = _data.load_mnist(tmp_path)
    check_dataset(data, arrays)
    assert data.num_features == 28 * 28


def test_missing_directory_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _data.load_mnist(missing)


def test_empty_directory_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        _data.load_mnist(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert "mnist.npz" in str(info.value)


def test_missing_idx_file_names_it(tmp_path: Path) -> None:
    write_idx_set(tmp_path, np.random.default_rng(3), gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError) as info:
        _data.load_mnist(tmp_path)
    assert str(tmp_path / "t10k-labels-idx1-ubyte") in str(info.value)


def test_bad_magic_number(tmp_path: Path) -> None:
    write_idx_set(tmp_path, np.random.default_rng(4), gz=False)
    path = tmp_path / "train-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[:4] = struct.pack(">I", 2051)  # an images magic number on a labels file
    path.write_bytes(bytes(raw))
    with pytest.raises(_data.DataFormatError) as info:
        _data.load_mnist(tmp_path)
    message = str(info.value)
    assert str(path) in message
    assert "magic number 2051" in message
    assert "2049" in message
    assert isinstance(info.value, ValueError)


def test_truncated_idx_file(tmp_path: Path) -> None:
    write_idx_set(tmp_path, np.random.default_rng(5), gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(_data.DataFormatError, match="wrong size") as info:
        _data.load_mnist(tmp_path)
    assert str(path) in str(info.value)


def test_label_count_mismatch(tmp_path: Path) -> None:
    write_idx_set(tmp_path, np.random.default_rng(6), gz=False)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(idx_bytes(np.zeros(3, np.uint8), 2049))
    with pytest.raises(_data.DataFormatError, match="3 labels for 7 images") as info:
        _data.load_mnist(tmp_path)
    assert str(path) in str(info.value)


def test_corrupt_gzip(tmp_path: Path) -> None:
    write_idx_set(tmp_path, np.random.default_rng(7), gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(b"this is not gzip data")
    with pytest.raises(_data.DataFormatError) as info:
        _data.load_mnist(tmp_path)
    assert str(path) in str(info.value)


def test_npz_missing_key(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    x, y = make_split(rng, 4)
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=x)
    with pytest.raises(_data.DataFormatError) as info:
        _data.load_mnist(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "mnist.npz") in message
    assert "y_test" in message


def test_npz_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "mnist.npz").write_bytes(b"garbage, not a zip archive")
    with pytest.raises(_data.DataFormatError) as info:
        _data.load_mnist(tmp_path)
    assert str(tmp_path / "mnist.npz") in str(info.value)


def test_load_dataset_arguments() -> None:
    with pytest.raises(ValueError, match="--data-dir"):
        _data.load_dataset("mnist")
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        _data.load_dataset("cifar")


def test_digits_split_is_deterministic() -> None:
    first, second = _data.load_digits(), _data.load_digits()
    np.testing.assert_array_equal(first.x_train, second.x_train)
    np.testing.assert_array_equal(first.y_test, second.y_test)
    assert first.x_train.shape == (1347, 64)
    assert first.x_test.shape == (450, 64)
    assert first.x_train.dtype == np.float32
    assert first.x_train.min() == 0.0
    assert first.x_train.max() == 1.0
    # Stratified: every class appears in the test split in proportion.
    counts = np.bincount(first.y_test, minlength=10)
    assert counts.min() >= 40
    assert counts.max() <= 50
