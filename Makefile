# Quick start: `make demo` and `make test` each set everything up on a fresh machine.
# Each installs what it needs from exact versions: requirements.lock (the demo: the runtime and
# matplotlib), requirements-test.lock (the tests: the demo's and every extra they exercise),
# requirements-docs.lock (the site, in its own virtual environment).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DOCS_VENV ?= .venv-docs
PIP     = -m pip install -q --disable-pip-version-check
# torch is installed first, on its own. On Linux, PyPI's torch is the CUDA build; the CPU build
# comes from PyTorch's index: `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu`.
# Left empty, pip's own configuration decides (this project's machines provide a CPU wheel).
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
DATASET ?= digits
# Tests and benchmarks read Omniglot from ../shared/data when it is there.
SHARED_DATA := $(wildcard $(abspath ../shared/data))
export FEWSHOT_DATA ?= $(SHARED_DATA)

.PHONY: setup setup-test demo test docs clean

setup: $(VENV)/.installed-demo
setup-test: $(VENV)/.installed-test

$(VENV)/.installed-torch:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) $(PIP) "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)")
	touch $@

$(VENV)/.installed-demo: $(VENV)/.installed-torch pyproject.toml requirements.lock
	$(PY) $(PIP) -r requirements.lock
	$(PY) $(PIP) --no-deps -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-demo requirements-test.lock
	$(PY) $(PIP) -r requirements-test.lock
	touch $@

demo: setup
	$(PY) -m fewshot demo --dataset $(DATASET)

test: setup-test
	$(PY) -m pytest -q -n auto  # pytest-xdist: one worker per core

$(DOCS_VENV)/.installed: requirements-docs.lock
	test -x $(DOCS_VENV)/bin/python || $(PYTHON) -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/python $(PIP) -r requirements-docs.lock
	touch $@

# The site in site/: --strict fails on any warning (a broken link or anchor, a page left out
# of the nav, a docstring mkdocstrings cannot read); then README's and the pages' relative links.
docs: $(DOCS_VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs build --strict  # not --quiet: it hides warnings from --strict
	$(DOCS_VENV)/bin/python tests/test_docs.py

clean:
	rm -rf $(VENV) $(DOCS_VENV) site runs .pytest_cache
