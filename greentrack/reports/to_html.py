"""``--format html``: the human disclosure as one self-contained HTML page, charts inline."""

from __future__ import annotations

from html import escape as _html_escape
from pathlib import Path
from typing import Any

from greentrack.common.text import printable
from greentrack.reports import svg
from greentrack.reports.content import blocks

FILENAME = "report.html"
STYLE = """body{font-family:sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top;font-size:14px}th{background:#f3f3f3}figure{margin:1em 0}
.warn li{color:#a40}figure svg{width:100%;height:auto;max-width:960px}"""


def escape(text: str) -> str:
    """Literal text in HTML: markup escaped, control characters shown as escapes."""
    return _html_escape(printable(text))


def render(doc: dict[str, Any]) -> str:
    charts = {**svg.plots(doc), **svg.opportunity_plots(doc)}
    title = f"greentrack report: run {doc['run']['run_id']}"
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"]
    warn_next = False
    for block in blocks(doc):
        kind = block[0]
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{escape(block[1])}</{kind}>")
            warn_next = block[1] == "Warnings"
        elif kind == "p":
            out.append(f"<p>{escape(block[1])}</p>")
        elif kind == "list":
            cls = ' class="warn"' if warn_next else ""
            out.append(f"<ul{cls}>" + "".join(f"<li>{escape(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{escape(h)}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>"
                           for row in block[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "plot" and block[1] in charts:
            # an id per chart: report.html#plot-power links to (and scrolls to) one chart
            out.append(f'<figure id="plot-{escape(block[1])}">{charts[block[1]]}</figure>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    path = out_dir / FILENAME
    path.write_text(render(doc), encoding="utf-8")
    return [path]
