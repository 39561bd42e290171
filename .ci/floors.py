"""Print pip constraints pinning every runtime dependency to its declared floor.

``python .ci/floors.py > floors.txt`` turns ``jax>=0.4.35`` in pyproject.toml's
``[project] dependencies`` into ``jax==0.4.35``, so that CI installs and tests
the oldest versions the package claims to support. A dependency declared
without a ``>=`` floor is an error: every floor must be tested.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def floors() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = []
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*", requirement)
        if match is None:
            raise SystemExit(f"{requirement!r} has no plain '>=' floor to test")
        pins.append(f"{match[1]}=={match[2]}")
    return pins


if __name__ == "__main__":
    sys.stdout.write("".join(f"{pin}\n" for pin in floors()))
