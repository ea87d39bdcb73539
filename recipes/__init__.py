"""Recipes: ``python recipes/<task>/train.py hparams/<task>/<config>.yaml`` (the project installed
with ``pip install -e .``, as ``make venv`` does)."""
