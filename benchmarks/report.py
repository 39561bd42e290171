"""Turn the JSON written by ``bench_step.py`` into the Markdown tables of BENCHMARKS.md.

python benchmarks/report.py benchmarks/out/bench_step.json
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def _cell(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "" if value is None else format(value * scale, spec)


def markdown(data: dict[str, Any]) -> str:
    lines = []
    machine = data["machine"]
    lines.append(
        f"Machine: {machine['cpu']}, {machine['cores']} cores; Python {machine['python']}, "
        f"jax {machine['jax']} ({machine['jax_backend']}), optax {machine['optax']}, "
        f"torch {machine['torch']} ({machine['torch_threads']} threads), "
        f"momentum_jax {machine['momentum_jax']}; {data['reps']} interleaved repetitions."
    )
    for result in data["results"]:
        roof = result["roofline_gbytes_per_s"]
        title = f"{result['params'] / 1e6:g}M float32 params in {result['arrays']} array(s)"
        if "set" in result and not result["set"][0].isdigit():
            title = f"{result['set']}: {title}"
        if roof:
            title += f" (triad roofline {roof:.1f} GB/s)"
        lines += ["", f"**{title}**", ""]
        lines.append(
            "| contender | ratio to best peer | median ms (IQR) | GB/s at 20 B/param "
            "| of roofline | compile s |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|")
        for row in result["rows"]:
            if row["contender"].startswith("triad"):
                lines.append(
                    f"| {row['contender']} | | {row['median_ms']:.2f} "
                    f"({row['iqr_ms'][0]:.2f}–{row['iqr_ms'][1]:.2f}) "
                    f"| {row['gbytes_per_s']:.1f} (12 B/element) | | |"
                )
                continue
            lines.append(
                f"| {row['contender']} | {_cell(row.get('ratio_to_best_peer'), '.2f')} "
                f"| {row['median_ms']:.2f} ({row['iqr_ms'][0]:.2f}–{row['iqr_ms'][1]:.2f}) "
                f"| {row['gbytes_per_s']:.1f} | {_cell(row.get('fraction_of_roofline'), '.0%')} "
                f"| {_cell(row['compile_s'], '.2f')} |"
            )
    memory = data.get("memory")
    if memory:
        lines += ["", f"**Memory, {memory['params'] / 1e6:g}M params in one array**", ""]
        lines.append("| transform | state bytes/param | temp buffers | donated inputs freed |")
        lines.append("|---|---:|---:|---|")
        for name, entry in memory.items():
            if isinstance(entry, dict):
                lines.append(
                    f"| {name} | {entry['state_bytes_per_param']:.1f} | "
                    f"{entry['temp_bytes']} B | {entry['donated_inputs_freed']} |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", help="the file written by bench_step.py --json")
    args = parser.parse_args(argv)
    with open(args.json) as f:
        text = markdown(json.load(f))
    print(text)
    return text


if __name__ == "__main__":
    main()
