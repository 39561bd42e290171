"""Fail if a built HTML site loads anything from a remote URL.

    python .ci/no_remote_assets.py BUILD_DIR

Reads every .html and .css file under BUILD_DIR and reports each remote URL
that a browser would load on its own: the ``src`` of ``<script>``, ``<img>``,
``<iframe>``, ``<embed>``, ``<source>``, ``<audio>``, ``<video>`` and
``<track>``; the ``href`` of a ``<link>`` that loads something (stylesheet,
icon, preload, ...); and, in CSS files, ``<style>`` blocks and ``style``
attributes, every ``@import`` and ``url(...)`` (fonts, backgrounds). A URL is
remote when it names a host (``https://...``, ``//host/...``); ``data:`` URLs
and relative paths are local. Links for the reader to follow (``<a href>``,
``<link rel="next">``) load nothing and are not checked.

Exits 0 when nothing is remote, 1 listing every remote load, 2 when BUILD_DIR
holds no HTML file.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

LOADING_TAGS = {"script", "img", "iframe", "embed", "source", "audio", "video", "track"}
# <link rel=...> values whose href the browser fetches by itself.
LOADING_RELS = {
    "stylesheet",
    "icon",
    "shortcut",
    "apple-touch-icon",
    "preload",
    "prefetch",
    "modulepreload",
    "manifest",
    "mask-icon",
}
REMOTE = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)
CSS_URLS = re.compile(
    r"""@import\s+(?:url\(\s*)?["']?([^"')\s;]+)|url\(\s*["']?([^"')\s]+)""", re.IGNORECASE
)


def remote_css_urls(css: str) -> list[str]:
    """The remote URLs of every ``@import`` and ``url(...)`` in a piece of CSS."""
    urls = [a or b for a, b in CSS_URLS.findall(css)]
    return [url for url in urls if REMOTE.match(url)]


class _Loads(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[int, str]] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        urls = []
        if tag in LOADING_TAGS:
            srcset = [part.split()[0] for part in values.get("srcset", "").split(",") if part]
            urls += [values.get("src", ""), values.get("poster", ""), *srcset]
        if tag == "link" and LOADING_RELS & set(values.get("rel", "").lower().split()):
            urls.append(values.get("href", ""))
        line = self.getpos()[0]
        self.found += [(line, f"<{tag}> {url}") for url in urls if REMOTE.match(url)]
        for url in remote_css_urls(values.get("style", "")):
            self.found.append((line, f"<{tag} style=...> {url}"))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            line = self.getpos()[0]
            self.found += [(line, f"<style> {url}") for url in remote_css_urls(data)]


def remote_loads(site: Path) -> list[str]:
    """``path:line: what`` for every remote load in the site's HTML and CSS files."""
    problems = []
    for path in sorted(site.rglob("*.html")):
        parser = _Loads()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        parser.close()
        problems += [f"{path.relative_to(site)}:{line}: {what}" for line, what in parser.found]
    for path in sorted(site.rglob("*.css")):
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for line, text in enumerate(lines, 1):
            problems += [f"{path.relative_to(site)}:{line}: {url}" for url in remote_css_urls(text)]
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python .ci/no_remote_assets.py BUILD_DIR", file=sys.stderr)
        return 2
    site = Path(argv[0])
    pages = list(site.rglob("*.html"))
    if not pages:
        print(f"{site}: no HTML file found; pass the folder sphinx-build wrote", file=sys.stderr)
        return 2
    problems = remote_loads(site)
    for problem in problems:
        print(f"remote load: {problem}")
    if problems:
        print(f"{len(problems)} remote loads in {site}: a reader without a network would miss them")
        return 1
    print(f"{len(pages)} pages under {site} load nothing from a remote URL")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
