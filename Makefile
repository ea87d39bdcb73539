# Set-up and entry points. Every install step lives here (CI runs `make test` on a bare machine).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-requirements
DEVICE ?= cpu

.PHONY: venv test lint demo benchmark clean

# The pinned requirements first, then this project as an editable package (summarymixing and
# data_prep importable from anywhere), built with the pinned setuptools.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest

benchmark: venv
	$(PY) -m summarymixing.benchmark suite --device $(DEVICE)

demo: venv
	$(PY) recipes/demo/run.py hparams/demo/demo.yaml --device=$(DEVICE)

clean:
	rm -rf results/benchmark results/demo .pytest_cache
