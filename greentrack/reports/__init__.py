"""Disclosure reports built from run directories: one module per format.

``json`` (greentrack's own, versioned, schema in greentrack/schemas), ``md`` and ``html`` (human
disclosures with charts and methodology), ``csv`` (codecarbon's emissions.csv columns), ``boamps``
(Boavizta BoAmps) and ``hf`` (Hugging Face model-card block). All render one document built by
:func:`greentrack.reports.build.build_report`, so every format states the same figures.

>>> from greentrack.reports import generate                       # doctest: +SKIP
>>> generate(["runs/demo"], Config(country="FR"), ["json", "md"], Path("out"))
"""

from __future__ import annotations

from typing import Any

__all__ = ["FORMATS", "generate", "iter_reports", "report_document", "write_formats"]


def __getattr__(name: str) -> Any:
    """The report API, from :mod:`greentrack.reports.document` when first asked for: a training
    process imports :mod:`~greentrack.reports.summary` and :mod:`~greentrack.reports.emissions_log`
    at start, and the report builders (every ``to_*`` format, charts) only when a report is made."""
    if name in __all__:
        import importlib
        return getattr(importlib.import_module("greentrack.reports.document"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
