"""bench/RESULTS.md is written by several scripts; each owns one marked section and must never
overwrite another's (an earlier ad-hoc writer deleted its neighbours' markers)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))

from _common import record  # noqa: E402

BEGIN = re.compile(r"<!-- bench:([\w:]+) -->")
END = re.compile(r"<!-- /bench:([\w:]+) -->")


def test_results_sections_are_paired_and_unique() -> None:
    text = (REPO / "bench" / "RESULTS.md").read_text(encoding="utf-8")
    begins, ends = BEGIN.findall(text), END.findall(text)
    assert begins == ends, (begins, ends)
    assert len(set(begins)) == len(begins), begins
    # every "## " heading belongs to a section: nothing written outside the markers
    outside = re.sub(r"<!-- bench:([\w:]+) -->.*?<!-- /bench:\1 -->", "", text, flags=re.DOTALL)
    assert "## " not in outside, outside


def test_every_recording_script_goes_through_record() -> None:
    for script in (REPO / "bench").glob("*.py"):
        src = script.read_text(encoding="utf-8")
        if script.name == "_common.py" or "RESULTS" not in src:
            continue
        assert "record(" in src, f"{script.name} writes RESULTS.md without _common.record"


def test_record_replaces_its_own_section_only(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    record("a", "## A\n\none", path)
    record("b", "## B\n\ntwo", path)
    record("a", "## A\n\nthree", path)
    text = path.read_text(encoding="utf-8")
    assert BEGIN.findall(text) == ["a", "b"] == END.findall(text)
    assert "three" in text and "one" not in text and "two" in text


def test_a_band_too_wide_gives_no_verdict() -> None:
    from _common import QUIET_BAND_PTS, band_verdict

    assert band_verdict(0.01, (-0.02, 0.02)) == "**yes**"
    assert band_verdict(0.03, (-0.02, 0.02)) == "**no**"
    assert band_verdict(-0.03, (-0.02, 0.02)) == "**no**"
    wide = QUIET_BAND_PTS / 100
    assert band_verdict(0.0, (-wide, wide)).startswith("**cannot tell**")
    assert band_verdict(0.5, (-wide, wide)).startswith("**cannot tell**")
