"""SummaryMixing wav2vec 2.0: the filterbank front end, the encoder and pre-training pieces.

Example
-------
>>> import torch
>>> from summarymixing.w2v2 import build_encoder
>>> encoder = build_encoder({"n_mels": 40, "cnn_channels": [32, 32], "d_model": 16,
...                          "num_layers": 2, "nhead": 4, "d_ffn": 32, "conv_kernel_size": 3,
...                          "local_proj_hid_dim": [16], "summary_hid_dim": [16]})
>>> [h.shape[-1] for h in encoder(torch.randn(1, 8000))]
[16, 16, 16]
"""

from summarymixing.w2v2.encoder import ARCH_DEFAULTS, W2V2Encoder, build_encoder, complete_arch
from summarymixing.w2v2.frontend import FbankFrontEnd

__all__ = ["ARCH_DEFAULTS", "FbankFrontEnd", "W2V2Encoder", "build_encoder", "complete_arch"]
