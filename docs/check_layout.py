"""Render the built site in headless Chromium and list what overflows its column.

    sphinx-build -W --keep-going -n -b html docs docs/_build/html
    python docs/check_layout.py docs/_build/html            # widths 1400 and 900
    python docs/check_layout.py docs/_build/html --width 1200

For every page and window width, each display equation (``mjx-container``)
and each table is measured once MathJax has typeset the page: it overflows
when its content is wider than its box (``scrollWidth > clientWidth``, which
a scrollbar would hide) or when its box reaches past the article's right edge.
Exit status 1 lists them, 0 when none does, 2 without a ``chromium``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

# Runs in the page: waits for MathJax, then writes the findings into the DOM.
_PROBE = r"""
<script>
window.addEventListener("load", () => {
  const ready = window.MathJax && MathJax.startup ? MathJax.startup.promise : Promise.resolve();
  ready.then(() => {
    const article = document.querySelector("article") || document.body;
    const edge = article.getBoundingClientRect().right + 4;  // furo's table shadow
    const found = [];
    const selector = 'mjx-container[display="true"], table.docutils';
    for (const element of document.querySelectorAll(selector)) {
      const wrapper = element.parentElement;
      const box = element.getBoundingClientRect();
      const hidden = element.scrollWidth > element.clientWidth + 1
        || wrapper.scrollWidth > wrapper.clientWidth + 1;
      if (hidden || box.right > edge) {
        const text = (element.textContent || "").replace(/\s+/g, " ").trim().slice(0, 60);
        const sizes = `content ${element.scrollWidth} px in ${element.clientWidth} px`;
        const right = `right edge ${Math.round(box.right)} px, column ${Math.round(edge)} px`;
        found.push(`${element.tagName.toLowerCase()} (${sizes}, ${right}): ${text}`);
      }
    }
    const out = document.createElement("pre");
    out.id = "layout-probe";
    out.textContent = JSON.stringify(found);
    document.body.appendChild(out);
  });
});
</script>
"""


def overflowing(page: Path, width: int, chromium: str) -> list[str]:
    """What overflows on one page at one window width."""
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    try:
        dom = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu",
             "--virtual-time-budget=10000", f"--window-size={width},2000",
             "--dump-dom", probe.resolve().as_uri()],
            capture_output=True, text=True, timeout=120, check=False,
        ).stdout  # fmt: skip
    finally:
        probe.unlink()
    start = dom.find('<pre id="layout-probe">')
    if start < 0:
        return [f"{page.name}: the probe did not run (MathJax never finished?)"]
    body = dom[start:].split(">", 1)[1].split("</pre>", 1)[0]
    return json.loads(body.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", type=Path, help="the built HTML folder")
    parser.add_argument("--width", type=int, nargs="+", default=[1400, 900], help="window widths")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("no chromium on PATH", file=sys.stderr)
        return 2
    problems = []
    for page in sorted(args.site.glob("*.html")):
        for width in args.width:
            found = overflowing(page, width, chromium)
            problems += [f"{page.name} at {width} px: {item}" for item in found]
    print("\n".join(problems) or f"nothing overflows at {args.width} px")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
