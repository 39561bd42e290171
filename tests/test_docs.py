"""Every Python code block in the README and in docs/ runs as written.

Each page runs top to bottom in a fresh process (blocks share one namespace,
like a notebook) with 8 simulated CPU devices, which the sharding recipes of
docs/production.md need. Blocks that import torch run where torch is installed,
blocks that call Keras where keras is.
The README quick start and the docs/variants.md recipes are also checked for
what they claim, and the site's math renders from the bundled MathJax, with
no network (.ci/no_remote_assets.py, which CI runs on the built site, is
tested here too).
"""

from __future__ import annotations

import importlib.util
import re
import runpy
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

from tests import _subprocess

pytestmark = pytest.mark.slow  # runs every page's code in a subprocess

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

_RUNNER = r"""
import importlib.metadata, importlib.util, json, re, sys, warnings
# -W error, except for deprecations raised by orbax's own code (see tests/_worker.py)
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"orbax\.")
page = sys.argv[1]
blocks = re.findall(r"```python\n(.*?)```", open(page).read(), flags=re.S)
has_torch = importlib.util.find_spec("torch") is not None
has_keras = importlib.util.find_spec("keras") is not None
flax = importlib.metadata.version("flax").split(".")
new_flax = (int(flax[0]), int(flax[1])) >= (0, 11)
namespace, report = {}, []
for index, block in enumerate(blocks):
    if re.search(r"^import torch", block, flags=re.M) and not has_torch:
        report.append("needs torch")
        continue
    if re.search(r"\bkeras\.", block) and not has_keras:
        report.append("needs keras")
        continue
    if re.search(r"^from flax import nnx", block, flags=re.M) and not new_flax:
        report.append("needs flax>=0.11")
        continue
    exec(compile(block, f"{page} (python block {index + 1})", "exec"), namespace)
    report.append("ran")
print(json.dumps(report))
"""


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


def _run_doc_blocks() -> list[dict[str, Any]]:
    blocks = _python_blocks(ROOT / "docs" / "variants.md")
    assert len(blocks) == 4
    namespaces = []
    for block in blocks:
        namespace: dict[str, Any] = {}
        exec(compile(block, "docs/variants.md", "exec"), namespace)
        namespaces.append(namespace)
    return namespaces


def test_variants_doc_examples_do_what_they_say() -> None:
    qhm_run, aggmo_run, sutskever_run, demon_run = _run_doc_blocks()

    # QHM: 200 steps on the ill-conditioned bowl shrink the loss by orders of magnitude.
    start = float(qhm_run["loss"](jnp.array([1.0, 1.0])))
    assert float(qhm_run["loss"](qhm_run["params"])) < 1e-3 * start

    # AggMo's first step is SGD on the clipped gradient: all buffers equal g, lr/K * K * g.
    clipped = 1.0 / np.sqrt(8.0)  # eight ones, clipped to global norm 1
    np.testing.assert_allclose(aggmo_run["updates"]["w"], -0.01 * clipped, rtol=1e-6)

    # Nesterov with Sutskever's schedule: mu = 0.5 in the first stage, so the first
    # update is -(0.5 * 0.01 g + 0.01 g).
    tx = sutskever_run["optimizer"]
    g = jnp.array([1.0, -2.0])
    updates, _ = tx.update(g, tx.init(jnp.zeros(2)))
    np.testing.assert_allclose(updates, -0.015 * g, rtol=1e-6)

    # Demon starts at mu = 0.9; the first update is -0.1 * (g + 5e-4 * theta) (coupled decay).
    tx = demon_run["optimizer"]
    theta = jnp.array([1.0, 2.0])
    state = tx.init(theta)
    updates, state = tx.update(g, state, theta)
    np.testing.assert_allclose(updates, -0.1 * (g + 5e-4 * theta), rtol=1e-6)
    updates2, _ = tx.update(g, state, theta)
    # Second step: Demon's momentum at t = 1 (Chen et al.), T = 20,000.
    decayed = 1.0 - 1.0 / 20_000
    mu1 = 0.9 * decayed / ((1.0 - 0.9) + 0.9 * decayed)
    v1 = 0.1 * (g + 5e-4 * theta)
    np.testing.assert_allclose(updates2, -(mu1 * v1 + 0.1 * (g + 5e-4 * theta)), rtol=1e-6)


def _pages_with_code() -> list[Path]:
    return [page for page in PAGES if _python_blocks(page)]


@pytest.mark.parametrize("page", _pages_with_code(), ids=lambda p: p.name)
def test_every_code_block_runs(page: Path) -> None:
    report = _subprocess.run_json(
        ["-W", "error", "-c", _RUNNER, str(page)], devices=8, timeout=600, what=page.name
    )
    assert len(report) == len(_python_blocks(page))
    if "needs torch" in report:
        # Every other block ran and passed; these compare against the real torch.
        pytest.importorskip("torch")
    if "needs keras" in report:
        pytest.importorskip("keras")
    if "needs flax>=0.11" in report:
        # Flax 0.10 (the newest for Python 3.10) has optimizer.update(grads).
        pytest.skip("needs flax>=0.11 for nnx.Optimizer.update(model, grads)")


def test_docs_cover_every_guide() -> None:
    names = {page.name for page in _pages_with_code()}
    assert {"README.md", "getting_started.md", "porting.md", "variants.md"} <= names
    assert {"production.md", "index.md", "clients.md"} <= names


def test_signatures_quoted_in_prose_match_the_code() -> None:
    """Every ``momentum_jax.name(arg, kw=default)`` the README or a guide quotes is real.

    Calls with values (``nesterov(0.01, ...)``) are examples and are skipped;
    a quoted signature names the parameters, so it must list them in order
    with the code's defaults.
    """
    import importlib
    import inspect

    pattern = re.compile(r"`momentum_jax\.([a-z_.]+)\(([^`]*)\)`")
    checked = 0
    for page in PAGES:
        for name, args in pattern.findall(page.read_text()):
            parts = [part.strip() for part in re.split(r",(?![^(]*\))", args) if part.strip()]
            if not parts or not re.fullmatch(r"[a-z_]+(=.*)?", parts[0]):
                continue  # an example call, not a signature
            module_name, _, attr = f"momentum_jax.{name}".rpartition(".")
            function = getattr(importlib.import_module(module_name), attr)
            parameters = list(inspect.signature(function).parameters.values())
            for part, parameter in zip(parts, parameters, strict=False):
                quoted, _, default = part.partition("=")
                assert quoted == parameter.name, f"{page.name}: {name}({args})"
                if default:
                    assert default == repr(parameter.default), f"{page.name}: {name}({args})"
            checked += 1
    assert checked >= 4


def _no_remote_assets() -> Any:
    path = ROOT / ".ci" / "no_remote_assets.py"
    spec = importlib.util.spec_from_file_location("no_remote_assets", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_math_renders_from_the_bundled_mathjax() -> None:
    conf = runpy.run_path(str(ROOT / "docs" / "conf.py"))
    static = ROOT / "docs" / conf["html_static_path"][0]
    path = conf["mathjax_path"]
    assert not re.match(r"([a-z]+:)?//", path), f"mathjax_path {path!r} is a remote URL"
    assert (static / path).is_file()
    assert (static / path).with_name("LICENSE").is_file()  # Apache-2.0 asks for its copy
    fonts = static / path.rpartition("/")[0] / "output" / "chtml" / "fonts" / "woff-v2"
    assert len(list(fonts.glob("MathJax_*.woff"))) == 23


def test_remote_asset_check_finds_every_kind_of_remote_load(tmp_path: Path) -> None:
    check = _no_remote_assets()
    (tmp_path / "page.html").write_text(
        '<script src="_static/local.js"></script>\n'
        '<script defer src="https://cdn.example.org/mathjax.js"></script>\n'
        '<link rel="stylesheet" href="//fonts.example.org/css">\n'
        '<link rel="next" href="https://example.org/next.html">\n'
        '<a href="https://example.org/">a link to follow</a>\n'
        '<img src="data:image/png;base64,AAAA" srcset="https://example.org/a.png 2x">\n'
        "<style>@import url('https://example.org/a.css');</style>\n"
        '<div style="background: url(http://example.org/b.png)"></div>\n'
    )
    (tmp_path / "theme.css").write_text(
        "@font-face{src:url(fonts/local.woff2)}\n"
        "@font-face{src:url(\"https://example.org/remote.woff2\") format('woff2')}\n"
        "a{background:url(\"data:image/svg+xml,<svg xmlns='http://www.w3.org/2000/svg'/>\")}\n"
        '@import "https://example.org/more.css";\n'
    )
    assert check.remote_loads(tmp_path) == [
        "page.html:2: <script> https://cdn.example.org/mathjax.js",
        "page.html:3: <link> //fonts.example.org/css",
        "page.html:6: <img> https://example.org/a.png",
        "page.html:7: <style> https://example.org/a.css",
        "page.html:8: <div style=...> http://example.org/b.png",
        "theme.css:2: https://example.org/remote.woff2",
        "theme.css:4: https://example.org/more.css",
    ]
    assert check.main([str(tmp_path)]) == 1
    for path in tmp_path.iterdir():
        path.write_text('<script src="_static/local.js"></script>')
    assert check.main([str(tmp_path)]) == 0
    assert check.main([str(tmp_path / "nowhere")]) == 2


def test_gallery_page_states_its_intro_once() -> None:
    readme = README.read_text()
    included = readme.split("<!-- gallery:start -->")[1].split("<!-- gallery:end -->")[0]
    assert "Each figure is regenerated" not in included  # docs/gallery.md has its own
    assert included.lstrip().startswith("![")


def test_wide_equations_and_tables_stay_in_the_column() -> None:
    """The site loads the rules that keep display math and tables inside the column.

    MathJax 3 does not break lines: wrap.css lets a display equation break at
    its top-level spaces (\\qquad, \\quad), fit_math.js shrinks one that cannot
    (a split or cases block), and table cells wrap long code. docs/check_layout.py
    measures the rendered pages in Chromium; this checks, without a browser,
    that the rules exist and the build links them.
    """
    conf = runpy.run_path(str(ROOT / "docs" / "conf.py"))
    static = ROOT / "docs" / conf["html_static_path"][0]
    assert "wrap.css" in conf["html_css_files"]
    assert "fit_math.js" in conf["html_js_files"]
    css = (static / "wrap.css").read_text()
    math = 'mjx-container[jax="CHTML"][display="true"] > mjx-math > mjx-mstyle:has(> mjx-mspace)'
    assert f"{math}::after" in css
    assert re.search(r'content: " ";\s*white-space: normal;', css)
    assert re.search(r"table\.docutils code\.literal[^{]*\{[^}]*overflow-wrap: anywhere", css)
    script = (static / "fit_math.js").read_text()
    assert "MathJax.startup.promise" in script
    assert "scrollWidth" in script
