# Quick start: `make demo` and `make test` each set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of torch; override (e.g. TORCH_SPEC=torch) to use another build.
TORCH_SPEC ?= torch==2.13.0
DATASET ?= digits
# Tests and benchmarks read Omniglot from ../shared/data when it is there.
SHARED_DATA := $(wildcard $(abspath ../shared/data))
export FEWSHOT_DATA ?= $(SHARED_DATA)

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

demo: setup
	$(PY) -m fewshot demo --dataset $(DATASET)

test: setup
	$(PY) -m pytest -q -n auto  # pytest-xdist: one worker per core

clean:
	rm -rf $(VENV) runs .pytest_cache
