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

Encoders have SpeechBrain's encoder interface: ``forward(src, src_mask=None,
src_key_padding_mask=None, pos_embs=None, dynchunktrain_config=None)`` (``True`` = padding)
returning ``(output, attentions)``, and, when built with ``output_hidden_states=True``,
``(output, attentions, hidden_states)`` (SpeechBrain's ``TransformerASR`` unpacks two values: build
its encoders with ``output_hidden_states=False``, the default). Dynamic Chunk Training
(``dynchunktrain_config``) restricts every mixer to the frame's chunk and its left context
(SummaryMixing in ``O(T)``, attention through SpeechBrain's chunk mask) and chunks the
convolutions, so that no output depends on a later chunk; ``make_streaming_context`` and
``forward_streaming`` then encode a stream chunk by chunk with the same result.
SummaryMixing's streaming state is the sum and count of ``s(x_t)`` over its left context
(constant size), attention's the left-context frames, a convolution's its last input frames.

``BranchformerEncoder`` (``summarymixing.branchformer``) builds on the same stack.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from speechbrain.lobes.models.transformer.Conformer import (
    ConformerEncoderLayer,
    ConvolutionModule,
)
from speechbrain.lobes.models.transformer.Transformer import TransformerEncoderLayer
from speechbrain.lobes.models.transformer.TransformerASR import make_transformer_src_mask
from speechbrain.nnet.activations import Swish
from speechbrain.nnet.attention import MultiheadAttention, RelPosEncXL
from speechbrain.nnet.normalization import LayerNorm
from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig
from torch import nn
from torch.utils.checkpoint import checkpoint

from summarymixing.architecture import RecordsArguments
from summarymixing.cell import SummaryMixing, SummaryStreamingState, check_chunk_config
from summarymixing.mixers import build_mixer, summary_mixing_options

CAUSAL_SUMMARY = DynChunkTrainConfig(chunk_size=1, left_context_size=None)


class PaddingSafeConvolutionModule(ConvolutionModule):
    """SpeechBrain's Conformer convolution module, with padded frames zeroed *before* the
    depthwise convolution, also in Dynamic Chunk Convolution.

    SpeechBrain masks only the module's output, so the convolution reads the padded frames of
    a batch and the last ``kernel_size // 2`` valid frames change with the amount of padding.
    Zeroing them at the convolution's input makes a padded utterance see exactly the zeros an
    unpadded one sees. With ``dynchunktrain_config`` each chunk is convolved with its
    ``kernel_size // 2`` left frames and zeros on its right (Dynamic Chunk Convolution, as
    SpeechBrain's module does), so no output reads a later chunk.

    Example
    -------
    >>> conv = PaddingSafeConvolutionModule(8, kernel_size=3)
    >>> conv(torch.randn(2, 5, 8), torch.zeros(2, 5, 1, dtype=torch.bool)).shape
    torch.Size([2, 5, 8])
    >>> conv(torch.randn(2, 5, 8), dynchunktrain_config=DynChunkTrainConfig(2)).shape
    torch.Size([2, 5, 8])
    """

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        dynchunktrain_config: DynChunkTrainConfig | None = None,
    ) -> torch.Tensor:
        """``x``: ``(B, T, D)``; ``mask``: ``(B, T, 1)``, ``True`` at padded frames;
        ``dynchunktrain_config``: chunked convolution (not with ``causal`` or dilation)."""
        if dynchunktrain_config is not None and (self.causal or self.dilation != 1):
            raise ValueError(
                "Dynamic Chunk Convolution needs a non-causal convolution without dilation "
                f"(causal={self.causal}, dilation={self.dilation})"
            )
        out = self.bottleneck(self.layer_norm(x).transpose(1, 2))  # (B, D, T)
        if mask is not None:
            out = out.masked_fill(mask.transpose(1, 2), 0.0)
        if dynchunktrain_config is not None:
            out = self._chunked_convolution(out, dynchunktrain_config.chunk_size)
        else:
            out = self.conv(out)
            if self.causal and self.padding > 0:
                out = out[..., : -self.padding]
        out = self.after_conv(out.transpose(1, 2))  # (B, T, D)
        return out if mask is None else out.masked_fill(mask, 0.0)

    def _chunked_convolution(self, x: torch.Tensor, chunk_size: int) -> torch.Tensor:
        """Depthwise convolution of ``x`` ``(B, D, T)`` chunk by chunk: each chunk with its
        ``padding`` left frames (zeros before the first) and ``padding`` zeros on its right."""
        batch, channels, time = x.shape
        chunks = -(-time // chunk_size)
        half = self.padding
        padded = F.pad(x, (half, chunks * chunk_size - time))  # (B, D, half + N * C)
        windows = padded.unfold(2, chunk_size + half, chunk_size)  # (B, D, N, half + C)
        windows = F.pad(windows, (0, half))  # (B, D, N, half + C + half): the future is zero
        windows = windows.transpose(1, 2).reshape(batch * chunks, channels, -1)
        out = F.conv1d(
            windows, self.conv.weight, self.conv.bias, groups=self.conv.groups
        )  # (B * N, D, C)
        out = out.unflatten(0, (batch, chunks)).permute(0, 2, 1, 3).flatten(2)  # (B, D, N * C)
        return out[..., :time]


@dataclass
class MixerLayerStreamingContext:
    """Streaming state of one layer (SpeechBrain's ``ConformerEncoderLayerStreamingContext``
    with SummaryMixing's state added)."""

    mha_left_context_size: int | None
    """Attention mixers: frames of left context kept (``None``: all of them)."""

    mha_left_context: torch.Tensor | None = None
    """Attention mixers: the mixer inputs ``(B, <= mha_left_context_size, D)`` of the left
    context."""

    summary_state: SummaryStreamingState | None = None
    """SummaryMixing: sums and counts of ``s(x_t)`` over the left context."""

    dcconv_left_context: torch.Tensor | None = None
    """The convolution's last input frames (its ``kernel_size // 2`` left context)."""

    frames_seen: int = 0
    """Frames of the stream already encoded by this layer."""


@dataclass
class MixerEncoderStreamingContext:
    """Streaming state of an encoder (as SpeechBrain's ``ConformerEncoderStreamingContext``)."""

    dynchunktrain_config: DynChunkTrainConfig
    """Chunk size and left context."""

    layers: list[MixerLayerStreamingContext]
    """One context per layer."""

    ended: bool = False
    """A chunk shorter than the chunk size was encoded: it must have been the last."""


def mix(
    mixer: nn.Module,
    x: torch.Tensor,
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    pos_embs: torch.Tensor | None,
    summary_chunks: DynChunkTrainConfig | None,
) -> tuple[torch.Tensor, Any]:
    """Call ``mixer`` on ``x`` ``(B, T, D)``; SummaryMixing also gets ``summary_chunks`` (its
    ``O(T)`` chunked or causal summaries)."""
    if isinstance(mixer, SummaryMixing):
        return mixer(
            x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
            dynchunktrain_config=summary_chunks,
        )
    if summary_chunks is not None:
        raise ValueError("summary_chunks is for SummaryMixing; attention takes attn_mask")
    if isinstance(mixer, MultiheadAttention) and attn_mask is not None and (
        key_padding_mask is not None
    ):
        attn_mask = per_utterance_mask(
            attn_mask, key_padding_mask, mixer.att.num_heads
        ).to(x.dtype)
        key_padding_mask = None
    return mixer(
        x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, pos_embs=pos_embs
    )


def per_utterance_mask(
    attn_mask: torch.Tensor, key_padding_mask: torch.Tensor, num_heads: int
) -> torch.Tensor:
    """``attn_mask`` ``(T, T)`` and ``key_padding_mask`` ``(B, T)`` as one additive mask
    ``(B * num_heads, T, T)`` in which a padded frame that would see no frame at all (a chunk
    past the end of its utterance) sees itself: ``torch.nn.MultiheadAttention`` gives such rows
    NaN, whose gradient would reach the weights. Valid frames see what they saw.

    Example
    -------
    >>> chunk_mask = torch.tensor([[False, True], [True, False]])  # chunks of 1, no left context
    >>> per_utterance_mask(chunk_mask, torch.tensor([[False, True]]), 1)
    tensor([[[0., -inf],
             [-inf, 0.]]])
    """
    if attn_mask.dtype == torch.bool:
        additive = torch.zeros(attn_mask.shape, device=attn_mask.device).masked_fill(
            attn_mask, float("-inf")
        )
    else:
        additive = attn_mask
    padding = key_padding_mask.bool().to(additive.device)
    combined = additive.unsqueeze(0).masked_fill(padding.unsqueeze(1), float("-inf"))  # (B, T, T)
    blind = torch.isneginf(combined).all(dim=-1)  # (B, T): rows that see nothing
    if blind.any():
        own = torch.eye(combined.shape[-1], dtype=torch.bool, device=combined.device)
        combined = combined.masked_fill(blind.unsqueeze(-1) & own, 0.0)
    return combined.repeat_interleave(num_heads, dim=0)


def mix_streaming(
    mixer: nn.Module,
    x: torch.Tensor,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    context: MixerLayerStreamingContext,
    pos_embs: torch.Tensor | None,
    relative_positions: nn.Module | None,
) -> torch.Tensor:
    """The mixer's output ``(B, C, D)`` for the chunk ``x`` ``(B, C, D)`` of a stream:
    SummaryMixing from its summary state, attention over the kept left-context inputs and
    the chunk (whose inputs are then kept). ``prepare`` is the per-frame step before the
    mixer (a layer norm); ``pos_embs`` (relative positions of left context + chunk), when not
    given, are computed by ``relative_positions``."""
    inputs = prepare(x)
    if isinstance(mixer, SummaryMixing):
        return mixer.forward_streaming(inputs, context.summary_state)
    if context.mha_left_context is not None:
        inputs = torch.cat([context.mha_left_context, inputs], dim=1)
    keep = context.mha_left_context_size
    if keep is None:
        context.mha_left_context = inputs
    else:
        context.mha_left_context = inputs[:, max(0, inputs.shape[1] - keep) :] if keep else None
    if pos_embs is None and relative_positions is not None:
        pos_embs = relative_positions(inputs)  # (1, 2 (left + C) - 1, D)
    out, _ = mixer(inputs, inputs, inputs, pos_embs=pos_embs)
    return out[:, -x.shape[1] :]


def make_layer_context(
    mixer: nn.Module, dynchunktrain_config: DynChunkTrainConfig
) -> MixerLayerStreamingContext:
    """A blank streaming context for a layer whose mixer is ``mixer``."""
    if isinstance(mixer, SummaryMixing):
        return MixerLayerStreamingContext(
            mha_left_context_size=0, summary_state=mixer.make_streaming_state(dynchunktrain_config)
        )
    return MixerLayerStreamingContext(dynchunktrain_config.left_context_size_frames())


class ConformerLayer(ConformerEncoderLayer):
    """SpeechBrain's Conformer layer with a given mixer in place of its self-attention, a
    padding-exact (chunked) convolution, and streaming for every mixer.

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

    @property
    def mixer(self) -> nn.Module:
        """The token mixer."""
        return self.mha_layer

    def forward(
        self,
        x: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        pos_embs: torch.Tensor | None = None,
        dynchunktrain_config: DynChunkTrainConfig | None = None,
        summary_chunks: DynChunkTrainConfig | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """SpeechBrain's Conformer layer: ``x`` ``(B, T, D)``; ``src_mask`` for the mixer;
        ``dynchunktrain_config`` chunks the convolution; ``summary_chunks``: SummaryMixing's
        ``O(T)`` chunked summaries (set by the encoder). Returns ``(output, attention)``."""
        conv_mask = None if src_key_padding_mask is None else src_key_padding_mask.unsqueeze(-1)
        x = x + 0.5 * self.ffn_module1(x)
        mixed, attention = mix(
            self.mha_layer, self.norm1(x), src_mask, src_key_padding_mask, pos_embs,
            summary_chunks,
        )
        x = x + mixed
        x = x + self.convolution_module(x, conv_mask, dynchunktrain_config=dynchunktrain_config)
        return self.norm2(x + 0.5 * self.ffn_module2(x)), attention

    def forward_streaming(
        self,
        x: torch.Tensor,
        context: MixerLayerStreamingContext,
        pos_embs: torch.Tensor | None = None,
        relative_positions: nn.Module | None = None,
    ) -> tuple[torch.Tensor, None]:
        """The layer's output for the next chunk ``x`` ``(B, C, D)`` of a stream (``context``
        updated in place)."""
        x = x + 0.5 * self.ffn_module1(x)
        x = x + mix_streaming(
            self.mha_layer, x, self.norm1, context, pos_embs, relative_positions
        )
        half = self.convolution_module.padding
        conv_input = x
        if context.dcconv_left_context is not None:
            conv_input = torch.cat([context.dcconv_left_context, x], dim=1)
        context.dcconv_left_context = conv_input[:, -half:] if half > 0 else None
        x = x + self.convolution_module(conv_input)[:, -x.shape[1] :]
        context.frames_seen += x.shape[1]
        return self.norm2(x + 0.5 * self.ffn_module2(x)), None


class TransformerLayer(TransformerEncoderLayer):
    """SpeechBrain's Transformer encoder layer with a given mixer in place of its attention,
    and streaming for every mixer.

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

    @property
    def mixer(self) -> nn.Module:
        """The token mixer."""
        return self.self_att

    def forward(
        self,
        src: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        pos_embs: torch.Tensor | None = None,
        dynchunktrain_config: DynChunkTrainConfig | None = None,
        summary_chunks: DynChunkTrainConfig | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """SpeechBrain's Transformer layer (pre- or post-norm); the arguments are
        ``ConformerLayer``'s (``dynchunktrain_config`` has nothing to chunk here: the chunk
        structure reaches the mixer as ``src_mask`` or ``summary_chunks``)."""
        mixed, attention = mix(
            self.self_att, self.norm1(src) if self.normalize_before else src, src_mask,
            src_key_padding_mask, pos_embs, summary_chunks,
        )
        return self._after_mixer(src, mixed), attention

    def forward_streaming(
        self,
        src: torch.Tensor,
        context: MixerLayerStreamingContext,
        pos_embs: torch.Tensor | None = None,
        relative_positions: nn.Module | None = None,
    ) -> tuple[torch.Tensor, None]:
        """The layer's output for the next chunk ``src`` ``(B, C, D)`` of a stream."""
        prepare = self.norm1 if self.normalize_before else nn.Identity()
        mixed = mix_streaming(self.self_att, src, prepare, context, pos_embs, relative_positions)
        context.frames_seen += src.shape[1]
        return self._after_mixer(src, mixed), None

    def _after_mixer(self, src: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
        src = src + self.dropout1(mixed)
        if not self.normalize_before:
            src = self.norm1(src)
        feed = self.pos_ffn(self.norm2(src) if self.normalize_before else src)
        output = src + self.dropout2(feed)
        return output if self.normalize_before else self.norm2(output)


class MixerEncoder(nn.Module):
    """A stack of layers with layer drop, optional activation checkpointing, a final layer norm,
    on request every layer's hidden state, Dynamic Chunk Training and streaming. Built by
    ``ConformerEncoder``, ``TransformerEncoder`` and ``BranchformerEncoder``.

    Arguments
    ---------
    layers : sequence of nn.Module
        Layers called as ``layer(x, src_mask=, src_key_padding_mask=, pos_embs=,
        dynchunktrain_config=, summary_chunks=)`` and ``layer.forward_streaming(x, context,
        pos_embs, relative_positions)``, with their token mixer as property ``mixer``.
    d_model : int
        Feature size ``D``.
    attention_type : str
        The layers' mixer type; ``RelPosMHAXL`` makes the encoder build relative positional
        embeddings when none are given.
    layerdrop_prob : float
        Probability of skipping each layer in training (a skipped layer passes its input on).
    output_hidden_states : bool
        Also return ``[input, layer 1 output, ..., layer L output]`` (before the final norm).
        SpeechBrain's ``TransformerASR`` expects two return values: keep ``False`` there.
    activation_checkpointing : bool
        Recompute each layer in the backward pass instead of storing its activations.
    causal : bool
        The layers are causal (Dynamic Chunk Training and streaming are then refused, as
        SpeechBrain refuses them).
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        d_model: int,
        attention_type: str,
        layerdrop_prob: float = 0.0,
        output_hidden_states: bool = False,
        activation_checkpointing: bool = False,
        causal: bool = False,
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
        self.causal = causal
        self.relative_positions = RelPosEncXL(d_model) if attention_type == "RelPosMHAXL" else None

    def forward(
        self,
        src: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        pos_embs: torch.Tensor | None = None,
        dynchunktrain_config: DynChunkTrainConfig | None = None,
    ) -> tuple[torch.Tensor, list] | tuple[torch.Tensor, list, list[torch.Tensor]]:
        """Encode ``src``.

        Arguments
        ---------
        src : torch.Tensor
            ``(B, T, D)``.
        src_mask : torch.Tensor, optional
            ``(T, T)`` attention / summary mask (SpeechBrain convention). SummaryMixing turns
            the causal mask (``get_lookahead_mask``) into ``O(T)`` causal summaries and uses
            any other mask as given (``O(T^2)``).
        src_key_padding_mask : torch.Tensor, optional
            ``(B, T)``, ``True`` at padded frames.
        pos_embs : torch.Tensor, optional
            Relative positional embeddings ``(1, 2T - 1, D)`` for ``RelPosMHAXL``; computed
            when not given.
        dynchunktrain_config : DynChunkTrainConfig, optional
            Dynamic Chunk Training: frame ``t`` of chunk ``n = t // chunk_size`` sees chunks
            ``n - left_context_size .. n`` (all previous ones when ``None``) in every mixer
            (attention: SpeechBrain's ``make_transformer_src_mask``, built when ``src_mask`` is
            not given; SummaryMixing: chunked summaries in ``O(T)``, and a ``src_mask`` given as
            well must be that chunk mask), and convolutions are chunked.

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
        src_mask, summary_chunks = self._mixer_masks(src, src_mask, dynchunktrain_config)
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
                        dynchunktrain_config, summary_chunks, use_reentrant=False,
                    )
                else:
                    output, attention = layer(
                        output, src_mask=src_mask, src_key_padding_mask=src_key_padding_mask,
                        pos_embs=pos_embs, dynchunktrain_config=dynchunktrain_config,
                        summary_chunks=summary_chunks,
                    )
                attentions.append(attention)
            hidden_states.append(output)
        output = self.norm(output)
        if self.output_hidden_states:
            return output, attentions, hidden_states
        return output, attentions

    def _mixer_masks(
        self,
        src: torch.Tensor,
        src_mask: torch.Tensor | None,
        dynchunktrain_config: DynChunkTrainConfig | None,
    ) -> tuple[torch.Tensor | None, DynChunkTrainConfig | None]:
        """``(src_mask for the mixers, SummaryMixing's O(T) summary chunks)``."""
        if dynchunktrain_config is not None:
            check_chunk_config(dynchunktrain_config)
            if self.causal:
                raise ValueError(
                    "expected a non-causal encoder with dynchunktrain_config (Dynamic Chunk "
                    "Training and causal are exclusive, as in SpeechBrain), got causal=True"
                )
        if self.attention_type != "SummaryMixing":
            if dynchunktrain_config is not None and src_mask is None:
                src_mask = make_transformer_src_mask(src, dynchunktrain_config=dynchunktrain_config)
            return src_mask, None
        if dynchunktrain_config is not None:
            if src_mask is not None and not _same_mask(
                src_mask, make_transformer_src_mask(src, dynchunktrain_config=dynchunktrain_config)
            ):
                raise ValueError(
                    "expected src_mask to be the chunk mask of dynchunktrain_config "
                    f"{dynchunktrain_config} (make_transformer_src_mask) or None"
                )
            return None, dynchunktrain_config
        if src_mask is not None:
            time = src.shape[1]
            causal = torch.ones(time, time, dtype=torch.bool, device=src_mask.device).triu(1)
            if _same_mask(src_mask, causal):
                return None, CAUSAL_SUMMARY
        return src_mask, None

    def make_streaming_context(
        self, dynchunktrain_config: DynChunkTrainConfig
    ) -> MixerEncoderStreamingContext:
        """A blank streaming context for :meth:`forward_streaming`.

        Arguments
        ---------
        dynchunktrain_config : DynChunkTrainConfig
            Chunk size (frames) and left context (chunks; ``None``: unlimited, which
            SummaryMixing keeps in constant memory and attention by keeping every frame), as
            used in training.

        Returns
        -------
        MixerEncoderStreamingContext
        """
        check_chunk_config(dynchunktrain_config)
        if self.causal:
            raise ValueError("streaming is Dynamic Chunk Training's: expected causal=False")
        return MixerEncoderStreamingContext(
            dynchunktrain_config=dynchunktrain_config,
            layers=[
                make_layer_context(layer.mixer, dynchunktrain_config) for layer in self.layers
            ],
        )

    def forward_streaming(
        self,
        src: torch.Tensor,
        context: MixerEncoderStreamingContext,
        pos_embs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list]:
        """Encode the next chunk of a stream: the outputs ``forward`` gives these frames with
        the context's ``dynchunktrain_config`` (evaluation mode).

        Arguments
        ---------
        src : torch.Tensor
            The chunk ``(B, C, D)``: ``chunk_size`` frames, the last chunk of a stream may be
            shorter. No padding (batching needs streams of equal length).
        context : MixerEncoderStreamingContext
            From :meth:`make_streaming_context`; updated in place.
        pos_embs : torch.Tensor, optional
            ``RelPosMHAXL``: relative positional embeddings for the left context and the
            chunk (as ``TransformerASR.encode_streaming`` gives); computed when not given.

        Returns
        -------
        output : torch.Tensor
            ``(B, C, D)``.
        attentions : list
            ``None`` per layer.
        """
        chunk_size = context.dynchunktrain_config.chunk_size
        if src.dim() != 3 or not 0 < src.shape[1] <= chunk_size:
            raise ValueError(
                f"expected a chunk of shape (batch, 1 .. {chunk_size}, D), got {tuple(src.shape)}"
            )
        if context.ended:
            raise ValueError(
                "a chunk shorter than chunk_size ends a stream: make a new streaming context"
            )
        context.ended = src.shape[1] < chunk_size
        output = src
        for layer, layer_context in zip(self.layers, context.layers, strict=True):
            output, _ = layer.forward_streaming(
                output, layer_context, pos_embs, self.relative_positions
            )
        return self.norm(output), [None] * len(self.layers)


def _same_mask(mask: torch.Tensor, excluded: torch.Tensor) -> bool:
    """Whether ``mask`` (boolean ``True`` = excluded, or additive float ``-inf`` = excluded)
    excludes exactly ``excluded`` ``(T, T)``."""
    if tuple(mask.shape) != tuple(excluded.shape):
        return False
    mask_excluded = mask if mask.dtype == torch.bool else torch.isneginf(mask)
    return bool(torch.equal(mask_excluded.to(excluded.device), excluded))


class ConformerEncoder(RecordsArguments, MixerEncoder):
    """Conformer encoder (SpeechBrain layers) with a selectable token mixer.

    Arguments
    ---------
    num_layers, d_model, d_ffn, nhead, kernel_size, activation, bias, dropout, causal
        As in SpeechBrain's ``ConformerEncoder`` (``causal``: causal convolutions and, for
        ``RelPosMHAXL``, masked future positions; the other mixers, as in SpeechBrain, take
        the causal mask as ``src_mask``, which SummaryMixing computes in ``O(T)``).
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

    Dynamic Chunk Training, then streaming chunk by chunk with the same result:

    >>> encoder = ConformerEncoder(2, 16, 32, 4, kernel_size=3).eval()
    >>> x = torch.randn(1, 8, 16)
    >>> config = DynChunkTrainConfig(chunk_size=4, left_context_size=1)
    >>> chunked, _ = encoder(x, dynchunktrain_config=config)
    >>> context = encoder.make_streaming_context(config)
    >>> first, _ = encoder.forward_streaming(x[:, :4], context)
    >>> second, _ = encoder.forward_streaming(x[:, 4:], context)
    >>> torch.allclose(torch.cat([first, second], dim=1), chunked, atol=1e-5)
    True
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
            activation_checkpointing, causal,
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
