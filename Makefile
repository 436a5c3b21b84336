# The front door: `make setup`, `make run`, `make test`, `make bench`, `make protos`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PROTO_OUT := services/common/proto
PROTOS := $(wildcard protos/mrt/v1/*.proto)
# Node.js packages: the gRPC client, and the web service's JavaScript tests (official Lyria SDK,
# headless browser). `npm ci` installs exactly the lock file; again only when it changes.
NODE_PACKAGES := clients/node tests/js
NODE_STAMPS := $(addsuffix /node_modules/.installed-stamp,$(NODE_PACKAGES))

.PHONY: setup run test test-fast bench protos protos-check lint images base-image system-deps node-deps clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==26.3
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

run: setup
	$(VENV)/bin/mrt up $(ARGS)

# Command-line tools the tests need (promtool, kubectl with kustomize, Node.js, Chromium);
# idempotent.
system-deps:
	bash scripts/ci_system_deps.sh

node-deps: $(NODE_STAMPS)

# The browser test drives Debian's chromium: Playwright must not download a browser of its own.
%/node_modules/.installed-stamp: %/package.json %/package-lock.json
	cd $* && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
	touch $@

test: setup protos-check lint system-deps node-deps
	$(PY) -m pytest -q -ra

test-fast: setup node-deps
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) -m bench $(ARGS)

# Regenerate the Python stubs from protos/ (reproducible: grpcio-tools is pinned).
protos: setup
	bash scripts/gen_protos.sh $(PY) $(PROTO_OUT)

# Fail when the committed stubs differ from what the protos generate.
protos-check: setup
	bash scripts/gen_protos.sh $(PY) $(PROTO_OUT) --check

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
REGISTRY ?=
ACCELERATOR ?= cpu
IMAGES ?= gateway embedder generator
PYTHON_IMAGE ?=

# Container images, one per service (the generator per accelerator), built with Docker or, where
# no Docker engine answers, with buildah. PYTHON_IMAGE replaces the pinned python:3.11-slim base.
images:
	VERSION=$(VERSION) REGISTRY=$(REGISTRY) ACCELERATOR=$(ACCELERATOR) PYTHON_IMAGE=$(PYTHON_IMAGE) \
	  bash scripts/images.sh build $(IMAGES)

# A Debian bookworm base with Python 3.11 made from this machine's apt sources (no registry):
# `make base-image && make images PYTHON_IMAGE=localhost/mrt-python:3.11-bookworm`.
base-image:
	bash scripts/images.sh base

# ruff (lint and format) and mypy, configured in pyproject.toml; part of `make test`.
lint: setup
	$(PY) -m ruff check services bench tests
	$(PY) -m ruff format --check services bench tests
	$(PY) -m mypy

clean:
	rm -rf $(VENV) .pytest_cache $(addsuffix /node_modules,$(NODE_PACKAGES))
