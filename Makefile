# Set-up and entry points. Every install step lives here (CI runs `make test` on a bare machine).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-requirements
DEVICE ?= cpu

.PHONY: venv test lint demo benchmark clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest

benchmark: venv
	$(PY) -m summarymixing.benchmark --device $(DEVICE)

demo: venv
	$(PY) recipes/demo/run.py hparams/demo/demo.yaml --device=$(DEVICE)

clean:
	rm -rf results/benchmark results/demo .pytest_cache
