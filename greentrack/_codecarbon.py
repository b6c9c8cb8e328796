"""codecarbon's maintained data files, read without importing codecarbon.

Importing ``codecarbon`` loads GPU libraries (``amdsmi``) that print to stdout and log warnings on
machines without them: a tracker must never write into the user's training output. The data files
ship inside the installed package, so greentrack locates and reads them directly. They remain
codecarbon's data (never retyped here); :func:`version` is cited wherever they are used.
"""

from __future__ import annotations

import csv
import functools
import importlib.metadata
import importlib.util
import json
from pathlib import Path
from typing import Any


@functools.lru_cache(maxsize=1)
def package_dir() -> Path | None:
    spec = importlib.util.find_spec("codecarbon")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def version() -> str:
    try:
        return importlib.metadata.version("codecarbon")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def data_file(*parts: str) -> Path | None:
    """Path of a file under ``codecarbon/data/``, or None if codecarbon or the file is missing."""
    root = package_dir()
    path = root.joinpath("data", *parts) if root else None
    return path if path is not None and path.is_file() else None


@functools.lru_cache(maxsize=None)
def read_json(*parts: str) -> Any:
    path = data_file(*parts)
    return json.loads(path.read_text()) if path else None


@functools.lru_cache(maxsize=1)
def cpu_power_table() -> list[tuple[str, float]]:
    """``(name, TDP W)`` rows of codecarbon's ``data/hardware/cpu_power.csv``."""
    path = data_file("hardware", "cpu_power.csv")
    if path is None:
        return []
    rows = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                rows.append((row["Name"], float(row["TDP"])))
            except (KeyError, TypeError, ValueError):
                continue  # the table has a few malformed entries ('27.29.5'): skip, never guess
    return rows
