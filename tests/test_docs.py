"""The docs name things that exist: the tests behind the guarantees (docs/guarantees.md), the CLI options shown
in README.md and docs/, the modules and functions of docs/architecture.md, the bench figures'
source. A renamed test, option or function fails here instead of leaving a stale doc."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO

README = REPO / "README.md"
GUARANTEES = REPO / "docs" / "guarantees.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
ARCH = REPO / "docs" / "architecture.md"


def _section(text: str, heading: str) -> str:
    """The body of the `## heading` section (up to the next `## `)."""
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def _table_rows(text: str) -> list[list[str]]:
    """Cells of each body row of the Markdown tables in `text` (header and rule left out)."""
    rows: list[list[str]] = []
    previous = ""
    for line in text.splitlines():
        if line.startswith("|") and not re.match(r"^\|\s*-", line) and previous.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            rows.append(cells)
        previous = line
    return [r for r in rows if not all(set(c) <= set("- ") for c in r)]


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test")}


@pytest.mark.slow
def test_every_guarantee_names_tests_that_exist() -> None:
    rows = _table_rows(_section(GUARANTEES.read_text(encoding="utf-8"), "Guarantees"))
    assert len(rows) > 40, len(rows)
    missing = []
    for row in rows:
        refs = re.findall(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`", row[-1])
        assert refs, f"guarantee without a test: {row[0]!r}"
        current: Path | None = None
        for file, name in refs:
            if file:
                current = REPO / file
                if not current.is_file():
                    missing.append(file)
                    continue
            assert current is not None, f"'::{name}' before any file in {row[-1]!r}"
            if name and current.is_file() and name not in _test_names(current):
                missing.append(f"{current.relative_to(REPO)}::{name}")
    assert not missing, missing


def _cli_choices() -> dict[str, set[str]]:
    from greentrack.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    choices: dict[str, Any] = sub.choices  # type: ignore[attr-defined]
    return {name: set(p._option_string_actions) for name, p in choices.items()}


def _command_spans(text: str) -> list[str]:
    """Every `greentrack CMD ...` written in code: lines of fenced blocks (with their indented
    `[...]` continuation lines) and inline code spans."""
    spans: list[str] = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if re.match(r"^(\$ )?greentrack [a-z]+(\s|$)", line):
                j = i + 1
                while j < len(lines) and re.match(r"^\s+\[", lines[j]):
                    line += " " + lines[j].strip()
                    j += 1
                spans.append(line)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    spans += [s for s in re.findall(r"`([^`]+)`", prose) if s.startswith("greentrack ")]
    return spans


def test_documented_cli_options_exist() -> None:
    choices = _cli_choices()
    unknown = []
    checked = 0
    for doc in [README, *DOCS]:
        for span in _command_spans(doc.read_text(encoding="utf-8")):
            command = span.removeprefix("$ ").split()[1]
            if command not in choices:
                unknown.append(f"{doc.name}: greentrack {command}")
                continue
            own = re.split(r"\s--\s", span)[0]  # what follows ` -- ` is the tracked command's
            for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", own):
                checked += 1
                if option not in choices[command]:
                    unknown.append(f"{doc.name}: greentrack {command} {option}")
    assert checked > 30, checked
    assert not unknown, unknown


def _modules() -> list[Path]:
    return sorted(p.relative_to(REPO / "greentrack") for p in (REPO / "greentrack").rglob("*.py")
                  if p.name not in ("__init__.py", "__main__.py"))


def test_architecture_layer_table_lists_every_module() -> None:
    text = ARCH.read_text(encoding="utf-8")
    rows = _table_rows(text.split("## Where each figure is computed")[0])
    files_cells = [row[1] for row in rows]
    absent = []
    for module in _modules():
        if len(module.parts) == 1:
            named = any(re.search(rf"(?<![\w/]){re.escape(module.name)}", c) for c in files_cells)
        else:
            package = module.parts[0] + "/"
            named = any(package in c and re.search(rf"(?<!\w){re.escape(module.name)}", c)
                        for c in files_cells)
        if not named:
            absent.append(str(module))
    assert not absent, f"modules missing from docs/architecture.md's layer table: {absent}"


def _resolve(dotted: str) -> Any:
    """`greentrack.<dotted>`: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module("greentrack." + ".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_architecture_figure_places_exist() -> None:
    """Each place in "Where each figure is computed": `module.Name.attr` or `pkg/file.py`
    (optionally followed by a `name` in it); `Name.attr` after it is looked up in the module named
    before in the cell, a parenthesized list of `attrs` on the object named just before."""
    text = _section(ARCH.read_text(encoding="utf-8"), "Where each figure is computed")
    rows = _table_rows(text)
    assert len(rows) > 20, len(rows)
    broken = []
    checked = 0
    for figure, place in rows:
        module: Any = None
        obj: Any = None
        depth = 0
        for m in re.finditer(r"\(|\)|`([^`]+)`", place):
            if m.group(0) == "(":
                depth += 1
                continue
            if m.group(0) == ")":
                depth -= 1
                continue
            token = m.group(1)
            try:
                if token.endswith(".py"):
                    path = token.removeprefix("greentrack/")
                    assert (REPO / "greentrack" / path).is_file(), token
                    obj = module = _resolve(path.removesuffix(".py").replace("/", "."))
                elif not re.fullmatch(r"[A-Za-z_][\w]*(?:[./][A-Za-z_]\w*)*", token):
                    continue  # a value, a metric name, a command
                elif "/" in token or (module is None and depth == 0):
                    obj = _resolve(token.replace("/", "."))
                    module = importlib.import_module(obj.__module__) if not hasattr(
                        obj, "__path__") and hasattr(obj, "__module__") else obj
                    if isinstance(obj, type(importlib)):
                        module = obj
                elif depth > 0 and "." not in token and isinstance(obj, type):
                    getattr(obj, token)  # an attribute listed after its class
                elif depth > 0 and "." not in token:
                    continue  # a field or table name in a remark
                else:
                    try:
                        obj = _resolve(token)
                    except (ModuleNotFoundError, AttributeError):
                        head, *rest = token.split(".")
                        found = getattr(module, head)
                        for attr in rest:
                            found = getattr(found, attr)
                        obj = found
                checked += 1
            except (AssertionError, AttributeError, ModuleNotFoundError, ImportError) as e:
                broken.append(f"{figure}: `{token}` ({type(e).__name__}: {e})")
    assert checked >= len(rows), checked
    assert not broken, broken


@pytest.mark.slow
def test_docs_cite_sources_readers_can_open() -> None:
    """Repo files cite vendor docs, papers, issues or bench results; never a colleague's notes
    outside the repository (only the BoAmps schema test reads ../shared/schemas)."""
    allowed = {REPO / "tests" / "helpers.py", Path(__file__)}
    offenders = []
    for path in REPO.rglob("*"):
        rel = path.relative_to(REPO)
        if (not path.is_file() or path in allowed
                or rel.parts[0] in (".git", ".venv", ".mypy_cache", ".pytest_cache", "build")
                or rel.parts[0].endswith(".egg-info") or "greentrack-runs" in rel.parts
                or (path.suffix not in (".py", ".md", ".sh", ".toml", ".yml", ".yaml", ".json")
                    and rel.parts[0] != ".ci")):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for needle in ("FIELD_NOTES", "../shared", "/work/shared"):
            if needle in text:
                offenders.append(f"{rel}: {needle}")
    assert not offenders, offenders


def test_the_readmes_first_screen_takes_a_newcomer_to_a_run_a_report_and_grafana() -> None:
    """Issue 26: 8a2bbe5's README was 605 lines, a 90-row guarantees table came before the list
    of docs, and it stated neither how long ``make test`` takes nor the system packages it
    needs. Now the screen above the first section goes from the clone to a tracked run, its
    report and a Grafana view, states both, and links the docs the details moved to."""
    text = README.read_text(encoding="utf-8")
    first = text.split("\n## ", 1)[0]
    assert len(first.splitlines()) <= 70 and len(text.splitlines()) <= 350
    # clone to a tracked run and its report
    for words in ("make demo", "report.html", "greentrack run --run-dir", "greentrack report"):
        assert words in first, words
    # a Grafana view, from files that exist
    compose = re.search(r"cd (\S+) && docker compose up -d", first)
    assert compose and (REPO / compose.group(1) / "docker-compose.yml").is_file()
    assert "http://127.0.0.1:3000" in first
    # make test: how long, and the system packages it needs, which CI installs
    said = re.search(r"make test +# .*?~(\d+) min on a 2-core VM.*?~(\d+)-(\d+) min beside 4 busy",
                     first)
    assert said, "the README does not say how long make test takes"
    packages = re.search(r"`make test` needs the Debian packages (.*?)\(", first, re.DOTALL)
    assert packages, "the README does not name make test's system packages"
    named = re.findall(r"`([\w-]+)`", packages.group(1))
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    installed = {w for line in ci.splitlines() if "apt-get install" in line for w in line.split()}
    assert named and set(named) <= installed, (named, installed)
    # the durations are the ones bench/RESULTS.md recorded for `make test` with 4 workers
    rows = [r for r in _table_rows(_section(
        (REPO / "bench" / "RESULTS.md").read_text(encoding="utf-8"), "Test suite time"))
        if r[0].startswith("`make test`") and r[1] == "4"]
    quiet = [float(r[3].split()[0]) / 60 for r in rows if r[2] == "0"]
    busy = [float(r[3].split()[0]) / 60 for r in rows if r[2] == "4"][-3:]
    assert any(abs(m - int(said.group(1))) <= 0.5 for m in quiet), (said.group(0), quiet)
    assert busy and all(int(said.group(2)) - 0.5 <= m <= int(said.group(3)) + 0.5
                        for m in busy), (said.group(0), busy)
    # the guarantees and the details live in docs/, linked from the first screen
    for doc in ("docs/usage.md", "docs/reports.md", "docs/guarantees.md", "docs/methodology.md",
                "docs/integrations.md", "docs/prometheus.md"):
        assert f"]({doc})" in first and (REPO / doc).is_file(), doc
    assert "\n## Guarantees" not in text and "\n## Guarantees" in GUARANTEES.read_text()
    assert max(map(len, _tables(text)), default=0) <= 30  # no 90-row table in the README


def _tables(text: str) -> list[list[str]]:
    """Each Markdown table of ``text`` as its lines."""
    tables: list[list[str]] = []
    previous = ""
    for line in text.splitlines():
        if line.startswith("|"):
            if previous.startswith("|"):
                tables[-1].append(line)
            else:
                tables.append([line])
        previous = line
    return tables


def test_bench_figures_quoted_in_the_readme_are_in_results() -> None:
    """Each bench command of the README's table is a script with a section in bench/RESULTS.md
    (which gives its machine, date and command), and every figure of the table with a decimal
    point or a percent sign is written in RESULTS.md as the README quotes it (signed percentages
    with their sign)."""
    results = (REPO / "bench" / "RESULTS.md").read_text(encoding="utf-8")
    rows = _table_rows(_section(README.read_text(encoding="utf-8"), "Benchmarks"))
    assert rows
    for row in rows:
        scripts = re.findall(r"python (bench/\w+\.py)", row[-1])
        if row[-1] == "same":
            continue
        assert scripts, row
        for script in scripts:
            assert (REPO / script).is_file(), script
            assert Path(script).stem in results, f"{script} has no section in bench/RESULTS.md"
    quoted = [n for row in rows for cell in row[1:-1]
              for n in re.findall(r"\d+\.\d+%?|\d+%", cell)]
    quoted += [n for row in rows for cell in row for n in re.findall(r"(?<![\w.])[-+]\d+(?:\.\d+)?%", cell)]
    assert len(quoted) > 20, quoted
    absent = [n for n in quoted if n not in results]
    assert not absent, f"README bench figures not in bench/RESULTS.md: {absent}"


def test_the_settings_readme_says_greentrack_run_lacks_are_the_ones_it_lacks() -> None:
    import dataclasses

    from greentrack.cli.main import build_parser
    from greentrack.common.config import Config

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    dests = {a.dest for a in sub.choices["run"]._actions}  # type: ignore[attr-defined]
    lacking = {f.name for f in dataclasses.fields(Config)} - dests - {"extra"}
    said = re.search(r"all but (.*?) \(per process", README.read_text(encoding="utf-8"), re.DOTALL)
    assert said, "README no longer says which settings greentrack run lacks"
    assert set(re.findall(r"`(\w+)`", said.group(1))) == lacking


def test_every_cli_option_has_help_text() -> None:
    from greentrack.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    silent = [f"{name} {a.option_strings or a.dest}"
              for name, p in sub.choices.items()  # type: ignore[attr-defined]
              for a in p._actions if not (a.help or "").strip()]
    assert len(sub.choices) >= 7  # type: ignore[attr-defined]
    assert not silent, silent
