"""The tree is the architecture: the layer contracts of `.importlinter` hold, no module takes part in
an import circle, greentrack's own imports sit at the top of each file (the few that do not say why),
and heavy libraries load only when used. docs/architecture.md describes these layers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from tests.helpers import REPO, python_env

#: Libraries a tracked training process must not load until a feature asks for them.
HEAVY = ("torch", "pynvml", "amdsmi", "lightning", "transformers", "huggingface_hub",
         "prometheus_client", "pandas", "codecarbon")


def _graph() -> grimp.ImportGraph:
    return grimp.build_graph("greentrack", exclude_type_checking_imports=True, cache_dir=None)


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_layer_contracts_hold() -> None:
    """`lint-imports` (import-linter) on `.importlinter`: each layer imports only those below it,
    stored runs are read without the engine or the samplers, no circle between siblings."""
    out = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command;"
                          " lint_imports_command()", "--no-cache"], cwd=REPO, env=python_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "3 kept, 0 broken" in out.stdout, out.stdout[-2000:]


def test_the_contract_check_fails_on_a_backward_import(tmp_path: Path) -> None:
    """The contract is not vacuous: the same layers over a graph with one import added from
    ``common`` up to ``reports`` (what ``Config.check`` did) are broken."""
    graph = _graph()
    assert len(graph.modules) > 80
    graph.add_import(importer="greentrack.common.config", imported="greentrack.reports.emissions_log")
    layers = ["greentrack.cli", "greentrack.training", "greentrack.process", "greentrack.reports",
              "greentrack.carbon", "greentrack.run", "greentrack.engine", "greentrack.store",
              "greentrack.common"]
    assert graph.find_illegal_dependencies_for_layers(layers=layers, containers=set())
    assert not _graph().find_illegal_dependencies_for_layers(
        layers=[*layers[:3], grimp.Layer("greentrack.reports", "greentrack.exporters"),
                *layers[4:7], grimp.Layer("greentrack.store", "greentrack.samplers"), layers[8]],
        containers=set())


def test_no_module_is_in_an_import_circle() -> None:
    graph = _graph()
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert _circles(edges) == []
    edges["greentrack.common.units"].add("greentrack.carbon.footprint")  # the check can fail
    assert _circles(edges)


def _own_imports(path: Path) -> tuple[list[ast.stmt], list[ast.stmt]]:
    """greentrack's own imports in ``path``: (at module level, inside a function), leaving out
    those under ``if TYPE_CHECKING:`` (they never run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node)}
    top, inner = [], []
    for node in ast.walk(tree):
        if id(node) in typing_only or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
        if isinstance(node, ast.ImportFrom) and node.level:
            names = ["greentrack"]
        if any(n == "greentrack" or n.startswith("greentrack.") for n in names):
            (top if node in tree.body else inner).append(node)
    return top, inner


def _sources() -> list[Path]:
    return sorted([*REPO.glob("greentrack/**/*.py"), *REPO.glob("integrations/*.py")])


def test_own_imports_sit_at_the_top_and_the_few_that_do_not_say_why() -> None:
    top = inner = 0
    unexplained = []
    for path in _sources():
        at_top, in_functions = _own_imports(path)
        top += len(at_top)
        inner += len(in_functions)
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in in_functions:
            before = lines[node.lineno - 2].strip()
            if not before.startswith("#") and "#" not in lines[node.lineno - 1]:
                unexplained.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert top > 250, top
    assert inner / (top + inner) < 0.10, (inner, top)
    assert not unexplained, f"imports inside a function without a comment saying why: {unexplained}"


def test_integrations_use_the_training_side_never_the_command_line() -> None:
    """`integrations/` (greentrack.integrations, outside the package folder, so outside the
    import-linter graph) import the training, process, reports, run and common layers, never the CLI
    or the engine's internals."""
    allowed = ("greentrack.training", "greentrack.process", "greentrack.reports", "greentrack.run",
               "greentrack.common", "greentrack.integrations")
    bad = []
    for path in sorted(REPO.glob("integrations/*.py")):
        at_top, in_functions = _own_imports(path)
        for node in [*at_top, *in_functions]:
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            bad += [f"{path.name}:{node.lineno} {n}" for n in names
                    if n != "greentrack" and not n.startswith(allowed)]
    assert not bad, bad


@pytest.mark.parametrize("statement", [
    "import greentrack",
    "from greentrack import Tracker, track, summarize, Config",
    "import greentrack.training.session, greentrack.reports.summary",
    "import greentrack.cli.main",
])
def test_heavy_libraries_load_only_when_used(statement: str) -> None:
    code = (f"import sys\n{statement}\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=python_env(), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"{statement!r} imported {out.stdout.strip()}"


#: What ``from greentrack import Tracker`` leaves for the stop, the reports or a setting that asks
#: for it (issue 25: the import at most 60 ms over the interpreter, ``bench/start_stop.py``).
NOT_AT_IMPORT = ("greentrack.carbon", "greentrack.reports", "greentrack.run", "statistics",
                 "difflib", "socket")


def test_the_tracker_import_leaves_the_stop_side_and_the_optional_parsers() -> None:
    code = ("import sys\nfrom greentrack import Tracker\n"
            f"print(','.join(sorted(m for m in sys.modules if m.startswith({NOT_AT_IMPORT!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=python_env(), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"the tracker's import loaded {out.stdout.strip()}"
