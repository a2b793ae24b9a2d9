# Two commands for a new machine: `make run` and `make test` (`make build` is the seed's first step).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: build run test lint bench

# The pinned requirements, then the project itself (.venv/bin/cnet, from pyproject.toml): without
# build isolation, so offline, with the setuptools requirements.txt pins.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# What `make run` and bin/cnet-agent need, each step only if it is not done yet: the venv (the rule
# above), the embedded database's migrations and the static files (in $CNET_DATA_DIR, default var/).
# Each node bin/cnet-agent starts migrates its own database under var/nodes/ when it starts.
build: $(STAMP)
	@echo "venv: $(VENV) has requirements.txt and the project installed"
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput
	@echo "built: make run, or ./bin/cnet-agent -config config.yaml"

# The control plane, control worker, beat and a local agent on http://127.0.0.1:8080.
run: $(STAMP)
	$(PY) manage.py up --port $${PORT:-8080}

# The whole suite (SQLite + embedded broker unless DATABASE_URL / CELERY_BROKER_URL are set).
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) bench/placement.py
