# The README's commands. Each does its own set-up on a fresh machine (package registries only).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the local CPU build of torch first: a plain `torch` requirement would pull a CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[easyeditor,suite,test]'
	# its pins (torch 2.0, transformers 4.30, ...) cannot install beside torch 2.13 / transformers 5
	$(PY) -m pip install -q --no-deps easyeditor==0.0.1.dev0
	touch $@

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) -m benchmarks.demo
