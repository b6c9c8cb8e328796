# Two entry points on a fresh clone:  `make demo` (a tracked training run) and `make test`.
# Installs into .venv; torch 2.13.0 first so its CPU build is taken from the local disk, never a
# multi-GB CUDA build pulled in by another package's requirement.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) greentrack-runs .pytest_cache
