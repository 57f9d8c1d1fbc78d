# davbridge: the two commands of the README, plus lint and bench.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench test-deps clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

## demo: start Radicale and the Graph stand-in, enable two users, sync, show before/after
demo: $(STAMP)
	$(BIN)/python -m devtools.demo

test-deps:
	bash devtools/install_test_deps.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy sync_core devtools function_app.py

## test: install what the tests need (Cyrus, Azurite), lint, run the whole suite
test: $(STAMP) test-deps lint
	$(BIN)/python -m pytest -q

bench: $(STAMP) test-deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .testrun .demo .davbridge
