"""Test configuration.

Keras runs on the JAX backend (no TensorFlow needed). When
``MOMENTUM_JAX_NO_SKIPS=1`` (set by ``.ci/run``), a skipped test fails the run:
in CI the reference frameworks must be installed and every parity test must
really execute.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("MOMENTUM_JAX_NO_SKIPS") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        reasons = sorted({str(getattr(report, "longrepr", "")) for report in skipped})
        print(f"\nMOMENTUM_JAX_NO_SKIPS=1 but {len(skipped)} test(s) were skipped:")
        for reason in reasons:
            print(f"  {reason}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
