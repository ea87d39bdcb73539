"""The wav2vec 2.0 encoder: front end + projection + positions + context encoder.

``W2V2Encoder`` is what pre-training learns and what downstream tasks reuse. It returns every
hidden state ``[input embeddings, layer 1, ..., layer L]`` for the downstream weighted layer sum.

``ARCH_DEFAULTS`` lists the architecture hyperparameters (the paper's values) that fully define
the encoder's shapes and computation; ``build_encoder(arch)`` is the one constructor used by the
training YAMLs and by ``summarymixing.export.load_pretrained``, so a stored ``arch`` dict always
rebuilds the model that was trained. ``summary_activation`` names SummaryMixing's activation
(a class of ``torch.nn`` or ``speechbrain.nnet.activations``, e.g. ``"GELU"``); ``None`` gives it
the Conformer's own activation (Swish), as the authors do. Regularisation (dropout, layer drop,
the SummaryMixing dropout variant) and memory options are not architecture and are passed
separately.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from speechbrain.lobes.models.transformer.Transformer import PositionalEncoding
from speechbrain.nnet import activations
from torch import nn

from summarymixing.encoders import ConformerEncoder, MixerEncoder
from summarymixing.w2v2.frontend import FbankFrontEnd

logger = logging.getLogger(__name__)

ARCH_DEFAULTS: dict[str, Any] = {
    "sample_rate": 16000,
    "n_fft": 400,
    "n_mels": 80,
    "win_length": 25.0,
    "hop_length": 10.0,
    "cnn_channels": [512, 512],
    "cnn_kernels": [3, 3],
    "cnn_strides": [2, 1],
    "d_model": 768,
    "num_layers": 12,
    "nhead": 8,
    "d_ffn": 3072,
    "conv_kernel_size": 31,
    "attention_type": "SummaryMixing",
    "mode": "SummaryMixing",
    "local_proj_hid_dim": [768],
    "local_proj_out_dim": None,  # d_model
    "summary_hid_dim": [768],
    "use_layernorm": True,
    "summary_activation": None,  # the Conformer's activation (Swish)
    "max_positions": 3500,
}


def complete_arch(arch: Mapping[str, Any]) -> dict[str, Any]:
    """Fill missing keys of ``arch`` with ``ARCH_DEFAULTS``; sequences become lists.

    Raises
    ------
    ValueError
        For a key that is not an architecture hyperparameter (names it).

    Example
    -------
    >>> complete_arch({"d_model": 64, "num_layers": 2})["nhead"]
    8
    >>> complete_arch({"layers": 2})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown architecture key 'layers'; expected one of ['sample_rate', ...]
    """
    unknown = [key for key in arch if key not in ARCH_DEFAULTS]
    if unknown:
        raise ValueError(
            f"unknown architecture key {unknown[0]!r}; expected one of {list(ARCH_DEFAULTS)}"
        )
    full = {**ARCH_DEFAULTS, **arch}
    return {
        key: list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
        for key, value in full.items()
    }


class W2V2Encoder(nn.Module):
    """Front end, input projection, mask embedding, sinusoidal positions and context encoder.

    Arguments
    ---------
    frontend : FbankFrontEnd
        Waveform to latent frames ``(B, T, C)``.
    context : MixerEncoder
        Context encoder (e.g. ``summarymixing.ConformerEncoder``) built with
        ``output_hidden_states=True``.
    d_model : int
        Context encoder size ``D``.
    dropout_encoder_input : float
        Dropout on the projected latents.
    max_positions : int
        Longest sequence of latent frames the positional encoding covers.

    Example
    -------
    >>> frontend = FbankFrontEnd(n_mels=40, out_channels=[32, 32])
    >>> context = ConformerEncoder(2, 16, 32, 4, kernel_size=3, output_hidden_states=True)
    >>> encoder = W2V2Encoder(frontend, context, d_model=16).eval()
    >>> hidden = encoder(torch.randn(2, 16000), torch.tensor([1.0, 0.7]))
    >>> len(hidden) == encoder.num_hidden_states, hidden[-1].shape
    (True, torch.Size([2, 48, 16]))
    """

    def __init__(
        self,
        frontend: FbankFrontEnd,
        context: MixerEncoder,
        d_model: int,
        dropout_encoder_input: float = 0.0,
        max_positions: int = 3500,
    ):
        super().__init__()
        if not context.output_hidden_states:
            raise ValueError(
                "expected a context encoder built with output_hidden_states=True, got False"
            )
        self.frontend = frontend
        self.input_projector = nn.Linear(frontend.out_dim, d_model)
        self.dropout_encoder_input = nn.Dropout(dropout_encoder_input)
        self.mask_emb = nn.Parameter(torch.empty(d_model).uniform_())
        self.positional_encoding = PositionalEncoding(d_model, max_len=max_positions)
        self.context = context
        self.d_model = d_model
        self.max_positions = max_positions
        self.num_hidden_states = len(context.layers) + 1

    def embed(
        self, latents: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Project latents ``(B, T, C)`` to ``(B, T, D)``, replace the frames where ``mask``
        ``(B, T)`` is ``True`` by the learnt mask embedding, and add positions."""
        if latents.shape[1] > self.max_positions:
            raise ValueError(
                f"expected at most max_positions={self.max_positions} latent frames, "
                f"got {latents.shape[1]}"
            )
        embeddings = self.dropout_encoder_input(self.input_projector(latents))  # (B, T, D)
        if mask is not None:
            if mask.shape != embeddings.shape[:2]:
                raise ValueError(
                    f"expected a mask of shape {tuple(embeddings.shape[:2])}, "
                    f"got {tuple(mask.shape)}"
                )
            mask_emb = self.mask_emb.to(embeddings.dtype)
            embeddings = torch.where(mask.unsqueeze(-1), mask_emb, embeddings)
        return embeddings + self.positional_encoding(embeddings)

    def encode(
        self,
        latents: torch.Tensor,
        padding_mask: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Run the context encoder on front-end latents.

        Arguments
        ---------
        latents : torch.Tensor
            ``(B, T, C)`` front-end output.
        padding_mask : torch.Tensor
            ``(B, T)``, ``True`` at padded frames.
        mask : torch.Tensor, optional
            ``(B, T)``, ``True`` at the frames to replace by the mask embedding (pre-training).

        Returns
        -------
        list of torch.Tensor
            ``num_hidden_states`` tensors ``(B, T, D)``: the input embeddings, then each layer's
            output; the last one is after the encoder's final layer norm.
        """
        embeddings = self.embed(latents, mask)
        output, _, hidden_states = self.context(embeddings, src_key_padding_mask=padding_mask)
        return [*hidden_states[:-1], output]

    def output_lengths(self, wav_lens: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Frames ``(B,)`` (long) of each utterance of a batch padded to ``num_samples``
        samples, from relative lengths ``wav_lens`` ``(B,)``: what it gives alone."""
        return self.frontend.output_lengths(wav_lens, num_samples)

    def forward(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """All hidden states of waveforms ``wavs`` ``(B, S)`` with relative lengths
        ``wav_lens`` ``(B,)`` in ``(0, 1]``: a list of ``num_hidden_states`` tensors
        ``(B, T, D)`` (values at padded frames are meaningless)."""
        latents, padding_mask = self.frontend(wavs, wav_lens)
        return self.encode(latents, padding_mask)


def activation_class(name: str) -> type[nn.Module]:
    """The activation class called ``name`` in ``torch.nn`` or ``speechbrain.nnet.activations``.

    Example
    -------
    >>> activation_class("GELU"), activation_class("Swish").__name__
    (<class 'torch.nn.modules.activation.GELU'>, 'Swish')
    >>> activation_class("Gaussian")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown activation 'Gaussian': expected a class name of torch.nn or ...
    """
    for namespace in (nn, activations):
        found = getattr(namespace, name, None)
        if isinstance(found, type) and issubclass(found, nn.Module):
            return found
    raise ValueError(
        f"unknown activation {name!r}: expected a class name of torch.nn or "
        "speechbrain.nnet.activations (e.g. 'GELU', 'Swish')"
    )


def build_encoder(
    arch: Mapping[str, Any],
    dropout: float = 0.0,
    layerdrop_prob: float = 0.0,
    dropout_encoder_input: float = 0.0,
    activation_checkpointing: bool = False,
    summary_dropout: str = "frame",
) -> W2V2Encoder:
    """Build the ``W2V2Encoder`` described by ``arch`` (keys of ``ARCH_DEFAULTS``).

    Arguments
    ---------
    arch : mapping
        Architecture hyperparameters; missing keys take the paper's values.
    dropout : float
        Dropout inside the context encoder layers.
    layerdrop_prob : float
        Probability of skipping each context layer in training.
    dropout_encoder_input : float
        Dropout on the projected latents.
    activation_checkpointing : bool
        Recompute each context layer in the backward pass (saves memory).
    summary_dropout : str
        SummaryMixing's dropout masks on the summary in training: ``"frame"`` (the authors') or
        ``"utterance"`` (cheaper); see ``summarymixing.SummaryMixing``.

    Example
    -------
    >>> encoder = build_encoder({"n_mels": 40, "cnn_channels": [32, 32], "d_model": 16,
    ...                          "num_layers": 2, "nhead": 4, "d_ffn": 32, "conv_kernel_size": 3,
    ...                          "local_proj_hid_dim": [16], "summary_hid_dim": [16]})
    >>> encoder.num_hidden_states, encoder.d_model
    (3, 16)
    """
    arch = complete_arch(arch)
    summary_activation = (
        None if arch["summary_activation"] is None else activation_class(arch["summary_activation"])
    )
    frontend = FbankFrontEnd(
        sample_rate=arch["sample_rate"], n_fft=arch["n_fft"], n_mels=arch["n_mels"],
        win_length=arch["win_length"], hop_length=arch["hop_length"],
        out_channels=arch["cnn_channels"], kernel_sizes=arch["cnn_kernels"],
        strides=arch["cnn_strides"],
    )
    context = ConformerEncoder(
        num_layers=arch["num_layers"], d_model=arch["d_model"], d_ffn=arch["d_ffn"],
        nhead=arch["nhead"], kernel_size=arch["conv_kernel_size"], dropout=dropout,
        attention_type=arch["attention_type"], mode=arch["mode"],
        local_proj_hid_dim=arch["local_proj_hid_dim"],
        local_proj_out_dim=arch["local_proj_out_dim"], summary_hid_dim=arch["summary_hid_dim"],
        use_layernorm=arch["use_layernorm"],
        summary_activation=summary_activation, summary_dropout=summary_dropout,
        layerdrop_prob=layerdrop_prob, output_hidden_states=True,
        activation_checkpointing=activation_checkpointing,
    )
    return W2V2Encoder(
        frontend, context, arch["d_model"], dropout_encoder_input=dropout_encoder_input,
        max_positions=arch["max_positions"],
    )
