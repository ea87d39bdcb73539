"""SummaryMixing wav2vec 2.0: the filterbank front end, the encoder and pre-training pieces.

Example
-------
>>> import torch
>>> from summarymixing import ConformerEncoder
>>> from summarymixing.w2v2 import FbankFrontEnd, W2V2Encoder
>>> encoder = W2V2Encoder(
...     FbankFrontEnd(n_mels=40, out_channels=[32, 32]),
...     ConformerEncoder(2, 16, 32, 4, kernel_size=3, output_hidden_states=True),
...     d_model=16,
... )
>>> [h.shape[-1] for h in encoder(torch.randn(1, 8000))]
[16, 16, 16]
"""

from summarymixing.w2v2.encoder import W2V2Encoder
from summarymixing.w2v2.frontend import FbankFrontEnd

__all__ = ["FbankFrontEnd", "W2V2Encoder"]
