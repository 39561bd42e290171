"""The README's quick-start code runs and trains."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_quick_start_block_trains() -> None:
    blocks = [b for b in _python_blocks() if "def train_step" in b]
    assert len(blocks) == 1
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    loss = float(namespace["loss"])  # type: ignore[arg-type]
    first = namespace["loss_fn"](  # type: ignore[operator]
        {"w": namespace["jnp"].zeros((3, 1)), "b": namespace["jnp"].zeros(1)},  # type: ignore[attr-defined]
        namespace["x"],
        namespace["y"],
    )
    assert loss < 1e-2 * float(first)
