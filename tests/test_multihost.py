"""Several processes, one mesh: jax.distributed on 127.0.0.1, checkpoints, preemption.

Each launch starts fresh Python processes running ``tests/_worker.py multihost``
(two processes with 4 CPU devices each, joined by ``jax.distributed`` into one
2x4 ``('data', 'model')`` mesh of 8 devices; or one process with all 8, the
reference). Every launch is bounded: a process still running at its deadline
is killed, with the other, and the test fails with their logs.

The launches, few because each costs a JAX start-up:

* ``run`` (two processes) and ``reference`` (one), side by side: sharding of
  the eager and jitted init, a data-parallel training run, and a run of the
  optimizers alone on a fixed gradient sequence; then the two processes run
  the fixed sequence again with an ``ocp.CheckpointManager`` and stall in a
  checkpoint that process 1 never joins, where the test kills both (SIGKILL).
* ``resume`` (two fresh processes): restore the latest complete checkpoint
  into an abstract target and finish the run.
* ``die`` (two pairs): one process is killed while the other waits for it in
  a collective; the survivor must fail, not hang.
* ``examples/multihost.py --processes 2``.

Under pytest-xdist the launches run once per session, not once per worker
that collects a test of this module: the first worker to need a launch runs
it and leaves its result in the session's shared temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from tests import _worker as worker

pytestmark = pytest.mark.slow  # multi-process launches

# The orbax that installs beside JAX 0.4.35 (the floors leg) coordinates its
# multi-process checkpoints through a distributed-client call that JAX only
# gained later; there the processes cannot checkpoint at all.
ORBAX_NEEDS = (
    "orbax's multi-process checkpoints need jax's DistributedRuntimeClient.key_value_try_get"
)


def _runtime_client() -> Any:
    from jax._src import lib

    for module in ("_jax", "xla_extension"):
        client = getattr(getattr(lib, module, None), "DistributedRuntimeClient", None)
        if client is not None:
            return client
    return None


if not hasattr(_runtime_client(), "key_value_try_get"):
    pytest.skip(ORBAX_NEEDS, allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "_worker.py"
EXAMPLE = ROOT / "examples" / "multihost.py"
CASES = worker.CASES
# Deadlines (seconds) for whole launches on a loaded 2-core machine; a normal
# run needs a fraction of each.
RUN_TIMEOUT = 420
RESUME_TIMEOUT = 240
DIE_TIMEOUT = 120
EXAMPLE_TIMEOUT = 300
# After its peer is lost, the survivor of a collective must exit within this;
# within KILLED_DEADLINE where the peer was killed (its connections close).
SURVIVOR_DEADLINE = 30
KILLED_DEADLINE = 10
HEARTBEAT_TIMEOUT = worker.HEARTBEAT_TIMEOUT
# The training run against one process: the gradients are all-reduced in
# another order, so they differ by a few ulps, and 20 steps carry that on.
TRAIN_RTOL = 1e-5
TRAIN_ATOL = 1e-6


# --- launching processes ---------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on now (the coordinator binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def environment(devices: int) -> dict[str, str]:
    flags = os.environ.get("XLA_FLAGS", "")
    flags = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": flags,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


class Launch:
    """The processes of one worker launch, their logs and reports, in ``out``."""

    def __init__(self, task: str, out: Path, *, processes: int, **spec: Any) -> None:
        self.name = spec.pop("name", task)
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        port = free_port()
        devices = 8 // processes
        self.procs: list[subprocess.Popen[bytes]] = []
        for index in range(processes):
            full = {
                "task": task,
                "name": self.name,
                "process_id": index,
                "num_processes": processes,
                "port": port,
                "out": str(out),
                **spec,
            }
            log = (out / f"{self.name}-p{index}.log").open("wb")
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, str(WORKER), "multihost", json.dumps(full)],
                    env=environment(devices),
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()

    def log(self, index: int) -> str:
        return (self.out / f"{self.name}-p{index}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(
            f"--- {self.name} process {i} (exit {p.poll()}), last lines:\n{self.log(i)[-3000:]}"
            for i, p in enumerate(self.procs)
        )

    def kill(self, index: int | None = None) -> None:
        for i, proc in enumerate(self.procs):
            if (index is None or i == index) and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)

    def wait(self, deadline: float) -> list[int]:
        """Every process's exit status; past ``deadline`` (monotonic) all are killed."""
        for proc in self.procs:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"{self.name} ran past its deadline\n{self.logs()}") from None
        return [proc.returncode for proc in self.procs]

    def wait_for(self, files: list[str], deadline: float) -> None:
        """Until every file exists in ``out``; a process that exits first fails the launch."""
        while not all((self.out / f).exists() for f in files):
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"{self.name}: no {files} before the deadline\n{self.logs()}")
            if any(proc.poll() is not None for proc in self.procs):
                self.kill()
                raise AssertionError(f"{self.name}: a process exited early\n{self.logs()}")
            time.sleep(0.1)

    def report(self, index: int = 0) -> dict[str, Any]:
        path = self.out / f"{self.name}-p{index}.json"
        if not path.exists():
            raise AssertionError(f"{self.name}: process {index} wrote no report\n{self.logs()}")
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def succeed(self, deadline: float) -> list[dict[str, Any]]:
        codes = self.wait(deadline)
        if any(codes):
            raise AssertionError(f"{self.name} failed (exit {codes})\n{self.logs()}")
        return [self.report(i) for i in range(len(self.procs))]


@contextlib.contextmanager
def launched(task: str, out: Path, *, processes: int, **spec: Any) -> Iterator[Launch]:
    """A launch whose processes are all gone when the block ends, however it ends."""
    launch = Launch(task, out, processes=processes, **spec)
    try:
        yield launch
    finally:
        launch.kill()


# --- one result per session, shared by the xdist workers ----------------------------------


def once(
    factory: pytest.TempPathFactory, name: str, compute: Callable[[Path], dict[str, Any]]
) -> dict[str, Any]:
    """``compute(folder)``, run by the first process of this session that asks.

    The result (or the error it raised) is kept as JSON in the session's
    temporary folder, which pytest-xdist's workers share; a file lock makes
    the others wait for it instead of launching the same processes again.
    """
    root = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above each worker's own
    folder = root / f"multihost-{name}"
    result_file = root / f"multihost-{name}.json"
    with (root / f"multihost-{name}.lock").open("w") as lock:
        _lock(lock)
        if not result_file.exists():
            folder.mkdir(exist_ok=True)
            try:
                result = {"ok": compute(folder)}
            except Exception:
                result = {"error": traceback.format_exc()}
            result_file.write_text(json.dumps(result))
    stored: dict[str, Any] = json.loads(result_file.read_text())
    if "error" in stored:
        pytest.fail(f"the {name} launch failed:\n{stored['error']}", pytrace=False)
    ok: dict[str, Any] = stored["ok"]
    return ok


def _lock(file: Any) -> None:
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): each worker launches its own
        return
    fcntl.flock(file.fileno(), fcntl.LOCK_EX)


# --- the launches ------------------------------------------------------------------------


def _runs(folder: Path) -> dict[str, Any]:
    checkpoints = folder / "checkpoints"
    deadline = time.monotonic() + RUN_TIMEOUT
    with (
        launched("run", folder / "run", processes=2, checkpoints=str(checkpoints)) as multi,
        launched("run", folder / "reference", processes=1, name="reference") as single,
    ):
        # Both start the checkpoint of step STALL_AT; process 1 freezes (it
        # cannot complete), process 0 goes on into the next step. Kill both.
        multi.wait_for(["frozen-p1", "in-next-step-p0", "run-p0.json", "run-p1.json"], deadline)
        partial = _wait_for_partial_checkpoint(checkpoints, worker.STALL_AT, deadline)
        at_kill = sorted(p.name for p in checkpoints.iterdir())
        multi.kill()
        killed = [proc.returncode for proc in multi.procs]
        reference = single.succeed(deadline)[0]
        reports = [multi.report(0), multi.report(1)]
    return {
        "multi": reports,
        "single": reference,
        "killed": killed,
        "partial": partial,
        "at_kill": at_kill,
        "folder": str(folder),
        "logs": multi.logs(),
    }


def _wait_for_partial_checkpoint(directory: Path, step: int, deadline: float) -> str:
    """The name of the unfinished checkpoint of ``step`` once it is on disk ('' if never)."""
    give_up = min(deadline, time.monotonic() + 20)
    while time.monotonic() < give_up:
        for entry in directory.iterdir():
            if entry.name.startswith(f"{step}.") or entry.name.startswith(f"{step}_"):
                return entry.name
        time.sleep(0.1)
    return ""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return once(tmp_path_factory, "runs", _runs)


def _resumed(folder: Path, runs: dict[str, Any]) -> dict[str, Any]:
    checkpoints = Path(runs["folder"]) / "checkpoints"
    deadline = time.monotonic() + RESUME_TIMEOUT
    with launched("resume", folder, processes=2, checkpoints=str(checkpoints)) as resumed:
        reports = resumed.succeed(deadline)
    return {"reports": reports}


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory, runs: dict[str, Any]) -> dict[str, Any]:
    return once(tmp_path_factory, "resume", lambda folder: _resumed(folder, runs))


# How a peer is lost: killed (its connections close), or frozen (SIGSTOP: the
# connections stay open and only the missing heartbeats tell). The frozen case
# needs heartbeat_timeout_seconds (JAX 0.7 and later; the default is 100 s).
LOSSES = [("killed", 0), ("killed", 1)]
if "heartbeat_timeout_seconds" in inspect.signature(jax.distributed.initialize).parameters:
    LOSSES += [("frozen", 0), ("frozen", 1)]


def _deaths(folder: Path) -> dict[str, Any]:
    """For each way of losing a process: lose it while the other waits for it in a collective."""
    deadline = time.monotonic() + DIE_TIMEOUT
    outcome: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        pairs = {
            f"{how}-{victim}": stack.enter_context(
                launched("die", folder / f"{how}-{victim}", processes=2, victim=victim)
            )
            for how, victim in LOSSES
        }
        for launch in pairs.values():
            launch.wait_for(["ready-p0", "ready-p1"], deadline)
        time.sleep(1.0)  # the survivors are inside the collective by now
        lost_at = {}
        for (how, victim), launch in zip(LOSSES, pairs.values(), strict=True):
            launch.procs[victim].send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
            lost_at[how, victim] = time.monotonic()
        for (how, victim), launch in zip(LOSSES, pairs.values(), strict=True):
            survivor = launch.procs[1 - victim]
            try:
                survivor.wait(
                    timeout=max(lost_at[how, victim] + SURVIVOR_DEADLINE - time.monotonic(), 0.1)
                )
            except subprocess.TimeoutExpired:
                launch.kill()
                raise AssertionError(
                    f"process {1 - victim} hung after process {victim} was {how}\n{launch.logs()}"
                ) from None
            report_file = launch.out / f"die-p{1 - victim}.json"
            outcome[f"{how}-{victim}"] = {
                "survivor_exit": survivor.returncode,
                "seconds_to_exit": time.monotonic() - lost_at[how, victim],
                "report": json.loads(report_file.read_text()) if report_file.exists() else None,
                "log": launch.log(1 - victim)[-6000:],
            }
    return outcome


@pytest.fixture(scope="module")
def deaths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return once(tmp_path_factory, "die", _deaths)


# --- the tests ------------------------------------------------------------------------------


def test_the_processes_form_one_mesh(runs: dict[str, Any]) -> None:
    for index, report in enumerate(runs["multi"]):
        assert report["process_index"] == index
        assert report["process_count"] == 2
        assert report["device_count"] == 8
        assert report["local_device_count"] == 4
        # 'data' spans the processes, 'model' stays within one.
        assert report["mesh_processes"] == [[0, 0, 0, 0], [1, 1, 1, 1]]
        assert report["setup"]["cpu_collectives"] == "gloo"
    single = runs["single"]
    assert (single["process_count"], single["device_count"]) == (1, 8)


@pytest.mark.parametrize("case", CASES)
def test_eager_init_mirrors_param_sharding(runs: dict[str, Any], case: str) -> None:
    # Checked on each process; w1 is split across the processes, w2 within
    # each, w3 both ways.
    for report in [*runs["multi"], runs["single"]]:
        assert report["eager_init"][case] == []


@pytest.mark.parametrize("case", CASES)
def test_jitted_init_mirrors_param_sharding(runs: dict[str, Any], case: str) -> None:
    # Buffers as their params; packed buffers and step counters replicated
    # over all 8 devices of both processes.
    for report in [*runs["multi"], runs["single"]]:
        assert report["jit_init"][case] == []


def test_the_layout_check_can_fail(runs: dict[str, Any]) -> None:
    for report in runs["multi"]:
        problems = report["detector"]
        assert len(problems) == 3
        assert all(any(f"['{name}']" in p for p in problems) for name in ("w1", "w2", "w3"))
        # An optimizer state without buffers (optax.identity) is reported, not passed.
        assert report["detector_empty"] == [worker.EMPTY_STATE]


def test_the_update_needs_no_communication(runs: dict[str, Any]) -> None:
    # One compiled program steps every case; elementwise, so each device
    # updates its own shards and no process waits for the other.
    for report in runs["multi"]:
        assert report["collectives"] == []


def merged(*trees: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Per-device digests of several processes, as one: {leaf path: {mesh position: digest}}."""
    out: dict[str, dict[str, str]] = {}
    for tree in trees:
        for path, shards in tree.items():
            assert not out.get(path, {}).keys() & shards.keys(), f"{path}: a device twice"
            out.setdefault(path, {}).update(shards)
    return out


@pytest.mark.parametrize("case", CASES)
def test_optimizer_is_bit_identical_to_one_process(runs: dict[str, Any], case: str) -> None:
    """20 donated steps on the same gradients: the same bits as 8 devices in one process."""
    first, second = runs["multi"]
    single = runs["single"]
    for report in (first, second):
        assert report["after_fixed"][case] == []
    both = merged(first["fixed"][case], second["fixed"][case])
    assert both == single["fixed"][case]
    # Every leaf is on all 8 devices, 4 per process; every param moved on each.
    assert all(len(shards) == 8 for shards in both.values())
    assert {where for shards in first["fixed"][case].values() for where in shards} == {
        f"0,{column}" for column in range(4)
    }
    for name, initial in single["initial"].items():
        final = both[f"['params']{name}"]
        assert all(final[device] != initial[device] for device in initial), name
    assert any(path.startswith("['opt_state']") for path in both)


@pytest.fixture(scope="module")
def trained(runs: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    folder = Path(runs["folder"])
    out = {}
    for label, path in (("multi", "run/run.npz"), ("single", "reference/reference.npz")):
        with np.load(folder / path) as data:
            out[label] = {key: data[key] for key in data.files}
    return out


@pytest.mark.parametrize("case", CASES)
def test_training_run_matches_one_process(
    runs: dict[str, Any], trained: dict[str, dict[str, np.ndarray]], case: str
) -> None:
    """A data-parallel run: gradients all-reduced across processes, within rounding of one."""
    multi, single = runs["multi"], runs["single"]
    for report in multi:
        assert report["after_training"][case] == []
    losses = np.asarray(multi[0]["losses"][case])
    assert losses.shape == (worker.STEPS,)
    assert losses[-1] < 0.9 * losses[0]  # it trains (QHM, its velocity an average, slowest)
    np.testing.assert_allclose(losses, single["losses"][case], rtol=TRAIN_RTOL)
    names = [key for key in trained["single"] if key.startswith(f"{case}/")]
    assert len(names) == len(worker.MULTIHOST)
    for key in names:
        np.testing.assert_allclose(
            trained["multi"][key], trained["single"][key], rtol=TRAIN_RTOL, atol=TRAIN_ATOL
        )


def test_zero1_across_processes(runs: dict[str, Any]) -> None:
    """Replicated params, the velocity split over the devices of both processes."""
    single = runs["single"]["zero1"]
    for report in runs["multi"]:
        zero1, replicated = report["zero1"]["zero1"], report["zero1"]["replicated"]
        # Each of the 8 devices holds 1/8 of the 64x32 buffer; 'odd' (5 rows)
        # and the counter stay whole.
        assert zero1["velocity_specs"] == {
            "w": "P(('data', 'model'),)",
            "b": "P(('data', 'model'),)",
            "odd": "P()",
        }
        assert zero1["velocity_w_processes"] == [0, 1]
        assert zero1["velocity_w_bytes_per_device"] * 8 == replicated["velocity_w_bytes_per_device"]
        assert replicated["velocity_w_bytes_per_device"] == 64 * 32 * 4
        # The price: an all-gather of the update, now across processes.
        assert zero1["collectives"] == ["all-gather"]
        assert replicated["collectives"] == []
    # The numbers do not change: split or not, two processes or one.
    for label in ("zero1", "replicated"):
        both = merged(*(report["zero1"][label]["digests"] for report in runs["multi"]))
        assert both == single[label]["digests"]
    for report in [*runs["multi"], runs["single"]]:
        split, whole = report["zero1"]["zero1"]["whole"], report["zero1"]["replicated"]["whole"]
        assert len(split) == 6  # w, b and odd: params and velocity
        assert split == whole


def test_a_partial_checkpoint_was_on_disk_at_the_kill(runs: dict[str, Any]) -> None:
    assert runs["killed"] == [-signal.SIGKILL, -signal.SIGKILL]
    # Steps 5 and 10 complete; 15 started by both processes, finished by neither.
    partial = runs["partial"]
    assert partial.startswith(f"{worker.STALL_AT}.")
    steps = [name for name in runs["at_kill"] if name[:1].isdigit()]
    assert sorted(steps) == sorted([str(worker.SAVE_EVERY), str(2 * worker.SAVE_EVERY), partial])


def test_resume_takes_the_latest_complete_checkpoint(
    runs: dict[str, Any], resumed: dict[str, Any]
) -> None:
    last_complete = worker.STALL_AT - worker.SAVE_EVERY
    for report in resumed["reports"]:
        assert report["listing"] == runs["at_kill"]  # the partial one was still there
        assert report["all_steps"] == [worker.SAVE_EVERY, last_complete]
        assert report["restored_step"] == last_complete


@pytest.mark.parametrize("case", CASES)
def test_restore_in_fresh_processes_is_exact(
    runs: dict[str, Any], resumed: dict[str, Any], case: str
) -> None:
    """Into an abstract target (eval_shape and the jitted init's shardings): the saved bits."""
    saved = merged(*(report["fixed_at_checkpoint"][case] for report in runs["multi"]))
    restored = merged(*(report["restored_digests"][case] for report in resumed["reports"]))
    assert restored == saved
    for report in resumed["reports"]:
        assert report["restored"][case] == []
        # Every counter of the state (a chain has several) comes back.
        counters = report["counts"][case]
        assert counters
        assert set(counters) == {worker.STALL_AT - worker.SAVE_EVERY}


@pytest.mark.parametrize("case", CASES)
def test_resumed_run_is_bit_identical(
    runs: dict[str, Any], resumed: dict[str, Any], case: str
) -> None:
    uninterrupted = merged(*(report["fixed"][case] for report in runs["multi"]))
    assert merged(*(report["fixed"][case] for report in resumed["reports"])) == uninterrupted
    # The run moves after the checkpoint, so equality is not trivial.
    saved = merged(*(report["fixed_at_checkpoint"][case] for report in runs["multi"]))
    for path, shards in saved.items():
        if path.startswith("['params']"):
            assert shards != uninterrupted[path], path


def test_workers_emit_no_warnings(runs: dict[str, Any], resumed: dict[str, Any]) -> None:
    for report in [*runs["multi"], runs["single"], *resumed["reports"]]:
        assert report["warnings"] == []


@pytest.mark.parametrize(
    ("how", "victim"), LOSSES, ids=[f"{how}_process_{victim}" for how, victim in LOSSES]
)
def test_a_lost_peer_fails_the_survivor(deaths: dict[str, Any], how: str, victim: int) -> None:
    """A process lost while the other waits for it in a collective: an error, not a hang.

    Process 0 hosts the coordinator, so losing it or the other are different
    paths through JAX.
    """
    outcome = deaths[f"{how}-{victim}"]
    assert outcome["survivor_exit"] != 0
    assert outcome["seconds_to_exit"] < SURVIVOR_DEADLINE
    report, log = outcome["report"], outcome["log"]
    if how == "frozen":
        # The coordination service notices the missing heartbeats and stops
        # the survivor (SIGABRT) after heartbeat_timeout_seconds.
        assert outcome["survivor_exit"] == -signal.SIGABRT
        assert outcome["seconds_to_exit"] > 0.5 * HEARTBEAT_TIMEOUT
        assert "heartbeat" in log.lower(), log
        return
    assert outcome["seconds_to_exit"] < KILLED_DEADLINE
    if report is None:
        # The coordination service stopped the survivor before it wrote its report.
        assert outcome["survivor_exit"] == -signal.SIGABRT, log
    else:
        # The collective raised (gloo saw the connection close); the worker
        # wrote the error down and exited with status 3.
        assert outcome["survivor_exit"] == 3
        assert "second_sum" not in report
        assert report["error"]


# --- examples/multihost.py ------------------------------------------------------------------


def _example(out: Path, *args: str) -> str:
    """``examples/multihost.py --processes 2 ARGS``: its output, once it succeeded."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, str(EXAMPLE), "--processes", "2", "--out", str(out), *args]
    # The launcher kills its processes at --timeout; this one kills the launcher.
    result = subprocess.run(
        [*command, "--timeout", str(EXAMPLE_TIMEOUT)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT + 30,
        check=False,
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return result.stdout


def _losses(output: str) -> dict[int, float]:
    return {
        int(step): float(loss)
        for step, loss in re.findall(r"^step +(\d+) +minibatch loss ([\d.]+)$", output, re.M)
    }


def test_example_trains_checkpoints_and_resumes(tmp_path: Path) -> None:
    args = ["--steps", "20", "--save-every", "10", "--log-every", "5"]
    first = _example(tmp_path, *args)
    losses = _losses(first)
    assert sorted(losses) == [5, 10, 15, 20]
    assert losses[20] < 0.7 * losses[5]
    summary = re.search(
        r"^2 process\(es\), 8 devices: test accuracy ([\d.]+) after 20 steps", first, re.M
    )
    assert summary, first
    assert float(summary[1]) > 0.5  # ten classes: chance is 0.1
    assert "resumed" not in first
    assert "[Gloo]" not in first  # the launcher keeps gloo's messages in the logs
    checkpoints = tmp_path / "checkpoints"
    assert sorted(int(p.name) for p in checkpoints.iterdir()) == [10, 20]
    # Run again with more steps: it picks up where the first run stopped.
    second = _example(tmp_path, "--steps", "30", "--save-every", "10", "--log-every", "5")
    assert f"resumed from the checkpoint of step 20 in {checkpoints}" in second
    assert sorted(_losses(second)) == [25, 30]
    assert sorted(int(p.name) for p in checkpoints.iterdir()) == [10, 20, 30]
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [
        "process-0.log",
        "process-1.log",
    ]


def test_example_help_explains_every_option(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if str(EXAMPLE.parent) not in sys.path:
        monkeypatch.syspath_prepend(str(EXAMPLE.parent))
    parsers = []
    parse_args = argparse.ArgumentParser.parse_args

    def record(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        parsers.append(self)
        return parse_args(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", record)
    module = importlib.import_module("multihost")
    with pytest.raises(SystemExit) as exited:
        module.main(["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out.split("options:", 1)[1]
    entries = {  # "--steps": "--steps STEPS training steps in all (default: 200)"
        entry.split()[0].rstrip(","): " ".join(entry.split())
        for entry in re.split(r"\n  (?=-)", shown)
        if entry.strip().startswith("-")
    }
    (parser,) = parsers
    options = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    assert {"--processes", "--cluster", "--coordinator", "--zero1", "--out"} <= {
        a.option_strings[-1] for a in options
    }
    for action in options:
        option = action.option_strings[-1]
        assert action.help, f"{option} has no help text"
        if not isinstance(action, argparse._StoreTrueAction):
            assert "(default: " in entries[option], f"--help: {entries[option]}"
