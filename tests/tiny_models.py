"""Tiny wav2vec 2.0 encoders for tests, built from the same classes the YAMLs use.

Example
-------
>>> tiny_encoder(num_layers=1).num_hidden_states
2
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from summarymixing import ConformerEncoder, TransformerEncoder
from summarymixing.export import export_encoder
from summarymixing.w2v2 import FbankFrontEnd, W2V2Encoder


def tiny_encoder(
    d_model: int = 32,
    num_layers: int = 2,
    nhead: int = 4,
    d_ffn: int = 64,
    latent_dim: int = 32,
    n_mels: int = 40,
    kernel_size: int = 3,
    attention_type: str = "SummaryMixing",
    context: str = "conformer",
    dropout: float = 0.0,
    layerdrop_prob: float = 0.0,
    **summary_options: Any,
) -> W2V2Encoder:
    """A ``W2V2Encoder`` with a Conformer (or Transformer) context of the given sizes;
    ``summary_options`` default to hidden sizes ``[d_model]`` as the shipped YAMLs."""
    options = {"local_proj_hid_dim": [d_model], "summary_hid_dim": [d_model], **summary_options}
    common = dict(
        num_layers=num_layers, d_model=d_model, d_ffn=d_ffn, nhead=nhead, dropout=dropout,
        attention_type=attention_type, summary_options=options, layerdrop_prob=layerdrop_prob,
        output_hidden_states=True,
    )
    if context == "conformer":
        encoder = ConformerEncoder(kernel_size=kernel_size, **common)
    else:
        encoder = TransformerEncoder(**common)
    frontend = FbankFrontEnd(n_mels=n_mels, out_channels=[latent_dim, latent_dim])
    return W2V2Encoder(frontend, encoder, d_model=d_model)


def tiny_export(folder: Path, **kwargs: Any) -> Path:
    """Export a :func:`tiny_encoder` (random weights) to ``folder``."""
    return export_encoder(tiny_encoder(**kwargs), folder)
