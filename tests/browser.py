"""A real headless Chromium for the HTML report: console messages and a screenshot.

The binary comes from Debian's ``chromium`` package (``.ci/run`` installs it). A missing binary
skips the test with the reason, except in CI (``CI=true``), where it fails: a green CI must mean
the report was rendered by a real browser.

Console messages are read from Chromium's own log (``--enable-logging=stderr``), where every
``console.*`` call and every uncaught exception of the page is a line ``...:CONSOLE:N] "text",
source: URL (line)``. Screenshots are decoded with :func:`read_png` (zlib and struct, no Pillow).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

CONSOLE = re.compile(r":CONSOLE(?::\d+|\(\d+\))\] (.*)$")


def require_chromium() -> str:
    """Path of Chromium; skip (or fail when CI is "true") when it is not installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    reason = "`chromium` is not installed (Debian: apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must check the HTML report in a real browser")
    pytest.skip(reason)


@dataclass
class Page:
    console: list[str]  # every console message and uncaught error, in order
    png: Path
    log: str


def render(url: str, png: Path, width: int = 900, height: int = 420, timeout: float = 90.0) -> Page:
    """Load ``url`` in headless Chromium (as root too: ``--no-sandbox``), screenshot the viewport
    into ``png`` and return the page's console messages."""
    binary = require_chromium()
    profile = png.parent / f"{png.stem}-profile"
    argv = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}",
            "--enable-logging=stderr", "--v=0", f"--window-size={width},{height}",
            f"--screenshot={png}", url]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and png.is_file(), f"chromium failed ({proc.returncode}):\n{log[-3000:]}"
    console = [m.group(1) for line in log.splitlines() if (m := CONSOLE.search(line))]
    return Page(console, png, log)


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """``(width, height, rows)`` of an 8-bit RGB or RGBA PNG; each row is RGB bytes."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", 0
    height = depth = color = interlace = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    assert depth == 8 and color in (2, 6) and not interlace, (depth, color, interlace)
    bpp = 3 if color == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        _unfilter(kind, line, prev, bpp)
        rows.append(bytes(line) if bpp == 3 else bytes(b for i, b in enumerate(line) if i % 4 != 3))
        prev = line
    return width, height, rows


def _unfilter(kind: int, line: bytearray, prev: bytearray, bpp: int) -> None:
    if kind == 0:
        return
    if kind == 2:  # up
        line[:] = bytes((a + b) & 0xFF for a, b in zip(line, prev))
        return
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        up, corner = prev[i], (prev[i - bpp] if i >= bpp else 0)
        if kind == 1:
            pred = left
        elif kind == 3:
            pred = (left + up) >> 1
        elif kind == 4:
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
        else:
            raise AssertionError(f"unknown PNG filter {kind}")
        line[i] = (line[i] + pred) & 0xFF


def color_counts(rows: list[bytes], colors: list[str], tolerance: int = 24) -> dict[str, int]:
    """Pixels of each ``#rrggbb`` colour: within ``tolerance`` (per channel) of it, or of it
    anti-aliased over the white page (a thin line between two pixel rows is drawn as two rows of
    the colour mixed with white, none of them the colour itself: whether a 4 W line on a 300 W
    axis shows "exact" pixels depended on where it fell)."""
    targets = {c: bytes.fromhex(c[1:]) for c in colors}
    counts = dict.fromkeys(colors, 0)
    for row in rows:
        for x in range(0, len(row), 3):
            px = row[x], row[x + 1], row[x + 2]
            if px[0] == px[1] == px[2]:  # white, black and greys: text, grid and background
                continue
            for name, t in targets.items():
                if all(abs(p - c) <= tolerance for p, c in zip(px, t)) or _over_white(px, t):
                    counts[name] += 1
                    break
    return counts


def _over_white(px: tuple[int, int, int], color: bytes) -> bool:
    """``px`` is ``color`` at 35% or more coverage over white: one coverage explains every channel
    (within 0.12, and 24 levels where a channel is too close to white to say)."""
    alphas = [(255 - p) / (255 - c) for p, c in zip(px, color) if 255 - c >= 60]
    if not alphas or min(alphas) < 0.35:
        return False
    a = sum(alphas) / len(alphas)
    return max(alphas) - min(alphas) <= 0.12 and all(
        abs(p - (255 - a * (255 - c))) <= 24 for p, c in zip(px, color))
