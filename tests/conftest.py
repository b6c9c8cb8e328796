"""Shared fixtures: hardware fakes at their module/filesystem boundary, and run helpers."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greentrack.reports import report_document
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml, PowerTrace
from tests.fakes.powercap import PowercapTree
from tests.helpers import MYPY, MYPY_RESULT, REPO, clean_env, make_run, node_run

# This test session's runs meet only each other: another test session on the same machine (CI
# beside a developer's terminal) must not show up as a second run measuring the host.
os.environ["GREENTRACK_LEASE_DIR"] = tempfile.mkdtemp(prefix="greentrack-test-leases-")
# The tests send SIGINT to real processes as a terminal's Ctrl-C would. Run as a shell's background
# job (`pytest &`, nohup), pytest starts with SIGINT ignored and its children inherit that, so
# Python in them never raises KeyboardInterrupt. Children get the default back (a handler set here
# becomes SIG_DFL across exec).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _runs_the_typing_test(config: pytest.Config) -> bool:
    """Whether this session (not an xdist worker) will run tests/test_typing.py: the whole suite or
    that file, with no marker or keyword filter."""
    if hasattr(config, "workerinput") or config.option.keyword or config.option.markexpr:
        return False
    wanted = {REPO.resolve(), (REPO / "tests").resolve(), (REPO / "tests" / "test_typing.py").resolve()}
    return all(Path(a.split("::")[0]).resolve() in wanted for a in config.args)


def pytest_configure(config: pytest.Config) -> None:
    """Start the mypy check when the session starts, at low priority, so it uses the cores while
    the rest of the suite waits on processes, servers and clocks; the typing test collects its
    result. Started in the test instead, it held a worker and both cores for a minute."""
    if os.environ.get(MYPY_RESULT) or not _runs_the_typing_test(config):
        return
    out = Path(tempfile.mkdtemp(prefix="greentrack-test-mypy-"))
    cmd = (f"nice -n 15 {shlex.join(MYPY)} > {shlex.quote(str(out / 'log'))} 2>&1; "
           f"echo $? > {shlex.quote(str(out / 'rc.tmp'))} && "
           f"mv {shlex.quote(str(out / 'rc.tmp'))} {shlex.quote(str(out / 'rc'))}")
    proc = subprocess.Popen(["sh", "-c", cmd], cwd=REPO, start_new_session=True)
    os.environ[MYPY_RESULT] = str(out)  # xdist workers start after this and inherit it
    config.stash[_MYPY_PROC] = (proc, out)


_MYPY_PROC = pytest.StashKey[tuple[subprocess.Popen, Path]]()  # type: ignore[type-arg]


def pytest_unconfigure(config: pytest.Config) -> None:
    started = config.stash.get(_MYPY_PROC, None)
    if started is None:
        return
    proc, out = started
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # an interrupted session leaves no mypy behind
        except ProcessLookupError:
            pass
        proc.wait()
    shutil.rmtree(out, ignore_errors=True)


#: Long tests (wall seconds on the 2-core VM, bench/RESULTS.md `suite_time`): each opens one
#: worker's share of the collection, so none starts last and runs alone at the end. Not the fake
#: GPU check: it times CPU work against its own limits, and beside these three at the start it
#: ran out of them (a 60 s check took over 60 s).
LONGEST = ("tests/test_integrations_distributed.py::test_lightning_ddp_two_processes",
           "tests/test_examples.py::test_precision_sweep_example_compares_energy_to_a_target",
           "tests/test_soak.py::test_a_fork_pool_loop_of_500_iterations_under_a_tracker_never_hangs")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist (every worker orders alike: the count is the same everywhere), put one of the
    LONGEST tests at the start of each worker's initial share (worksteal splits the collection
    into that many contiguous parts)."""
    workers = (config.workerinput["workercount"] if hasattr(config, "workerinput")
               else getattr(config.option, "numprocesses", None))
    if not isinstance(workers, int) or workers < 2:
        return
    long = [it for name in LONGEST for it in items if it.nodeid == name]
    rest = [it for it in items if it not in long]
    for i, item in enumerate(long[:workers]):
        rest.insert(min(len(rest), i * (len(rest) + i) // workers), item)
    rest += long[workers:]
    items[:] = rest


@pytest.fixture
def no_host_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty powercap root and no launcher variables: CPU/DRAM fall back to estimates."""
    root = tmp_path / "no-powercap"
    monkeypatch.setenv("GREENTRACK_POWERCAP_ROOT", str(root))
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "CUDA_VISIBLE_DEVICES",
                 "GREENTRACK_RUN_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    return root


@pytest.fixture
def powercap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_host_env: Path) -> PowercapTree:
    tree = PowercapTree(tmp_path / "powercap")
    monkeypatch.setenv("GREENTRACK_POWERCAP_ROOT", str(tree.root))
    return tree


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch, no_host_env: Path) -> Iterator[FakeNvml]:
    """One fake H100 drawing 300 W, installed as ``pynvml`` for the code under test."""
    fake = FakeNvml([FakeGpu(trace=PowerTrace([], idle_w=300.0))])
    monkeypatch.setitem(sys.modules, "pynvml", fake.module())
    yield fake
    for gpu in fake.gpus:  # never leave a sampler thread blocked on a hung fake read
        if gpu.hang is not None:
            gpu.hang.set()


@pytest.fixture(autouse=True)
def no_leftover_sampler_threads() -> Iterator[None]:
    yield
    left = [t for t in threading.enumerate() if t.name == "greentrack-sampler" and t.is_alive()]
    assert not left, f"sampler threads left running: {left}"


@pytest.fixture(autouse=True)
def no_leftover_child_processes() -> Iterator[None]:
    """A test that fails before it ends its tracked child (a ``proc.wait`` timing out) must not
    leave it measuring the host through every later test (CI-like runs saw one failure become
    eight: "another run measures this host"). Children the test left are killed, with a warning."""
    import warnings

    import psutil
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    left = []
    for p in me.children(recursive=True):
        try:
            if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p)
        except psutil.Error:
            pass
    if not left:
        return
    _, alive = psutil.wait_procs(left, timeout=2.0)  # one that is ending anyway
    for p in alive:
        try:
            what = " ".join(p.cmdline())[:120]
            p.kill()
        except psutil.Error:
            continue
        warnings.warn(f"killed child process {p.pid} the test left running: {what}", stacklevel=1)


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One finished run for a module's tests (they must not change it)."""
    root = tmp_path_factory.mktemp("good")
    with pytest.MonkeyPatch.context() as mp, clean_env(mp, root):
        yield make_run(root, steps=3)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """A clean environment for one test."""
    with clean_env(monkeypatch, tmp_path):
        yield


@pytest.fixture(scope="module")
def doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("cc")
    with pytest.MonkeyPatch.context() as mp, clean_env(mp, root):
        return report_document(make_run(root, steps=2, country="FR"), {})


@pytest.fixture
def two_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_host_env: Path) -> list[Path]:
    """Two finished node runs of two jobs, `a/run` and `b/run`, for the tests of `merge`."""
    dirs = [tmp_path / "a" / "run", tmp_path / "b" / "run"]
    node_run(monkeypatch, dirs[0], "node-a", run_id="job-a")
    node_run(monkeypatch, dirs[1], "node-b", run_id="job-b")
    return dirs
