# s4c: the two commands a fresh machine needs are `make run` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp-install

.PHONY: setup run serve test browser lint migrations-check ci gpu-check bench clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or: make PYTHON=python3 ...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first, pinned to the CPU build on this machine's disk: an unpinned torch pulls a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

## setup: venv, install, default model fetched and converted, CPU kernel built (idempotent)
setup: $(STAMP)
	$(BIN)/s4c model fetch
	$(BIN)/python -m s4c_engine.narrow_linear

## run: the service on embedded defaults runs the bundled demo job end to end, then stops
run: setup
	$(BIN)/s4c serve --demo

## serve: as run, but the service stays up (Ctrl-C stops it)
serve: setup
	$(BIN)/s4c serve --demo --keep-running

## test: the whole suite (what .ci/run calls); PYTEST_ARGS adds options, e.g. "-m 'not slow'"
PYTEST_ARGS ?= -q
# pytest exit codes: 0 passed, 1 tests failed, 2 interrupted, 3 internal error, 4 usage
# error, 5 no tests collected; every one but 0 fails (make itself then exits 2)
test: setup browser
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -ne 0 ]; then echo "pytest exit code $$rc"; fi; exit $$rc

## browser: Debian's chromium and chromedriver for the dashboard test (installed once; an
## install interrupted earlier is finished first, or apt-get refuses to run)
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  dpkg --configure -a && apt-get update -qq && apt-get install -y -qq chromium chromium-driver; \
	else \
	  sudo dpkg --configure -a && sudo apt-get update -qq && \
	  sudo apt-get install -y -qq chromium chromium-driver; \
	fi

## lint: ruff (lint and format), mypy, import-linter contracts
# every tool runs even when an earlier one fails, so one run shows every problem
lint: $(STAMP)
	@status=0; \
	echo "ruff check"; $(BIN)/ruff check . || status=1; \
	echo "ruff format --check"; $(BIN)/ruff format --check . || status=1; \
	echo "mypy"; $(BIN)/mypy jobs api worker s4c s4c_engine || status=1; \
	echo "lint-imports"; $(BIN)/lint-imports || status=1; \
	exit $$status

## migrations-check: alembic upgrade head + alembic check on fresh SQLite and PostgreSQL
migrations-check: $(STAMP)
	$(BIN)/python .ci/check_migrations.py

## ci: what CI runs (services, lint, migrations check, tests)
ci:
	.ci/run

## gpu-check: engine tests on a CUDA device in fp32 and bf16/fp16 (run on a GPU machine)
gpu-check: setup
	$(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
