PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup train test test-avx2 lint format bench tensorboard

$(PY):
	$(PYTHON) -m venv $(VENV)

setup: $(PY)
	$(PY) -m pip install -q -r requirements.txt

train: setup
	$(PY) train.py

test: setup
	$(PY) -m pytest

# The suite as a CPU without AVX-512 runs it: torch's kernels, oneDNN, MKL and charrnn's C library held to AVX2, so
# floats are summed in another order than on an AVX-512 machine. A test that passes only in one order is wrong.
AVX2 := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 CHARRNN_CFLAGS=-mno-avx512f

test-avx2: setup
	$(AVX2) $(PY) -m pytest

# Line width, import order and the linter's checks, configured in pyproject.toml: `make format` rewrites the tree.
lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) -m bench.run_all

tensorboard:
	$(VENV)/bin/tensorboard --logdir runs
