"""Recipes, run from the repository root:
``python recipes/<task>/train.py hparams/<task>/<config>.yaml``."""
