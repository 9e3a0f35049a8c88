# The two set-up commands of the README are `make run` and `make test`;
# both work on a bare machine (they create the virtualenv and build the model).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL_DIR ?= model/default
PORT ?= 8000
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help venv venv-dev model run test test-quick lint format e2e bench bench-quick bench-tools monitoring-tools reliability scale roll clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# PyPI's Linux torch wheels are CUDA builds (GBs of nvidia-* wheels); the service runs on the
# CPU build, which pip prefers (2.13.0+cpu sorts above 2.13.0) when this index is offered.
# Empty: no extra index (a mirror that serves the +cpu wheel, or a local wheelhouse).
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu

$(VENV)/.runtime: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --retries 1 $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL)) \
		"$$(grep -E '^torch==' requirements.txt)"
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.runtime ## create the virtualenv with the pinned runtime requirements
venv-dev: $(VENV)/.dev ## add test and lint tools

model: $(VENV)/.runtime ## build (or reuse from cache) the default model into model/default
	$(PY) -m model.build --out $(MODEL_DIR)

# Another folder: `make run MODEL_DIR=models/x`; only the default folder is built first (a
# build would overwrite a fetched model).
run: venv ## serve the default model (or MODEL_DIR) on port $(PORT)
	$(if $(filter model/default,$(MODEL_DIR)),$(MAKE) --no-print-directory model)
	TEXTCLF_MODEL_PATH=$(MODEL_DIR) TEXTCLF_PORT=$(PORT) $(PY) -m app

lint: venv-dev ## ruff and mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy app model bench tests tools

format: venv-dev
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test-quick: venv-dev ## unit tests only (tiny random model, seconds)
	$(PY) -m pytest -m "not integration and not e2e"

test: venv-dev model lint bench-tools monitoring-tools ## everything: lint, unit, integration over real HTTP (the benchmark tool too), container stack
	MODEL_PATH=$(MODEL_DIR) $(PY) -m pytest -m "not e2e"
	$(MAKE) e2e

e2e: venv-dev model ## the Docker Compose stack behind Nginx, on a real Docker engine
	bash deploy/ci/e2e.sh

monitoring-tools: ## promtool (rule tests) from Debian's prometheus package, unpacked into the cache (no daemon)
	bash deploy/ci/promtool.sh >/dev/null

N ?= 2
scale: ## N replicas of the app behind Nginx in the running Compose stack: make scale N=3
	bash deploy/compose/replicas.sh scale $(N)

roll: ## replace every replica one at a time (new image or settings), no failed request
	bash deploy/compose/replicas.sh roll

bench-tools: ## the benchmark's load generator: wrk (apt)
	command -v wrk >/dev/null || (apt-get update -q && apt-get install -y -q wrk)

bench: venv-dev model bench-tools ## ceiling + c=1,8,32,64 sweep, 3 repeats (~5 min; BENCHMARKS.md)
	MODEL_PATH=$(MODEL_DIR) $(PY) -m bench run

bench-quick: venv-dev model bench-tools ## a one-minute smoke run of the benchmark (not for claims)
	MODEL_PATH=$(MODEL_DIR) $(PY) -m bench run --quick

# Through Nginx instead: deploy/reliability/stack.sh up, then --url/--pid (RELIABILITY.md).
reliability: venv-dev model ## open-loop load: R, overload 4R, burst 10R, 10-min soak (~20 min; RELIABILITY.md)
	MODEL_PATH=$(MODEL_DIR) $(PY) -m bench reliability all --out bench/results/raw

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
