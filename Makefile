# Set-up and everyday commands. `make demo` and `make test` are all a fresh clone needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch/torchvision pinned here (not in the package metadata) to the wheels this machine serves.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: venv install install-dev demo test test-all lint format check bench clean

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

## demo: train the small architecture on the embedded LFW faces on the CPU: 12 epochs of 100
## steps; continues an unfinished demo run, starts a finished one over; bf16 where the CPU has
## it natively; the time limit is a safety net (the run then says how far it got)
DEMO_DIR := demo_run
DEMO_TIME_LIMIT ?= 3600
demo: $(VENV)/.installed
	@flags=$$($(PY) -c "from fagan.train import continuation_flag, native_bf16; \
	flag = continuation_flag('$(DEMO_DIR)/models'); \
	print(flag, '--precision bf16' if flag != '--resume' and native_bf16() else '')"); \
	echo "fagan train --model_dir $(DEMO_DIR)/models --sample_dir $(DEMO_DIR)/samples $$flags"; \
	$(VENV)/bin/fagan train --model_dir $(DEMO_DIR)/models --sample_dir $(DEMO_DIR)/samples \
		--num_epochs 12 --feedback_factor 10 --time_limit $(DEMO_TIME_LIMIT) $$flags

## test: the default suite (slow tests deselected)
test: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m "not slow"

## test-all: every test, slow ones included
test-all: $(VENV)/.installed-dev
	$(PY) -m pytest -q

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check src tests benchmarks train.py

## format: apply ruff's formatting
format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff format src tests benchmarks train.py

## check: what CI runs: ruff check, ruff format --check, then the default suite
check: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check src tests benchmarks train.py
	$(VENV)/bin/ruff format --check src tests benchmarks train.py
	$(MAKE) test

bench: $(VENV)/.installed-dev
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf demo_run build dist src/*.egg-info .pytest_cache
