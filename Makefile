# Two commands on a fresh machine:
#   make demo   install, fetch Fashion-MNIST, train the default base model if missing, run the main job
#   make test   install with the test extra, then lint, type-check and run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
CONFIG ?= configs/default.yaml

# Use the active virtualenv when there is one, else ./.venv (created on demand).
ifdef VIRTUAL_ENV
PY := python
VENV_DEP :=
else
PY := $(VENV)/bin/python
VENV_DEP := $(VENV)/bin/python
endif

.PHONY: demo test install install-test data lint typecheck pytest slow benchmarks

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip

install: $(VENV_DEP)
	$(PY) -m pip install --quiet -e .

install-test: $(VENV_DEP)
	$(PY) -m pip install --quiet -e '.[test]'

data:
	PY="$(PY)" bash scripts/get-data.sh

demo: install data
	$(PY) -m edgecompress run --config $(CONFIG)
	$(PY) -m edgecompress search --config $(CONFIG)

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck:
	$(PY) -m mypy

pytest:
	$(PY) -m pytest

test: install-test data lint typecheck pytest

# Long runs (training to target accuracy, full searches); not part of `make test`.
slow: install-test data
	$(PY) -m pytest -m slow

benchmarks: install data
	$(PY) benchmarks/train_base_models.py
	$(PY) benchmarks/compressors.py
	$(PY) benchmarks/latency_models.py
