"""The install commands of the README and the docs work as written.

momentum_jax is not on PyPI, so no shell block may tell a reader to
``pip install momentum_jax`` from there. The documented "from the built wheel"
sequence is run for real, offline: the wheel is built from this checkout and
installed into a fresh virtual environment, which then imports it (not the
checkout) and takes an optimizer step.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds and installs the wheel

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
INSTALL_PAGES = [ROOT / "README.md", ROOT / "docs" / "getting_started.md"]
SHELL_BLOCK = re.compile(r"```(?:bash|sh|shell|console)\n(.*?)```", re.S)
# The documented "from the built wheel" sequence, in the order the pages give it.
WHEEL_STEPS = [
    "pip install build",
    "python -m build --wheel",
    "pip install dist/momentum_jax-*.whl",
]
GIT_STEP = 'pip install "momentum_jax @ git+<repository-url>@<tag-or-commit>"'


def _commands(page: Path) -> list[str]:
    """Every command line of the page's shell blocks, comments and blank lines left out."""
    lines = [line for block in SHELL_BLOCK.findall(page.read_text()) for line in block.split("\n")]
    commands = [line.split(" #")[0].strip() for line in lines]
    return [c for c in commands if c and not c.startswith("#")]


def _pypi_requirements(command: str) -> list[str]:
    """The requirements a ``pip install`` command would fetch by name from an index."""
    words = shlex.split(command)
    if words[:2] != ["pip", "install"] and words[1:4] != ["-m", "pip", "install"]:
        return []
    names = []
    for word in words[words.index("install") + 1 :]:
        if word.startswith("-") or "@" in word or "/" in word or word in {"."}:
            continue
        names.append(re.split(r"[\[<>=!~;\s]", word, maxsplit=1)[0])
    return names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_page_installs_momentum_jax_from_pypi(page: Path) -> None:
    for command in _commands(page):
        for name in _pypi_requirements(command):
            assert re.sub(r"[-_.]+", "_", name.lower()) != "momentum_jax", (
                f"{page.name}: `{command}` installs momentum_jax from PyPI, where it is not "
                "published; install it from a checkout, a git URL or a built wheel."
            )


def test_the_checker_sees_a_pypi_install() -> None:
    assert _pypi_requirements("pip install momentum_jax") == ["momentum_jax"]
    assert _pypi_requirements("python -m pip install -U 'momentum-jax[docs]>=0.3'") == [
        "momentum-jax"
    ]
    assert _pypi_requirements('pip install "momentum_jax @ git+https://host/repo.git"') == []
    assert _pypi_requirements("pip install -e .") == []
    assert _pypi_requirements("pip install dist/momentum_jax-0.3.0-py3-none-any.whl") == []


@pytest.mark.parametrize("page", INSTALL_PAGES, ids=lambda p: p.name)
def test_install_section_gives_the_three_ways(page: Path) -> None:
    text, commands = page.read_text(), _commands(page)
    assert "not on PyPI yet" in text
    assert "pip install -e ." in commands
    assert GIT_STEP in commands
    start = commands.index(WHEEL_STEPS[0])
    assert commands[start : start + len(WHEEL_STEPS)] == WHEEL_STEPS


def _venv(tmp_path: Path) -> Path:
    """A new, empty virtual environment; returns its python."""
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=120)
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _lend_dependencies(python: Path) -> None:
    """Let the venv import jax & co. from the interpreter running the tests.

    Installing them again would need the network. A .pth file appends this
    interpreter's site-packages after the venv's own, and it is written only
    after the install, so pip saw an empty environment and momentum_jax can
    only come from what pip put there.
    """
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    (Path(site) / "_lent_dependencies.pth").write_text("\n".join(ours) + "\n")


_STEP = """
import pathlib, sys
import jax.numpy as jnp
import momentum_jax

location = pathlib.Path(momentum_jax.__file__).resolve()
assert pathlib.Path(sys.prefix).resolve() in location.parents, location
assert location.with_name("py.typed").is_file(), "py.typed is not in the wheel"
optimizer = momentum_jax.nesterov(0.1, 0.9)
updates, _ = optimizer.update(jnp.ones(2), optimizer.init(jnp.zeros(2)))
assert jnp.allclose(updates, -0.19), updates
print(momentum_jax.__version__)
"""


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "JAX_PLATFORMS": "cpu"}


def test_built_wheel_installs_into_a_fresh_venv(tmp_path: Path) -> None:
    pytest.importorskip("build")
    pytest.importorskip("hatchling")
    import momentum_jax

    # "python -m build --wheel", offline: the build backend is installed here
    # already, so no isolated environment has to download it.
    dist = tmp_path / "dist"
    build = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist)]
    subprocess.run([*build, "."], cwd=ROOT, check=True, capture_output=True, timeout=300)
    wheels = sorted(dist.glob("momentum_jax-*.whl"))  # what "dist/momentum_jax-*.whl" matches
    assert [w.name for w in wheels] == [f"momentum_jax-{momentum_jax.__version__}-py3-none-any.whl"]

    # "pip install dist/momentum_jax-*.whl", offline: no index, no dependencies.
    python = _venv(tmp_path)
    install = [str(python), "-m", "pip", "install", "--no-index", "--no-deps", str(wheels[0])]
    result = subprocess.run(install, env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr

    _lend_dependencies(python)
    result = subprocess.run(
        [str(python), "-c", _STEP],
        cwd=tmp_path,  # not the checkout, whose momentum_jax/ would be imported instead
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == momentum_jax.__version__
