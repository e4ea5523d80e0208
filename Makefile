# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test bench chaos screenshots lint format clean-venv

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Simdeck needs Python 3.11 or newer.")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(PY) requirements.txt pyproject.toml
	$(PY) -m pip install --quiet -r requirements.txt -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $@

# The project's modules are compiled once up front: where PYTHONDONTWRITEBYTECODE
# is set, each process (web server, scheduler, every machine) would compile them again.
COMPILE := $(PY) -m compileall -q -j 0 tasks_app console simdeck

run: $(VENV)/.installed
	@$(COMPILE)
	$(PY) manage.py up

# The import layers first (pyproject.toml's contracts, in a second), then the tests.
# Tests keep their own SIMDECK_HOME, so they never touch a running instance's data.
test: $(VENV)/.installed-dev
	$(VENV)/bin/lint-imports --no-cache --no-logo
	@$(COMPILE) tests
	SIMDECK_HOME=$(CURDIR)/.simdeck-test $(PY) -m pytest $(ARGS)

# Benchmarks against bare Celery, in a database of their own; see docs/benchmarks.md.
bench: $(VENV)/.installed-dev
	@$(COMPILE) bench
	$(PY) -m bench $(ARGS)

# Long fault runs (killed machines, Redis and PostgreSQL restarts, a flood) on private servers.
chaos: $(VENV)/.installed-dev
	$(PY) -m bench.chaos $(ARGS)

# docs/screenshots/ from a private demo instance (real tasks; Debian's Chromium).
screenshots: $(VENV)/.installed-dev
	$(PY) scripts/screenshots.py --demo $(ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache --no-logo

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean-venv:
	rm -rf $(VENV)
