# `make demo` runs the whole pipeline on the embedded synthetic data; `make test` runs the test suite.
# Both bootstrap .venv on first use (only the package registries are needed).

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
# the offline page template of `dvc plots show/diff` (Vega scripts from npm, pinned)
VEGA_TEMPLATE := .cache/vega/template.html
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export PYTHONHASHSEED := 0
# torch's OpenMP threads spin-wait by default, which starves other work on small shared machines
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test test-all lint bench venv clean-outputs help

help:
	@echo "make demo      synthetic data -> check-data -> dvc repro (whole pipeline) -> where to look"
	@echo "make test      fast test suite (what CI runs first)"
	@echo "make test-all  every test, slow ones included"
	@echo "make lint      ruff check + format check"
	@echo "make bench     run the benchmarks under bench/"

venv: $(STAMP) $(VEGA_TEMPLATE)

$(VEGA_TEMPLATE): scripts/fetch-vega.sh
	scripts/fetch-vega.sh

$(STAMP): requirements.lock pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet --no-compile -r requirements.lock
	$(VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@# Where PYTHONDONTWRITEBYTECODE is set (as on CI) nothing caches bytecode, and every command would compile
	@# ~3000 modules again (~5 s each, ~13 per `dvc repro`): compile them once here. A file that does not
	@# compile (torch ships one for Python 3.12 only) just stays uncached, hence the `|| true`.
	$(VENV)/bin/python -m compileall -qq -j 0 $(VENV)/lib src || true
	@touch $(STAMP)

# check-data before dvc repro hashes data/: what DVC cannot take (link loops, FIFOs, unreadable files, links
# out of data/) stops here with its fix instead of failing, hanging or being copied inside dvc repro
demo: $(STAMP) $(VEGA_TEMPLATE)
	@test -d data || roadwork synth data
	roadwork check-data data
	dvc repro
	roadwork promote
	@echo
	@echo "Done. Metrics:   dvc metrics show          (files: outputs/*/metrics.json; val_test: outputs/evaluate/base/)"
	@echo "      Plots:     dvc plots show            (PNGs: outputs/evaluate/base/plots/)"
	@echo "      Model:     models:/roadwork-classifier@champion  (HF export: outputs/bundle/hf/)"
	@echo "      Predict:   $(VENV)/bin/roadwork predict data/roadwork --out predictions.csv"
	@echo "      MLflow UI: $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db  -> http://127.0.0.1:5000"

test: $(STAMP)
	$(VENV)/bin/python -m pytest

test-all: $(STAMP)
	$(VENV)/bin/python -m pytest -m ""

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(VENV)/bin/python $$b || exit 1; done
