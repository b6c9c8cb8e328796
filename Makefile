# Two entry points on a fresh clone:  `make demo` (a tracked training run) and `make test`.
# Installs into .venv; torch 2.13.0 first so its CPU build is taken from the local disk, never a
# multi-GB CUDA build pulled in by another package's requirement.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Test workers (pytest-xdist): 4 on the 2-core VM the suite's figures come from (bench/RESULTS.md):
# many tests wait on processes, servers and clocks, so 4 keep both cores busy (2 workers: 387 s,
# 4: 233-254 s); worksteal hands a finished worker the rest of a busy one's queue.
TEST_WORKERS ?= 4

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

# Compiled modules cached as Python does by default, even where the environment turns it off
# (PYTHONDONTWRITEBYTECODE=1 made every test process and worker compile greentrack and rewrite the
# tests from source: bench/RESULTS.md `suite_time`).
test: $(STAMP)
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal

# The quick lane while developing: everything but the tests marked slow (real trainers, processes,
# servers, browsers, mypy, the GPU check script), under a minute on 2 cores; `make test` before a push.
test-fast: $(STAMP)
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -n 4 -m "not slow"

clean:
	rm -rf $(VENV) greentrack-runs .pytest_cache
