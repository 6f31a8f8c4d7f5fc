# One entry point for every routine task. `make run` and `make test` work on a fresh clone:
# they create the virtualenv with the pinned versions first.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PRESET ?= demo
SEED ?= 0

export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export BENTOML_DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

.PHONY: setup run data test test-slow lint format bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

## the main job on the embedded default: the retraining flow on generated data (params.yaml)
run: setup
	$(BIN)/relayrec retrain

## the data steps only: world data → DVC version → validation → groups
data: setup
	$(BIN)/relayrec data pipeline --preset $(PRESET) --seed $(SEED)

## every check: format, lint, tests (slow tests excluded)
test: setup lint
	$(BIN)/pytest -q

test-slow: setup
	$(BIN)/pytest -q -m slow

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python bench/bench_data.py

clean:
	rm -rf artifacts .pytest_cache .ruff_cache
