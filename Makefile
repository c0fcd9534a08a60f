# Set-up and everyday commands. `make demo` and `make test` are all a fresh clone needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch/torchvision pinned here (not in the package metadata) to the wheels this machine serves.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: venv install install-dev demo test test-all lint bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[video]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[dev]'
	touch $(VENV)/.installed $@

venv install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## demo: train the small architecture on the embedded LFW faces for a few minutes on the CPU
demo: $(VENV)/.installed
	$(VENV)/bin/fagan train --model_dir demo_run/models --sample_dir demo_run/samples --time_limit 240

## test: the default suite (slow tests deselected)
test: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m "not slow"

## test-all: every test, slow ones included
test-all: $(VENV)/.installed-dev
	$(PY) -m pytest -q

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(VENV)/.installed-dev
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf demo_run build dist src/*.egg-info .pytest_cache
