# The front door: `make setup`, `make run`, `make test`, `make bench`, `make protos`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PROTO_OUT := services/common/proto
PROTOS := $(wildcard protos/mrt/v1/*.proto)

.PHONY: setup run test test-fast bench protos protos-check lint images clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==26.3
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

run: setup
	$(VENV)/bin/mrt up $(ARGS)

test: setup protos-check
	$(PY) -m pytest -q -ra

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) -m bench

# Regenerate the Python stubs from protos/ (reproducible: grpcio-tools is pinned).
protos: setup
	bash scripts/gen_protos.sh $(PY) $(PROTO_OUT)

# Fail when the committed stubs differ from what the protos generate.
protos-check: setup
	bash scripts/gen_protos.sh $(PY) $(PROTO_OUT) --check

lint: setup
	$(PY) -m compileall -q services bench tests

clean:
	rm -rf $(VENV) .pytest_cache
