"""``--format md``: the human disclosure in Markdown, charts as SVG files beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from greentrack.common.text import md_escape
from greentrack.reports import svg
from greentrack.reports.content import blocks

FILENAME = "report.md"


def _cell(text: str) -> str:
    return md_escape(text)  # literal text: no markup, no control characters, no line breaks


def render(doc: dict[str, Any], plot_files: dict[str, str]) -> str:
    lines: list[str] = []
    for block in blocks(doc):
        kind = block[0]
        if kind == "h1":
            lines += [f"# {md_escape(block[1])}", ""]
        elif kind == "h2":
            lines += [f"## {md_escape(block[1])}", ""]
        elif kind == "p":
            lines += [md_escape(block[1]), ""]
        elif kind == "list":
            lines += [f"- {md_escape(item)}" for item in block[1]] + [""]
        elif kind == "table":
            headers, rows = block[1], block[2]
            lines.append("| " + " | ".join(_cell(h) for h in headers) + " |")
            lines.append("|" + "---|" * len(headers))
            lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "plot" and block[1] in plot_files:
            lines += [f"![{block[1]}]({plot_files[block[1]]})", ""]
    return "\n".join(lines)


def write(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    written, names = [], {}
    for name, chart in {**svg.plots(doc), **svg.opportunity_plots(doc)}.items():
        path = out_dir / f"report-{name}.svg"
        path.write_text(chart + "\n", encoding="utf-8")
        names[name] = path.name
        written.append(path)
    path = out_dir / FILENAME
    path.write_text(render(doc, names), encoding="utf-8")
    return [path] + written
