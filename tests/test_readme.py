"""The code in the README and in docs/variants.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _python_blocks(path: Path = README) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


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


def test_variants_doc_examples_run() -> None:
    blocks = _python_blocks(ROOT / "docs" / "variants.md")
    assert len(blocks) >= 4
    for block in blocks:
        namespace: dict[str, object] = {}
        exec(compile(block, "docs/variants.md", "exec"), namespace)
