"""``--format json``: the report document itself (schema greentrack/schemas/report-v1.schema.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FILENAME = "report.json"


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def write(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    path = out_dir / FILENAME
    path.write_text(render(doc), encoding="utf-8")
    return [path]
