# Two commands do all set-up on a fresh machine:
#   make run    builds .venv if needed, then runs the main job on its embedded default
#   make test   builds .venv if needed, then runs the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: run test bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(PY) harness/tune.py --space rkd_weights $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest tests

bench: $(VENV)/.installed
	$(PY) -m crkd.bench $(ARGS)
