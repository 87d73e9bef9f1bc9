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
# the core's log lines (segstyle_core.*) in the flow runs' logs
export PREFECT_LOGGING_EXTRA_LOGGERS := segstyle_core

.PHONY: venv demo test test-fast bench lint server deploy worker chromium clean

# torch 2.14.1 / torchvision 0.29.1 are the builds this machine's pip finds on disk;
# they are installed first so the resolver never reaches for another build. sam2 is an sdist
# whose build needs torch: built against that torch (no build isolation, which would download
# another torch), without its optional CUDA extension.
# The install is editable in setuptools' strict mode: a tree of links under build/ maps
# `segstyle.tasks` -> tasks/ and `segstyle.flows` -> flows/ (see pyproject.toml), so only the
# project's namespaced packages are importable. A link per module file: the tree is rebuilt
# whenever a module is added or removed (LINKED's name is a hash of the file list).
MODULES := $(shell find segstyle_core tasks flows -name '*.py' | sort | sha1sum | cut -c1-12)
LINKED := $(VENV)/.linked-$(MODULES)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	SAM2_BUILD_CUDA=0 $(PY) -m pip install --quiet --no-build-isolation "sam2==1.1.0"
	$(PY) -m pip install --quiet -e ".[dev]" --config-settings editable_mode=strict
	touch $(STAMP)

$(LINKED): $(STAMP)
	rm -f $(VENV)/.linked-*
	$(PY) -m pip install --quiet --no-deps -e . --config-settings editable_mode=strict
	touch $(LINKED)

venv: $(LINKED)

demo: $(LINKED)
	$(VENV)/bin/segstyle demo

test: $(LINKED)
	$(PY) -m pytest -q

test-fast: $(LINKED)
	$(PY) -m pytest -q -m "not slow"

# Timing scripts, not tests: each prints measured ratios on its last line.
bench: $(LINKED)
	$(PY) benchmarks/bench_sam_prompts.py
	$(PY) benchmarks/bench_encoders.py
	$(PY) benchmarks/bench_service.py
	$(PY) benchmarks/bench_dask.py
	$(PY) benchmarks/bench_pipeline.py

lint: $(LINKED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m mypy -p segstyle_core -p segstyle.tasks -p segstyle.flows

# Local Prefect server bound to 127.0.0.1 only; the UI is on http://127.0.0.1:$(SERVER_PORT).
# `make deploy` and `make worker` talk to it (run each in its own terminal, same SERVER_PORT).
SERVER_PORT ?= 4200
PREFECT_LOCAL_API := http://127.0.0.1:$(SERVER_PORT)/api
POOL := segstyle-process

# PREFECT_UI_API_URL: the UI's API address; Prefect 3.8.8 derives it from its default port
# (4200), not from --port. Beside it, `segstyle serve` serves the runs/ and metrics/ of each
# folder of OUTPUTS_DIRS on 127.0.0.1:$(OUTPUTS_PORT), so the UI's artifact links open: `make
# deploy` sets the Prefect Variable segstyle-outputs-url to that address, and a run links its
# files when that server says it serves the run's --out (see segstyle_core/outputs.py). Both
# stop together. Another port: `make server deploy SERVER_PORT=4300 OUTPUTS_PORT=4301`.
# PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://USER:PASSWORD@HOST:5432/DB in the
# environment puts the server's database in PostgreSQL (Prefect reads it; asyncpg comes with
# Prefect); without it the database is SQLite in PREFECT_HOME.
OUTPUTS_PORT ?= 4201
OUTPUTS_DIRS ?= artifacts
server: $(LINKED)
	$(VENV)/bin/segstyle serve $(foreach d,$(OUTPUTS_DIRS),--out $(d)) --port $(OUTPUTS_PORT) & outputs=$$!; \
	trap 'kill $$outputs 2>/dev/null' EXIT INT TERM; \
	PREFECT_UI_API_URL=$(PREFECT_LOCAL_API) $(VENV)/bin/prefect server start --host 127.0.0.1 --port $(SERVER_PORT)

# Creates the process work pool once (an existing one keeps its settings), then deploys every
# deployment of prefect.yaml; the demo-offline-nightly schedule is active at once.
# SEGSTYLE_NOTIFY_WEBHOOK=<URL> (env or `make deploy SEGSTYLE_NOTIFY_WEBHOOK=...`): failed or
# crashed nightly runs are POSTed there (the automation segstyle-nightly-failure, flows/notify.py).
deploy: $(LINKED)
	PREFECT_API_URL=$(PREFECT_LOCAL_API) $(VENV)/bin/prefect work-pool inspect $(POOL) >/dev/null 2>&1 \
		|| PREFECT_API_URL=$(PREFECT_LOCAL_API) $(VENV)/bin/prefect work-pool create $(POOL) --type process
	PREFECT_API_URL=$(PREFECT_LOCAL_API) $(VENV)/bin/prefect --no-prompt deploy --all
	PREFECT_API_URL=$(PREFECT_LOCAL_API) $(VENV)/bin/prefect variable set segstyle-outputs-url http://127.0.0.1:$(OUTPUTS_PORT) --overwrite
	PREFECT_API_URL=$(PREFECT_LOCAL_API) $(PY) -m segstyle.flows.notify

worker: $(LINKED)
	PREFECT_API_URL=$(PREFECT_LOCAL_API) $(VENV)/bin/prefect worker start --pool $(POOL)

# Debian's Chromium, for the report's headless-browser check (as root; once).
chromium:
	test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)

clean:
	rm -rf artifacts/cache artifacts/runs artifacts/metrics artifacts/prefect-home
