"""Test configuration.

Keras runs on the JAX backend (no TensorFlow needed).

``.ci/run`` sets ``MOMENTUM_JAX_NO_SKIPS=1``: then a skipped test fails the
run, so every test must really execute. A CI leg that cannot install a
reference framework names it in ``MOMENTUM_JAX_ALLOWED_SKIPS``: ``torch`` on
Pythons with no CPU build of it here, ``flax<0.11`` where pip can only
install Flax 0.10 (Python 3.10 and jax below 0.6), ``multihost`` where the
orbax beside the floor JAX cannot checkpoint from several processes. Skips are then accepted
only when their reason is exactly that.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")

# The skip reason each allowed framework produces (pytest.importorskip's).
_ALLOWED_REASONS = {
    "torch": "could not import 'torch'",
    "flax<0.11": "needs flax>=0.11 for nnx.Optimizer.update(model, grads)",
    "multihost": "orbax's multi-process checkpoints need jax's DistributedRuntimeClient",
}


def _allowed_reasons() -> list[str]:
    names = [n for n in os.environ.get("MOMENTUM_JAX_ALLOWED_SKIPS", "").split(",") if n]
    unknown = sorted(set(names) - set(_ALLOWED_REASONS))
    if unknown:
        raise pytest.UsageError(
            f"MOMENTUM_JAX_ALLOWED_SKIPS names {unknown}; only {sorted(_ALLOWED_REASONS)} may "
            "be allowed to skip."
        )
    return [_ALLOWED_REASONS[name] for name in names]


def pytest_configure(config: pytest.Config) -> None:
    del config
    _allowed_reasons()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("MOMENTUM_JAX_NO_SKIPS") != "1":
        return
    allowed = _allowed_reasons()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    reasons = [str(getattr(report, "longrepr", "")) for report in skipped]
    refused = sorted({r for r in reasons if not any(a in r for a in allowed)})
    if refused:
        print(f"\nMOMENTUM_JAX_NO_SKIPS=1 but {len(skipped)} test(s) were skipped:")
        for reason in refused:
            print(f"  {reason}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif skipped:
        print(f"\n{len(skipped)} skip(s), all allowed on this leg: {sorted(set(reasons))}")
