# Umbra: two commands for users (`make demo`, `make test`); the rest are steps they use.
# Everything installs into .venv (Python) and node_modules (buf) inside the repository.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
BUF    := node_modules/.bin/buf

.PHONY: help install tools protos check-protos lint-protos breaking lint browser test test-heavy demo up down status image clean

help:
	@echo "make demo          install, start the services, run the main job, print where results are"
	@echo "make test          install and run the whole test suite (what CI runs)"
	@echo "make test-heavy    the tests make test leaves out for time (the container image build)"
	@echo "make protos        regenerate Python code from proto/ into clients/umbra/"
	@echo "make check-protos  fail when the committed generated code differs from proto/"
	@echo "make lint-protos   buf lint (STANDARD)"
	@echo "make breaking      buf breaking against the last released contracts (proto/releases/)"
	@echo "make lint          ruff over the Python code, and the layers (import-linter, docs/LAYERS.md)"
	@echo "make up|down|status  start, stop or show the local services"
	@echo "make image         build deploy/Dockerfile with buildah (root; deploy/image/build.sh)"

install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml clients/pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -c constraints.txt -e ./clients -e '.[dev]'
	touch $@

tools: node_modules/.installed
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error  # installs the lock as committed and never rewrites it
	touch $@

protos: install
	$(PY) scripts/protos.py generate

check-protos: install
	$(PY) scripts/protos.py check

lint-protos: install tools
	$(PY) scripts/protos.py lint --buf $(BUF)

breaking: install tools
	$(PY) scripts/protos.py breaking --buf $(BUF)

lint: install
	$(VENV)/bin/ruff check services clients tests scripts benchmarks
	$(VENV)/bin/lint-imports  # the layers in docs/LAYERS.md

# The review page's browser test: Debian's chromium (installed as root when missing; Playwright drives it, no browser
# download), and the page's vendored Chart.js the same as node_modules' (scripts/vendor_assets.py).
browser: install tools
	deploy/browser/chromium.sh
	$(PY) scripts/vendor_assets.py check

test: install tools check-protos lint-protos breaking lint browser
	$(VENV)/bin/pytest

# What make test leaves out for time: building deploy/Dockerfile with buildah and starting the coordinator from it
# (about 10 minutes the first time on 2 cores; needs root for buildah, as deploy/image/build.sh says).
test-heavy: install
	$(VENV)/bin/pytest -m heavy

demo: install
	$(PY) scripts/demo.py

up: install
	$(VENV)/bin/umbra up
down: install
	$(VENV)/bin/umbra down
status: install
	$(VENV)/bin/umbra status

image:
	deploy/image/build.sh

clean:
	rm -rf $(VENV) node_modules .build .pytest_cache .hypothesis out
