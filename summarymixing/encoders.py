"""Conformer and Transformer encoders whose token mixer is chosen by one argument.

The layers are SpeechBrain's own (``ConformerEncoderLayer``, ``TransformerEncoderLayer``),
subclassed only to receive the mixer built here; every other argument keeps SpeechBrain's
meaning, so switching SummaryMixing and multi-head self-attention is one YAML line::

    encoder: !new:summarymixing.ConformerEncoder
        num_layers: 12
        d_model: 768
        d_ffn: 3072
        nhead: 8
        attention_type: SummaryMixing   # or regularMHA, RelPosMHAXL, SDPA
        summary_options:                # used by SummaryMixing only
            mode: SummaryMixing
            local_proj_hid_dim: [768]
            summary_hid_dim: [768]

Encoders take SpeechBrain's call signature ``forward(src, src_mask=None,
src_key_padding_mask=None, pos_embs=None)`` (``True`` = padding) and, when built with
``output_hidden_states=True``, also return the hidden state of every layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from speechbrain.lobes.models.transformer.Conformer import (
    ConformerEncoderLayer,
    ConvolutionModule,
)
from speechbrain.lobes.models.transformer.Transformer import TransformerEncoderLayer
from speechbrain.nnet.activations import Swish
from speechbrain.nnet.attention import RelPosEncXL
from speechbrain.nnet.normalization import LayerNorm
from torch import nn
from torch.utils.checkpoint import checkpoint

from summarymixing.architecture import RecordsArguments
from summarymixing.mixers import build_mixer, summary_mixing_options


class PaddingSafeConvolutionModule(ConvolutionModule):
    """SpeechBrain's Conformer convolution module, with padded frames zeroed *before* the
    depthwise convolution.

    SpeechBrain masks only the module's output, so the convolution reads the padded frames of
    a batch and the last ``kernel_size // 2`` valid frames change with the amount of padding.
    Zeroing them at the convolution's input makes a padded utterance see exactly the zeros an
    unpadded one sees.

    Example
    -------
    >>> conv = PaddingSafeConvolutionModule(8, kernel_size=3)
    >>> conv(torch.randn(2, 5, 8), torch.zeros(2, 5, 1, dtype=torch.bool)).shape
    torch.Size([2, 5, 8])
    """

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        dynchunktrain_config: object | None = None,
    ) -> torch.Tensor:
        """``x``: ``(B, T, D)``; ``mask``: ``(B, T, 1)``, ``True`` at padded frames."""
        if dynchunktrain_config is not None or mask is None:
            return super().forward(x, mask, dynchunktrain_config)
        out = self.bottleneck(self.layer_norm(x).transpose(1, 2))  # (B, D, T)
        out = out.masked_fill(mask.transpose(1, 2), 0.0)
        out = self.conv(out)
        if self.causal:
            out = out[..., : -self.padding]
        out = self.after_conv(out.transpose(1, 2))  # (B, T, D)
        return out.masked_fill(mask, 0.0)


class ConformerLayer(ConformerEncoderLayer):
    """SpeechBrain's Conformer layer with a given mixer in place of its self-attention.

    Arguments
    ---------
    d_model, d_ffn, nhead, kernel_size, activation, bias, dropout, causal
        As in ``speechbrain.lobes.models.transformer.Conformer.ConformerEncoderLayer``.
    mixer : nn.Module
        Token mixer with the call signature of SpeechBrain's attention modules.

    Example
    -------
    >>> layer = ConformerLayer(16, 32, 4, build_mixer("SummaryMixing", 16, 4), kernel_size=3)
    >>> layer(torch.randn(2, 5, 16))[0].shape
    torch.Size([2, 5, 16])
    """

    def __init__(
        self,
        d_model: int,
        d_ffn: int,
        nhead: int,
        mixer: nn.Module,
        kernel_size: int = 31,
        activation: type[nn.Module] = Swish,
        bias: bool = True,
        dropout: float = 0.0,
        causal: bool = False,
    ):
        # An attention type SpeechBrain does not know makes it build no attention module.
        super().__init__(
            d_model, d_ffn, nhead, kernel_size, activation=activation, bias=bias,
            dropout=dropout, causal=causal, attention_type="external",
        )
        self.mha_layer = mixer
        self.convolution_module = PaddingSafeConvolutionModule(
            d_model, kernel_size, bias, activation, dropout, causal=causal
        )


class TransformerLayer(TransformerEncoderLayer):
    """SpeechBrain's Transformer encoder layer with a given mixer in place of its attention.

    Example
    -------
    >>> layer = TransformerLayer(16, 32, 4, build_mixer("regularMHA", 16, 4))
    >>> layer(torch.randn(2, 5, 16))[0].shape
    torch.Size([2, 5, 16])
    """

    def __init__(
        self,
        d_model: int,
        d_ffn: int,
        nhead: int,
        mixer: nn.Module,
        activation: type[nn.Module] = nn.ReLU,
        dropout: float = 0.0,
        normalize_before: bool = True,
    ):
        super().__init__(
            d_ffn, nhead, d_model, dropout=dropout, activation=activation,
            normalize_before=normalize_before, attention_type="external",
        )
        self.self_att = mixer


class MixerEncoder(nn.Module):
    """A stack of layers with layer drop, optional activation checkpointing, a final layer norm
    and, on request, every layer's hidden state. Built by ``ConformerEncoder`` and
    ``TransformerEncoder``.

    Arguments
    ---------
    layers : sequence of nn.Module
        Layers called as ``layer(x, src_mask=, src_key_padding_mask=, pos_embs=)``.
    d_model : int
        Feature size ``D``.
    attention_type : str
        The layers' mixer type; ``RelPosMHAXL`` makes the encoder build relative positional
        embeddings when none are given.
    layerdrop_prob : float
        Probability of skipping each layer in training (a skipped layer passes its input on).
    output_hidden_states : bool
        Also return ``[input, layer 1 output, ..., layer L output]`` (before the final norm).
    activation_checkpointing : bool
        Recompute each layer in the backward pass instead of storing its activations.
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        d_model: int,
        attention_type: str,
        layerdrop_prob: float = 0.0,
        output_hidden_states: bool = False,
        activation_checkpointing: bool = False,
    ):
        super().__init__()
        if not 0.0 <= layerdrop_prob < 1.0:
            raise ValueError(f"expected layerdrop_prob in [0, 1), got {layerdrop_prob}")
        self.layers = nn.ModuleList(layers)
        self.norm = LayerNorm(d_model, eps=1e-6)
        self.attention_type = attention_type
        self.layerdrop_prob = layerdrop_prob
        self.output_hidden_states = output_hidden_states
        self.activation_checkpointing = activation_checkpointing
        self.relative_positions = RelPosEncXL(d_model) if attention_type == "RelPosMHAXL" else None

    def forward(
        self,
        src: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        pos_embs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list] | tuple[torch.Tensor, list, list[torch.Tensor]]:
        """Encode ``src``.

        Arguments
        ---------
        src : torch.Tensor
            ``(B, T, D)``.
        src_mask : torch.Tensor, optional
            ``(T, T)`` attention / summary mask (SpeechBrain convention).
        src_key_padding_mask : torch.Tensor, optional
            ``(B, T)``, ``True`` at padded frames.
        pos_embs : torch.Tensor, optional
            Relative positional embeddings ``(1, 2T - 1, D)`` for ``RelPosMHAXL``; computed
            when not given.

        Returns
        -------
        output : torch.Tensor
            ``(B, T, D)`` after the final layer norm.
        attentions : list
            Each layer's attention weights (``None`` for mixers without any).
        hidden_states : list of torch.Tensor
            Only with ``output_hidden_states``: ``L + 1`` tensors ``(B, T, D)``.
        """
        if src.dim() != 3 or src.shape[1] == 0:
            raise ValueError(f"expected src of shape (batch, time > 0, D), got {tuple(src.shape)}")
        if pos_embs is None and self.relative_positions is not None:
            pos_embs = self.relative_positions(src)  # (1, 2T - 1, D)
        keep = torch.ones(len(self.layers), dtype=torch.bool)
        if self.training and self.layerdrop_prob > 0.0:
            keep = torch.rand(len(self.layers)) >= self.layerdrop_prob

        output = src
        attentions: list = []
        hidden_states = [output]
        for layer, kept in zip(self.layers, keep.tolist(), strict=True):
            if kept:
                if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                    output, attention = checkpoint(
                        layer, output, src_mask, src_key_padding_mask, pos_embs,
                        use_reentrant=False,
                    )
                else:
                    output, attention = layer(
                        output, src_mask=src_mask, src_key_padding_mask=src_key_padding_mask,
                        pos_embs=pos_embs,
                    )
                attentions.append(attention)
            hidden_states.append(output)
        output = self.norm(output)
        if self.output_hidden_states:
            return output, attentions, hidden_states
        return output, attentions


class ConformerEncoder(RecordsArguments, MixerEncoder):
    """Conformer encoder (SpeechBrain layers) with a selectable token mixer.

    Arguments
    ---------
    num_layers, d_model, d_ffn, nhead, kernel_size, activation, bias, dropout, causal
        As in SpeechBrain's ``ConformerEncoder``.
    attention_type : str
        ``SummaryMixing``, ``regularMHA``, ``RelPosMHAXL`` or ``SDPA``.
    summary_options : mapping, optional
        SummaryMixing's options (``mode``, ``local_proj_hid_dim``, ``local_proj_out_dim``,
        ``summary_hid_dim``, ``summary_out_dim``, ``activation``, ``use_layernorm``,
        ``summary_dropout``; see ``summarymixing.SummaryMixing``), used only when
        ``attention_type`` is ``SummaryMixing``. The cell's dropout is ``dropout``; its
        ``activation`` defaults to the layers' (Swish), as in the authors' Conformer.
    layerdrop_prob, output_hidden_states, activation_checkpointing
        See ``MixerEncoder``.

    Example
    -------
    >>> encoder = ConformerEncoder(2, 16, 32, 4, kernel_size=3, output_hidden_states=True,
    ...                            summary_options={"local_proj_hid_dim": [16]})
    >>> out, _, hidden = encoder(torch.randn(3, 10, 16))
    >>> out.shape, len(hidden)
    (torch.Size([3, 10, 16]), 3)
    """

    TRAINING_OPTIONS = (
        "dropout", "layerdrop_prob", "activation_checkpointing", "summary_options.summary_dropout"
    )

    def __init__(
        self,
        num_layers: int,
        d_model: int,
        d_ffn: int,
        nhead: int,
        kernel_size: int = 31,
        activation: type[nn.Module] = Swish,
        bias: bool = True,
        dropout: float = 0.0,
        causal: bool = False,
        attention_type: str = "SummaryMixing",
        summary_options: Mapping[str, Any] | None = None,
        layerdrop_prob: float = 0.0,
        output_hidden_states: bool = False,
        activation_checkpointing: bool = False,
    ):
        self.init_arguments["summary_options"] = summary_mixing_options(summary_options)
        layers = [
            ConformerLayer(
                d_model, d_ffn, nhead,
                build_mixer(
                    attention_type, d_model, nhead, dropout=dropout, causal=causal,
                    activation=activation, summary_options=summary_options,
                ),
                kernel_size=kernel_size, activation=activation, bias=bias, dropout=dropout,
                causal=causal,
            )
            for _ in range(num_layers)
        ]
        super().__init__(
            layers, d_model, attention_type, layerdrop_prob, output_hidden_states,
            activation_checkpointing,
        )


class TransformerEncoder(RecordsArguments, MixerEncoder):
    """Transformer encoder (SpeechBrain layers, pre-norm by default) with a selectable mixer.

    Arguments are those of ``ConformerEncoder`` without the convolution options, plus
    ``normalize_before`` (pre-norm layers); SummaryMixing's activation defaults to the layers'
    ``activation`` (ReLU by default).

    Example
    -------
    >>> encoder = TransformerEncoder(2, 16, 32, 4, attention_type="regularMHA")
    >>> encoder(torch.randn(3, 10, 16))[0].shape
    torch.Size([3, 10, 16])
    """

    TRAINING_OPTIONS = ConformerEncoder.TRAINING_OPTIONS

    def __init__(
        self,
        num_layers: int,
        d_model: int,
        d_ffn: int,
        nhead: int,
        activation: type[nn.Module] = nn.ReLU,
        dropout: float = 0.0,
        normalize_before: bool = True,
        attention_type: str = "SummaryMixing",
        summary_options: Mapping[str, Any] | None = None,
        layerdrop_prob: float = 0.0,
        output_hidden_states: bool = False,
        activation_checkpointing: bool = False,
    ):
        self.init_arguments["summary_options"] = summary_mixing_options(summary_options)
        layers = [
            TransformerLayer(
                d_model, d_ffn, nhead,
                build_mixer(
                    attention_type, d_model, nhead, dropout=dropout, activation=activation,
                    summary_options=summary_options,
                ),
                activation=activation, dropout=dropout, normalize_before=normalize_before,
            )
            for _ in range(num_layers)
        ]
        super().__init__(
            layers, d_model, attention_type, layerdrop_prob, output_hidden_states,
            activation_checkpointing,
        )
