"""``make demo``: the whole paper pipeline in miniature (``recipes/demo/run.py``)."""
