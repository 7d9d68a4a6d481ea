PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup train test bench tensorboard

$(PY):
	$(PYTHON) -m venv $(VENV)

setup: $(PY)
	$(PY) -m pip install -q -r requirements.txt

train: setup
	$(PY) train.py

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) -m bench.run_all

tensorboard:
	$(VENV)/bin/tensorboard --logdir runs
