# The two set-up commands: `make run` (the main job) and `make test` (the tests).
# Both create .venv and install the pinned stack first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# GPU hosts: override the torch wheel, e.g.  make run TORCH_PIP_ARGS="--index-url <your CUDA wheel index>"
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=

# Offline, no telemetry, and every file the tools write kept inside the project.
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export PREFECT_HOME := $(CURDIR)/.prefect
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib

.PHONY: install run test bench clean
install: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	grep -v '^torch==' requirements.lock > $(VENV)/requirements.notorch.txt
	$(BIN)/pip install --quiet -r $(VENV)/requirements.notorch.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

run: install
	$(BIN)/danvae generate data/surfaces --seed 0
	$(BIN)/danvae train --data data/surfaces --model danvae --out runs/danvae
	$(BIN)/danvae generate data/test-surfaces --normal 200 --anomaly 86 --seed 1
	$(BIN)/danvae score --model runs/danvae --data data/test-surfaces --out reports/scores.csv
	$(BIN)/danvae evaluate --scores reports/scores.csv --out reports/metrics.json

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) .cache .pytest_cache
