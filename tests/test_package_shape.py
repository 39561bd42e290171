"""The package's shape: what one update runs through, and how its modules import each other."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import jax.numpy as jnp

import momentum_jax

SRC = Path(momentum_jax.__file__).parent / "_src"


def _modules_called(fn: Any) -> set[str]:
    seen: set[str] = set()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        name = frame.f_globals.get("__name__", "")
        if event == "call" and name.startswith("momentum_jax"):
            seen.add(name)

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return seen


def test_a_default_momentum_update_runs_through_three_modules() -> None:
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
    tx = momentum_jax.momentum(0.1, 0.9)
    state = tx.init(params)
    called = _modules_called(lambda: tx.update(params, state, params))
    assert called == {f"momentum_jax._src.{m}" for m in ("_checks", "_core", "_skeleton")}


def test_no_module_imports_another_that_imports_it_back() -> None:
    imports: dict[str, set[str]] = {}
    for path in SRC.glob("_*.py"):
        tree = ast.parse(path.read_text())
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "momentum_jax._src":
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "momentum_jax._src."
            ):
                found.add(node.module.rsplit(".", 1)[1])
        imports[path.stem] = found

    def reaches(start: str, goal: str, path: tuple[str, ...] = ()) -> bool:
        return any(
            m == goal or (m not in path and reaches(m, goal, (*path, m)))
            for m in imports.get(start, ())
        )

    circles = [m for m in imports if reaches(m, m)]
    assert not circles, f"import circles through {circles}: {imports}"
