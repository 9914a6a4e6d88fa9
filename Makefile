# Two commands: `make demo` and `make test` (each creates .venv on first use).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/default
CONFIG ?= configs/default.py
PYTEST_ARGS ?= -n 2

# Use the full datasets in ../shared/data when they are there and nothing else is set.
ifeq ($(SPARSEJAX_DATA_DIR),)
ifneq ($(wildcard ../shared/data/mnist.npz),)
export SPARSEJAX_DATA_DIR := $(abspath ../shared/data)
endif
endif
export TF_CPP_MIN_LOG_LEVEL := 3

.PHONY: demo test install install-test clean

$(VENV)/.stamp-base: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[sample]'
	touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-base
	$(PY) -m pip install -q -e '.[test,sample]'
	touch $@

install: $(VENV)/.stamp-base
install-test: $(VENV)/.stamp-test

demo: $(VENV)/.stamp-base
	$(PY) scripts/train.py --config $(CONFIG) --workdir $(WORKDIR)

test: $(VENV)/.stamp-test
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
