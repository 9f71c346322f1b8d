# `make demo` and `make test` are the whole set-up: each creates .venv from the requirement files
# when it is missing or older than them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# DATA=/path/to/VOCdevkit/VOC2012 runs the demo on real VOC instead of the embedded sample.
DATA ?=
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: test demo venv clean-demo

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests

clean-demo:
	rm -rf $(DEMO_DIR)
