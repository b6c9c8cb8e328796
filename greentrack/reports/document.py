"""The document of one run, and every format written from it.

:func:`report_document` builds the run's document (``report-v1.schema.json``), and
:func:`write_formats` writes it in each format, all or nothing. :func:`generate` does both for
several runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from greentrack.carbon.resolve import config_for_run
from greentrack.common.config import Config
from greentrack.common.files import staged_dir
from greentrack.reports import (emissions_log, to_boamps, to_csv, to_hf, to_html, to_json,
                                to_markdown)
from greentrack.reports.build import build_report
from greentrack.reports.run_data import read_run

log = logging.getLogger("greentrack")

FORMATS = ("json", "md", "html", "csv", "boamps", "hf")


def report_document(run_dir: str | Path, config: Config | Mapping[str, Any] | None, sci_unit: str = "run") -> dict[str, Any]:
    """The report document of one run directory (see ``report-v1.schema.json``).

    ``config``: a mapping of explicit settings (the command line's) or a
    :class:`greentrack.Config` (its carbon and price fields that are set), which win over the
    settings each store of the run recorded, which win over the environment
    (:func:`greentrack.carbon.resolve.config_for_run`): a resumed run whose segments recorded
    different settings is counted part by part (:mod:`greentrack.carbon.runs`)."""
    return _document(run_dir, config, sci_unit)[0]


def _document(run_dir: str | Path, config: Config | Mapping[str, Any] | None, sci_unit: str) -> tuple[dict[str, Any], Any]:
    data = read_run(run_dir)
    explicit = config if config is not None else {}
    if not isinstance(config, Config):
        config = config_for_run(data.settings, config or {})
    return build_report(data, config, sci_unit, explicit=explicit), config


def write_formats(doc: dict[str, Any], formats: list[str], out_dir: Path,
                  options: dict[str, Any] | None = None) -> list[Path]:
    """Write ``doc`` in each format into ``out_dir``; returns the files written.

    All or nothing: the files are written into a fresh directory beside ``out_dir`` and then moved
    into it (replacing same-named entries, never following a symlink planted there); on error
    ``out_dir`` is left as it was. Directories created are never group- or world-writable."""
    opts = options or {}
    written: list[Path] = []
    with staged_dir(out_dir) as tmp:
        for fmt in formats:
            if fmt == "json":
                written += to_json.write(doc, tmp)
            elif fmt == "md":
                written += to_markdown.write(doc, tmp)
            elif fmt == "html":
                written += to_html.write(doc, tmp)
            elif fmt == "csv":
                written += to_csv.write(doc, tmp)
            elif fmt == "boamps":
                written += to_boamps.write(doc, tmp, opts.get("boamps"))
            elif fmt == "hf":
                written += to_hf.write(doc, tmp)
    return [out_dir / p.relative_to(tmp) for p in written]


def iter_reports(run_dirs: list[str | Path], config: Config | Mapping[str, Any] | None, formats: list[str], out: Path,
                 sci_unit: str = "run") -> Iterator[tuple[dict[str, Any], list[Path]]]:
    """Build and write each run's report; yields ``(document, files written)``. With several runs,
    each goes to its own sub-directory of ``out`` (named after the run directory)."""
    names: set[str] = set()
    for run_dir in run_dirs:
        doc, run_config = _document(run_dir, config, sci_unit)
        target = out
        if len(run_dirs) > 1:
            name = Path(run_dir).resolve().name or "run"
            while name in names:
                name += "_"
            names.add(name)
            target = out / name
        yield doc, write_formats(doc, formats, target, getattr(run_config, "extra", None))


def generate(run_dirs: list[str | Path], config: Config | Mapping[str, Any] | None, formats: list[str], out: Path,
             sci_unit: str = "run") -> list[Path]:
    """Write the reports of several runs; returns every file written."""
    return [p for _, paths in iter_reports(run_dirs, config, formats, out, sci_unit) for p in paths]


def append_run(run_dir: str | os.PathLike[str], config: Config) -> None:
    """Append the row of the run in ``run_dir`` to ``config.emissions_csv``, when a run stops.
    Never raises: a failure is a warning (the run is stored; ``greentrack report --emissions-csv``
    can append it later)."""
    try:
        # the settings each store recorded (a resumed run's segments each at their own), as
        # stop(), the summary and every report count them
        for w in emissions_log.append([report_document(Path(run_dir), {})], str(config.emissions_csv)):
            if not w.startswith("already"):
                log.warning("greentrack: %s", w)
    except Exception as e:  # noqa: BLE001 - never raise from a stop
        log.warning("greentrack: the run's row was not appended to %s: %s", config.emissions_csv, e)
