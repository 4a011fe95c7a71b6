# Two commands from a fresh clone: `make train` (set up + train the tutorial's network)
# and `make test` (set up + run the test suite). Everything lives in .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The real MNIST files: ../shared/datasets when it is there (CI), else Pooch downloads.
SHARED_DATA := $(abspath ../shared/datasets)
export MNISTLAB_DATA ?= $(if $(wildcard $(SHARED_DATA)/mnist),$(SHARED_DATA),)

.PHONY: setup train test bench mutation clean

setup: $(VENV)/.installed

# The runtime: what `make train` needs.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python3 -m venv failed: installing Debian's python3-venv"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv; fi; \
	  rm -rf $(VENV); $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	@touch $@

# The test tools on top (Playwright, onnxruntime, TensorBoard, MLflow, ...).
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

# mutmut 3 on top of the test tools ([tool.mutmut] in pyproject.toml says what it mutates).
$(VENV)/.installed-mutation: $(VENV)/.installed-test
	$(BIN)/python -m pip install -q -e '.[test,mutation]'
	@touch $@

train: setup
	$(BIN)/mnistlab train --preset seed --test

test: $(VENV)/.installed-test
	bash scripts/system-deps.sh
	$(BIN)/python -m pytest -q

# Mutation testing of the core modules (docs/testing.md), or of some: `make mutation
# MODULE="optim stats"`. On demand, not in CI: hours on 2 cores. Results stay in mutants/, so
# a run stopped halfway resumes; `.venv/bin/mutmut show NAME` gives a survivor's diff.
MODULE ?=
mutation: $(VENV)/.installed-mutation
	$(BIN)/python scripts/mutation.py $(MODULE)

bench: setup
	$(BIN)/python bench/bench_seed.py

clean:
	rm -rf $(VENV) runs .pytest_cache mutants
