# The two set-up commands: `make run` (the main job) and `make test` (the tests).
# Both create .venv and install the pinned stack first.
ifeq ($(origin PYTHON), undefined)
PYTHON := $(shell command -v python3.11 || command -v python3)
endif
VENV := .venv
BIN := $(VENV)/bin
# GPU hosts: override the torch wheel, e.g.  make run TORCH_PIP_ARGS="--index-url <your CUDA wheel index>"
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=

# Offline, no telemetry, and every file the tools write kept inside the project.
export DVC_NO_ANALYTICS := 1
export DVC_SITE_CACHE_DIR := $(CURDIR)/.dvc/tmp/site_cache
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export PREFECT_HOME := $(CURDIR)/.prefect
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install run test bench ui clean
# pip byte-compiles every file it installs, one at a time (54 s of the 124 s non-torch install here);
# compileall does the same on every core afterwards (32 s). Not skipped: with
# PYTHONDONTWRITEBYTECODE set, as on CI hosts, every stage would recompile what it imports.
install: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	grep -v '^torch==' requirements.lock > $(VENV)/requirements.notorch.txt
	$(BIN)/pip install --quiet --no-compile -r $(VENV)/requirements.notorch.txt
	$(BIN)/pip install --quiet --no-compile --no-deps -e .
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true  # a few packaged templates are not Python, as pip too ignores
	touch $@

run: install
	$(BIN)/python -m pipelines.check_params
	$(BIN)/dvc repro
	$(BIN)/python -m pipelines.summary

# The MLflow UI on the project's own store (job runners off, so it answers at once).
ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

# Two xdist workers, each test file on one of them (its module fixtures built once), one
# torch thread each. On 2 cores, from a clean clone: one process 41 min 48 s; two workers of
# two torch threads 38 min 48 s (they fought over the cores); one thread each 26 min 27 s.
test: install
	mkdir -p .cache
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --basetemp=.cache/pytest

bench: install
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/ingest_throughput.py

clean:
	rm -rf $(VENV) .cache .pytest_cache
