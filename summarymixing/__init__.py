"""SummaryMixing wav2vec 2.0: a linear-time token mixer and the encoders built on it.

Example
-------
>>> import torch
>>> from summarymixing import ConformerEncoder
>>> encoder = ConformerEncoder(2, 16, 32, 4, kernel_size=3, attention_type="SummaryMixing")
>>> encoder(torch.randn(2, 9, 16))[0].shape
torch.Size([2, 9, 16])
"""

from summarymixing.asr import TransformerASR
from summarymixing.branchformer import BranchformerEncoder
from summarymixing.cell import MODES, SummaryMixing
from summarymixing.encoders import ConformerEncoder, MixerEncoder, TransformerEncoder
from summarymixing.mixers import (
    ATTENTION_TYPES,
    MultiheadSDPA,
    build_mixer,
    summary_mixing_options,
)

__all__ = [
    "ATTENTION_TYPES",
    "MODES",
    "BranchformerEncoder",
    "ConformerEncoder",
    "MixerEncoder",
    "MultiheadSDPA",
    "SummaryMixing",
    "TransformerASR",
    "TransformerEncoder",
    "build_mixer",
    "summary_mixing_options",
]
