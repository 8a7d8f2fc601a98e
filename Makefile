# Two commands on a fresh machine:
#   make demo   install, find Fashion-MNIST, run the main job (`edgecompress compress` on configs/default.yaml):
#               search, replay with distillation, ONNX + int8 export, one summary
#   make test   install with the test extra, then lint, type-check and run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
CONFIG ?= configs/default.yaml

# Use the active virtualenv when there is one, else ./.venv (created on demand).
ifdef VIRTUAL_ENV
PY := python
VENV_DEP :=
VENV_BIN :=
else
PY := $(VENV)/bin/python
VENV_DEP := $(VENV)/bin/python
VENV_BIN := $(VENV)/bin/
endif

.PHONY: demo test install install-test data lint imports typecheck pytest slow benchmarks

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip

install: $(VENV_DEP)
	$(PY) -m pip install --quiet -e .

install-test: $(VENV_DEP)
	$(PY) -m pip install --quiet -e '.[test]'

data:
	PY="$(PY)" bash scripts/get-data.sh

# The main job: ResNet-20 (shipped in assets/) compressed 2x for a Raspberry Pi 4: search, replay with
# distillation, ONNX fp32 + int8 export (verified), speed-up measured here; ends on one summary.
demo: install data
	$(PY) -m edgecompress compress --config $(CONFIG) --max-batches 150

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The layers contract in pyproject.toml: every module imports only from the layers below it.
imports:
	$(VENV_BIN)lint-imports

typecheck:
	$(PY) -m mypy

pytest:
	$(PY) -m pytest

test: install-test data lint imports typecheck pytest

# Long runs (training to target accuracy, full searches); not part of `make test`.
slow: install-test data
	$(PY) -m pytest -m slow

# Re-runs the recorded command of every file in benchmarks/results/ (each one listed in
# benchmarks/README.md; `python3 benchmarks/reproduce.py --list` prints them; hours), then
# regenerates benchmarks/README.md. `make benchmarks-readme` only regenerates the README.
benchmarks: install data
	$(PY) benchmarks/reproduce.py
	$(PY) benchmarks/render_readme.py

.PHONY: benchmarks-readme
benchmarks-readme:
	$(PYTHON) benchmarks/render_readme.py
