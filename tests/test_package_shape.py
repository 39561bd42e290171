"""The package's shape: what one update runs through, and how its modules import each other."""

from __future__ import annotations

import ast
import inspect
import sys
import typing
from pathlib import Path
from types import FrameType
from typing import Any

import jax.numpy as jnp
import pytest

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


_OPTIONS = {
    "accumulator_dtype": None,
    "stochastic_rounding": False,
    "seed": 0,
    "layout": "per_leaf",
}
_ACCUMULATING = ("momentum", "scale_by_momentum", "aggmo", "scale_by_aggmo")


def test_every_buffer_transform_lists_its_state_options_keyword_only() -> None:
    """The options are written once in the code; each signature (help(), the API page,
    IDEs) still lists them, keyword-only, with their defaults, and each docstring
    describes them."""
    names = ("nesterov", "qhm", "scale_by_qhm", "lion", *_ACCUMULATING)
    factories = {name: getattr(momentum_jax, name) for name in names}
    compat = momentum_jax.compat
    factories.update({n: getattr(compat, n) for n in ("torch_sgd", "keras_sgd", "tf1_momentum")})
    for name, factory in factories.items():
        wanted = dict(_OPTIONS)
        if name in _ACCUMULATING or name.endswith(("sgd", "tf1_momentum")):
            wanted["gradient_accumulation_steps"] = None
        parameters = inspect.signature(factory).parameters
        listed = {
            key: p.default
            for key, p in parameters.items()
            if key in wanted and p.kind is inspect.Parameter.KEYWORD_ONLY
        }
        assert listed == wanted, name
        assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        hints = typing.get_type_hints(factory)  # as runtime type checkers read them
        assert set(wanted) <= set(hints), name
        assert hints["layout"] is str, name
        assert all(f"  {key}: " in factory.__doc__ for key in wanted), name
        with pytest.raises(
            TypeError, match=r"unexpected keyword argument 'sed'\. Did you mean seed\?"
        ):
            factory(*[0.1] * ("learning_rate" in parameters or "lr" in parameters), sed=1)
