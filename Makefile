# segstyle — two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv/ at the repo root when it is missing.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Prefect: keep its state inside the repo, never phone home.
export PREFECT_HOME ?= $(CURDIR)/artifacts/prefect-home
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: venv demo test test-fast bench lint server deploy worker chromium clean

venv: $(STAMP)

# torch 2.14.1 / torchvision 0.29.1 are the builds this machine's pip finds on disk;
# they are installed first so the resolver never reaches for another build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/segstyle demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Timing scripts, not tests: each prints measured ratios on its last line.
bench: $(STAMP)
	$(PY) benchmarks/bench_sam_prompts.py
	$(PY) benchmarks/bench_pipeline.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Local Prefect server bound to 127.0.0.1 only; the UI is on http://127.0.0.1:4200
PREFECT_LOCAL_API := http://127.0.0.1:4200/api

server: $(STAMP)
	$(VENV)/bin/prefect server start --host 127.0.0.1 --port 4200

deploy: $(STAMP)
	PREFECT_API_URL=$(PREFECT_LOCAL_API) $(VENV)/bin/prefect work-pool create segstyle-process --type process --overwrite
	PREFECT_API_URL=$(PREFECT_LOCAL_API) SEGSTYLE_HOME=$(CURDIR) $(VENV)/bin/prefect --no-prompt deploy --all

worker: $(STAMP)
	PREFECT_API_URL=$(PREFECT_LOCAL_API) SEGSTYLE_HOME=$(CURDIR) $(VENV)/bin/prefect worker start --pool segstyle-process

# Debian's Chromium, for the report's headless-browser check.
chromium:
	apt-get update && apt-get install -y chromium

clean:
	rm -rf artifacts/cache artifacts/runs artifacts/metrics artifacts/prefect-home
