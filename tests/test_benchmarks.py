"""The benchmark's bookkeeping (no timing here: that lives in benchmarks/)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.slow  # runs the benchmark scripts

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_ratios_are_per_repetition_against_the_best_peer() -> None:
    bench = _load("bench_step")
    ours = bench.Contender("ours", lambda n: None, bytes_per_step=20e6)
    optax_sgd = bench.Contender("optax.sgd", lambda n: None, bytes_per_step=20e6)
    fused = bench.Contender("torch fused", lambda n: None, bytes_per_step=20e6)
    triad = bench.Contender("triad (torch)", lambda n: None, bytes_per_step=12e6)
    # Repetition 2 is slow for everyone (machine noise): per-repetition ratios cancel it.
    ours.times = [2.0e-3, 4.0e-3, 2.2e-3]
    optax_sgd.times = [2.5e-3, 5.0e-3, 2.0e-3]
    fused.times = [1.0e-3, 2.0e-3, 2.0e-3]
    triad.times = [0.6e-3, 0.6e-3, 0.6e-3]
    result = bench.summarise(1_000_000, 1, [ours, optax_sgd, fused, triad])
    rows = {row["contender"]: row for row in result["rows"]}
    # Best peer per repetition: 1.0, 2.0, 2.0 ms -> ratios 2.0, 2.0, 1.1.
    assert rows["ours"]["ratio_to_best_peer"] == pytest.approx(2.0)
    assert rows["torch fused"]["ratio_to_best_peer"] == pytest.approx(1.0)
    assert result["roofline_gbytes_per_s"] == pytest.approx(12e6 / 0.6e-3 / 1e9)
    assert rows["ours"]["fraction_of_roofline"] == pytest.approx((20e6 / 2.2e-3) / (12e6 / 0.6e-3))
    assert "ratio_to_best_peer" not in rows["triad (torch)"]

    report = _load("report")
    machine = {
        "cpu": "test cpu",
        "cores": 2,
        "python": "3",
        "jax": "0",
        "jax_backend": "cpu",
        "optax": "0",
        "torch": "0",
        "torch_threads": 2,
        "momentum_jax": "0",
    }
    text = report.markdown({"machine": machine, "reps": 3, "results": [result], "memory": None})
    assert "| ours | 2.00 |" in text
    assert "triad roofline 20.0 GB/s" in text


def test_split_sizes_cover_the_total() -> None:
    bench = _load("bench_step")
    sizes = bench.split_sizes(10_000_001, 7)
    assert sum(sizes) == 10_000_001
    assert max(sizes) - min(sizes) <= 1


def test_compile_time_script_runs_and_reports_every_contender(
    capsys: pytest.CaptureFixture[str],
) -> None:
    compile_time = _load("compile_time")
    compile_time.main(["--leaves", "6", "--repeats", "1", "--other-layout"])
    out = capsys.readouterr().out
    assert "momentum packed" in out
    for name in compile_time.contenders(packed=True):
        assert f"\n{name} " in out
    assert "6 leaves" in out


def test_model_shape_sets_have_the_published_sizes() -> None:
    bench = _load("bench_step")
    gpt2 = bench.gpt2_small_shapes()
    resnet = bench.resnet50_shapes()
    # GPT-2 small: 124M params in 148 arrays; torchvision's resnet50: 25,557,032 in 161.
    assert (len(gpt2), bench._numel(gpt2)) == (148, 124_439_808)
    assert (len(resnet), bench._numel(resnet)) == (161, 25_557_032)
    assert set(bench.CPU_SETS) | set(bench.GPU_SETS) <= set(bench.PARAM_SETS)


def test_the_jitted_loop_pays_every_steps_gradient_work() -> None:
    """With the same gradients at every step XLA hoists the work that reads only them out of
    the loop (the packed layout's concatenation), which a real step pays: the device time
    would leave it out."""
    import jax
    import jax.numpy as jnp
    import optax

    import momentum_jax

    bench = _load("bench_step")
    shapes = [(64,)] * 8 + [(16, 16)] * 4
    params = [jnp.ones(shape) for shape in shapes]
    pairs = [jnp.stack([jnp.full(shape, 1e-3), jnp.full(shape, -1e-3)]) for shape in shapes]
    tx = momentum_jax.momentum(1e-3, 0.9, layout="packed")

    def step(params: list, state: object, grads: list) -> tuple:
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    program = jax.jit(bench.looped(step, 4)).lower(params, tx.init(params), pairs).compile()
    text = program.as_text()
    entry = text[text.index("\nENTRY ") :]
    entry = entry[: entry.index("\n}")]
    assert "concatenate(" in text
    assert "concatenate(" not in entry  # inside the loop's body, not hoisted before it
