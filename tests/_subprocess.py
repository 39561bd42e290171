"""Run a helper script in a fresh Python process and read the JSON it prints last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_json(
    args: list[str], *, devices: int = 1, timeout: float = 300, what: str = "worker"
) -> Any:
    """``python ARGS`` on the CPU with ``devices`` simulated devices; its last stdout line as JSON.

    A fresh process is needed where JAX must start with other flags (the
    device count is read once, when JAX initialises) or from a clean state.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if devices > 1:
        flags = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": flags,
        # The checkout's package, also when it is not installed.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{what} failed:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])
