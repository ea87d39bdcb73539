"""What every downstream run writes: a metrics JSON and a PNG of the learned layer weights."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from data_prep.files import atomic_write_text

logger = logging.getLogger(__name__)


def write_metrics(path: str | Path, metrics: Mapping) -> Path:
    """Write ``metrics`` as indented JSON (atomically); refuse non-finite numbers.

    Arguments
    ---------
    path : str or Path
        The JSON file to write.
    metrics : Mapping
        JSON-serialisable metrics.

    Returns
    -------
    Path
        ``path``.

    Example
    -------
    >>> import tempfile
    >>> out = write_metrics(Path(tempfile.mkdtemp()) / "metrics.json", {"accuracy": 0.75})
    >>> json.loads(out.read_text())
    {'accuracy': 0.75}
    """
    path = Path(path)
    atomic_write_text(path, json.dumps(metrics, indent=2, sort_keys=True, allow_nan=False) + "\n")
    logger.info("Wrote metrics to %s", path)
    return path


def plot_layer_weights(weights: Sequence[float], path: str | Path, title: str = "") -> Path:
    """Bar chart of the softmax layer weights (index 0 = input embeddings).

    Arguments
    ---------
    weights : Sequence[float]
        The ``L + 1`` layer weights (finite).
    path : str or Path
        The PNG file to write.
    title : str
        The plot's title.

    Returns
    -------
    Path
        ``path``.

    Example
    -------
    >>> import tempfile
    >>> out = plot_layer_weights([0.2, 0.5, 0.3], Path(tempfile.mkdtemp()) / "w.png")
    >>> out.read_bytes()[:4] == b"\\x89PNG"
    True
    """
    weights = [float(w) for w in weights]
    if not weights or not all(math.isfinite(w) for w in weights):
        raise ValueError(f"expected a non-empty list of finite layer weights, got {weights}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A bare Figure (no pyplot): no GUI backend, no global figure registry, nothing to close.
    fig = Figure(figsize=(max(5.0, 0.45 * len(weights) + 1.5), 3.0))
    ax = fig.subplots()
    ax.bar(range(len(weights)), weights, color="tab:blue")
    ax.axhline(1.0 / len(weights), color="gray", linestyle="--", linewidth=1, label="uniform")
    ax.set_xticks(range(len(weights)))
    ax.set_xticklabels(["emb"] + [str(i) for i in range(1, len(weights))])
    ax.set_xlabel("hidden state (emb: input embeddings; n: layer n)")
    ax.set_ylabel("softmax weight")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
