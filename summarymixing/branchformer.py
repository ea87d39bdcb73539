"""Branchformer encoder whose token mixer is chosen by one argument (SummaryMixing's best ASR
encoder in the paper).

The layer is SpeechBrain's ``BranchformerEncoderLayer`` (a mixer branch and a convolutional
gating MLP branch, cgMLP, merged), subclassed to receive the mixer built here. With
SummaryMixing the merge is, as in the authors' published model, an MLP over the concatenation
``[mixer output; cgMLP output]`` (``2 d_model`` inputs): one (linear, activation) block per
size of ``summary_hid_dim`` (default ``[d_model]``) and a last (linear to ``d_model``,
activation) block; attention keeps SpeechBrain's single linear merge::

    encoder: !new:summarymixing.BranchformerEncoder
        num_layers: 18
        d_model: 512
        nhead: 1
        kernel_size: 31
        csgu_linear_units: 3072
        activation: !name:torch.nn.GELU
        dropout: 0.1
        attention_type: SummaryMixing   # or regularMHA, RelPosMHAXL, SDPA

Unlike SpeechBrain's layer, the cgMLP's depthwise convolution is padding-exact (a padded
utterance's last frames are reflected from its own frames, as when it is alone) and, with
Dynamic Chunk Training, chunked: every chunk is convolved with its real left frames and, on its
right, the reflection SpeechBrain's ``"same"`` padding gives at a sequence end, so no output
reads a later chunk. Without padding or chunks it is SpeechBrain's convolution exactly.
Streaming (``forward_streaming``) keeps the convolution's ``kernel_size // 2`` last inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from speechbrain.lobes.models.convolution import ConvolutionalSpatialGatingUnit
from speechbrain.lobes.models.transformer.Branchformer import (
    BranchformerEncoderLayer,
    ConvolutionBranch,
)
from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig
from torch import nn

from summarymixing.architecture import RecordsArguments
from summarymixing.cell import SummaryMixing
from summarymixing.encoders import (
    MixerEncoder,
    MixerLayerStreamingContext,
    mix,
    mix_streaming,
)
from summarymixing.mixers import build_mixer, summary_mixing_options


def reflect_window_indices(
    time: int,
    lengths: torch.Tensor,
    chunk_size: int,
    half: int,
    history: int = 0,
    given_history: int = 0,
) -> torch.Tensor:
    """Source frames of a depthwise convolution (kernel ``2 half + 1``) over chunks, with
    reflection at every chunk's end and at the stream's start.

    Output frame ``t`` (of chunk ``n = t // chunk_size``) reads frames ``u = t - half .. t +
    half``; a frame at or after ``end = min((n + 1) chunk_size, length)`` is replaced by its
    reflection ``2 (end - 1) - u``, one before the stream's start by ``-u`` (SpeechBrain's
    reflect padding at both ends of a sequence), and the result is clamped to ``[0, end - 1]``
    (very short sequences).

    Arguments
    ---------
    time : int
        Output frames ``T`` (the chunk, when streaming).
    lengths : torch.Tensor
        ``(B,)`` valid frames of each sequence (counted from the first output frame).
    chunk_size : int
        Chunk size ``C`` (``time`` for one chunk).
    half : int
        Half the kernel size.
    history : int
        Frames of the stream before the first output frame (streaming).
    given_history : int
        How many of them (the last ones, at most ``half``) the input holds before the output
        frames.

    Returns
    -------
    torch.Tensor
        ``(B, N, C + 2 half)`` indices into the input (``given_history`` frames, then the
        output frames), ``N = ceil(T / C)``.

    Example
    -------
    >>> reflect_window_indices(4, torch.tensor([4]), chunk_size=2, half=1)[0].tolist()
    [[1, 0, 1, 0], [1, 2, 3, 2]]
    """
    chunks = -(-time // chunk_size)
    device = lengths.device
    starts = torch.arange(chunks, device=device) * chunk_size  # (N,)
    offsets = torch.arange(chunk_size + 2 * half, device=device) - half  # (W,)
    positions = starts[:, None] + offsets[None, :]  # (N, W) relative to the first output
    ends = torch.minimum(starts[None, :] + chunk_size, lengths[:, None])  # (B, N)
    ends = ends[:, :, None]  # (B, N, 1)
    source = positions[None].expand(len(lengths), -1, -1) + history  # absolute positions
    ends = ends + history
    source = torch.where(source >= ends, 2 * (ends - 1) - source, source)
    source = source.abs()
    source = torch.minimum(source, ends - 1).clamp(min=0)
    return source - (history - given_history)


class ChunkedSpatialGatingUnit(ConvolutionalSpatialGatingUnit):
    """SpeechBrain's convolutional spatial gating unit with a padding-exact, chunkable
    depthwise convolution (see :func:`reflect_window_indices`); same weights and, without
    padding or chunks, the same output.

    Example
    -------
    >>> unit = ChunkedSpatialGatingUnit(8, kernel_size=3)
    >>> unit(torch.randn(2, 5, 8), dynchunktrain_config=DynChunkTrainConfig(2)).shape
    torch.Size([2, 5, 4])
    """

    def __init__(
        self,
        input_size: int,
        kernel_size: int = 31,
        dropout: float = 0.0,
        use_linear_after_conv: bool = False,
        activation: type[nn.Module] = nn.Identity,
    ):
        super().__init__(input_size, kernel_size, dropout, use_linear_after_conv, activation)
        self.half = kernel_size // 2

    def forward(
        self,
        x: torch.Tensor,
        padding: torch.Tensor | None = None,
        dynchunktrain_config: DynChunkTrainConfig | None = None,
    ) -> torch.Tensor:
        """``x`` ``(B, T, D)``, ``padding`` ``(B, T)`` (``True`` = padded), optional chunks;
        returns ``(B, T, D / 2)``."""
        batch, time, _ = x.shape
        lengths = (
            torch.full((batch,), time, device=x.device)
            if padding is None else (~padding).sum(dim=1)
        )
        chunk_size = time if dynchunktrain_config is None else dynchunktrain_config.chunk_size
        gate, values = x.chunk(2, dim=-1)
        values = self.norm(values)
        indices = reflect_window_indices(time, lengths, chunk_size, self.half)
        return self._gate(gate, self._convolve(values, indices, time))

    def forward_streaming(
        self, x: torch.Tensor, context: MixerLayerStreamingContext
    ) -> torch.Tensor:
        """The output for the next chunk ``x`` ``(B, C, D)`` of a stream; the convolution's
        last ``kernel_size // 2`` inputs are kept in ``context.dcconv_left_context``."""
        batch, time, _ = x.shape
        gate, values = x.chunk(2, dim=-1)
        values = self.norm(values)
        left = context.dcconv_left_context
        given = 0 if left is None else left.shape[1]
        inputs = values if left is None else torch.cat([left, values], dim=1)
        context.dcconv_left_context = inputs[:, inputs.shape[1] - min(self.half, inputs.shape[1]) :]
        lengths = torch.full((batch,), time, device=x.device)
        indices = reflect_window_indices(
            time, lengths, time, self.half, history=context.frames_seen, given_history=given
        )
        return self._gate(gate, self._convolve(inputs, indices, time))

    def _convolve(self, values: torch.Tensor, indices: torch.Tensor, time: int) -> torch.Tensor:
        """Depthwise convolution of the windows ``indices`` ``(B, N, W)`` of ``values``
        ``(B, T', D')``: ``(B, T, D')``."""
        batch, chunks, width = indices.shape
        channels = values.shape[-1]
        flat = indices.reshape(batch, chunks * width, 1).expand(-1, -1, channels)
        windows = values.gather(1, flat).view(batch * chunks, width, channels)
        conv = self.conv.conv
        out = F.conv1d(
            windows.transpose(1, 2), conv.weight, conv.bias, groups=conv.groups
        )  # (B * N, D', C)
        return out.transpose(1, 2).reshape(batch, -1, channels)[:, :time]

    def _gate(self, gate: torch.Tensor, convolved: torch.Tensor) -> torch.Tensor:
        if self.use_linear_after_conv:
            convolved = self.linear(convolved)
        return self.dropout(self.activation(convolved) * gate)


class ChunkedConvolutionBranch(ConvolutionBranch):
    """SpeechBrain's Branchformer convolution branch (cgMLP) with a
    :class:`ChunkedSpatialGatingUnit`.

    Example
    -------
    >>> branch = ChunkedConvolutionBranch(8, linear_units=16, kernel_size=3)
    >>> branch(torch.randn(2, 5, 8)).shape
    torch.Size([2, 5, 8])
    """

    def __init__(
        self,
        input_size: int,
        linear_units: int = 3072,
        kernel_size: int = 31,
        activation: type[nn.Module] = nn.GELU,
        gate_activation: type[nn.Module] = nn.Identity,
        dropout: float = 0.0,
        use_linear_after_conv: bool = False,
    ):
        super().__init__(
            input_size, linear_units, kernel_size, activation, gate_activation, dropout,
            use_linear_after_conv,
        )
        self.csgu = ChunkedSpatialGatingUnit(
            linear_units, kernel_size, dropout, use_linear_after_conv, gate_activation
        )

    def forward(
        self,
        x: torch.Tensor,
        padding: torch.Tensor | None = None,
        dynchunktrain_config: DynChunkTrainConfig | None = None,
    ) -> torch.Tensor:
        """``x`` ``(B, T, D)`` -> ``(B, T, D)``; see :class:`ChunkedSpatialGatingUnit`."""
        hidden = self.activation(self.pre_channel_proj(x))
        return self.post_channel_proj(self.csgu(hidden, padding, dynchunktrain_config))

    def forward_streaming(
        self, x: torch.Tensor, context: MixerLayerStreamingContext
    ) -> torch.Tensor:
        """The output for the next chunk ``x`` ``(B, C, D)`` of a stream."""
        hidden = self.activation(self.pre_channel_proj(x))
        return self.post_channel_proj(self.csgu.forward_streaming(hidden, context))


def merge_mlp(
    d_model: int, hidden_dims: Sequence[int], activation: type[nn.Module]
) -> nn.Sequential:
    """The SummaryMixing Branchformer's merge: (linear, activation) blocks
    ``2 d_model -> hidden_dims... -> d_model``.

    Example
    -------
    >>> merge_mlp(8, [16], nn.GELU)
    Sequential(
      (0): Linear(in_features=16, out_features=16, bias=True)
      (1): GELU(approximate='none')
      (2): Linear(in_features=16, out_features=8, bias=True)
      (3): GELU(approximate='none')
    )
    """
    blocks: list[nn.Module] = []
    sizes = [2 * d_model, *hidden_dims, d_model]
    for size_in, size_out in zip(sizes[:-1], sizes[1:], strict=True):
        blocks += [nn.Linear(size_in, size_out), activation()]
    return nn.Sequential(*blocks)


class BranchformerLayer(BranchformerEncoderLayer):
    """SpeechBrain's Branchformer layer with a given mixer, an optional merge module, and a
    padding-exact, chunkable cgMLP.

    Arguments
    ---------
    d_model, nhead, kernel_size, activation, dropout, csgu_linear_units, gate_activation, \
use_linear_after_conv
        As in ``speechbrain.lobes.models.transformer.Branchformer.BranchformerEncoderLayer``.
    mixer : nn.Module
        Token mixer with the call signature of SpeechBrain's attention modules.
    merge : nn.Module, optional
        Merge of ``[mixer; cgMLP]`` (``2 d_model -> d_model``); SpeechBrain's linear layer
        when not given.

    Example
    -------
    >>> layer = BranchformerLayer(16, 4, build_mixer("SummaryMixing", 16, 4), kernel_size=3,
    ...                           csgu_linear_units=32, merge=merge_mlp(16, [16], nn.GELU))
    >>> layer(torch.randn(2, 5, 16))[0].shape
    torch.Size([2, 5, 16])
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        mixer: nn.Module,
        kernel_size: int = 31,
        activation: type[nn.Module] = nn.GELU,
        dropout: float = 0.0,
        csgu_linear_units: int = 3072,
        gate_activation: type[nn.Module] = nn.Identity,
        use_linear_after_conv: bool = False,
        merge: nn.Module | None = None,
    ):
        # An attention type SpeechBrain does not know makes it build no attention module.
        super().__init__(
            d_model, nhead, kernel_size, activation=activation, dropout=dropout,
            attention_type="external", csgu_linear_units=csgu_linear_units,
            gate_activation=gate_activation, use_linear_after_conv=use_linear_after_conv,
        )
        self.mha_layer = mixer
        self.convolution_branch = ChunkedConvolutionBranch(
            d_model, csgu_linear_units, kernel_size, activation, gate_activation, dropout,
            use_linear_after_conv,
        )
        if merge is not None:
            self.merge_proj = merge

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
        """SpeechBrain's Branchformer layer; the arguments are ``ConformerLayer``'s
        (``dynchunktrain_config`` chunks the cgMLP's convolution)."""
        mixed, attention = mix(
            self.mha_layer, self.norm_mhsa(x), src_mask, src_key_padding_mask, pos_embs,
            summary_chunks,
        )
        gated = self.convolution_branch(
            self.norm_conv(x), src_key_padding_mask, dynchunktrain_config
        )
        return self._merge(x, mixed, gated), attention

    def forward_streaming(
        self,
        x: torch.Tensor,
        context: MixerLayerStreamingContext,
        pos_embs: torch.Tensor | None = None,
        relative_positions: nn.Module | None = None,
    ) -> tuple[torch.Tensor, None]:
        """The layer's output for the next chunk ``x`` ``(B, C, D)`` of a stream."""
        mixed = mix_streaming(
            self.mha_layer, x, self.norm_mhsa, context, pos_embs, relative_positions
        )
        gated = self.convolution_branch.forward_streaming(self.norm_conv(x), context)
        context.frames_seen += x.shape[1]
        return self._merge(x, mixed, gated), None

    def _merge(self, x: torch.Tensor, mixed: torch.Tensor, gated: torch.Tensor) -> torch.Tensor:
        both = torch.cat([self.dropout(mixed), self.dropout(gated)], dim=-1)  # (B, T, 2D)
        return x + self.dropout(self.merge_proj(both))


class BranchformerEncoder(RecordsArguments, MixerEncoder):
    """Branchformer encoder (SpeechBrain layers) with a selectable token mixer.

    Arguments
    ---------
    num_layers, d_model, nhead, kernel_size, activation, dropout, csgu_linear_units, \
gate_activation, use_linear_after_conv
        As in SpeechBrain's ``BranchformerEncoder`` (``kernel_size``: the cgMLP's, odd, as
        SpeechBrain requires).
    attention_type : str
        ``SummaryMixing``, ``regularMHA``, ``RelPosMHAXL`` or ``SDPA``.
    summary_options : mapping, optional
        SummaryMixing's options (see ``ConformerEncoder``); the cell's activation defaults to
        ``activation`` (GELU), as in the authors' Branchformer. With SummaryMixing the merge
        is the authors' MLP (see the module docstring), whose hidden sizes are
        ``summary_hid_dim``.
    layerdrop_prob, output_hidden_states, activation_checkpointing
        See ``MixerEncoder``.

    Example
    -------
    >>> encoder = BranchformerEncoder(2, 16, 4, kernel_size=3, csgu_linear_units=32)
    >>> out, attentions = encoder(torch.randn(3, 10, 16))
    >>> out.shape, len(attentions)
    (torch.Size([3, 10, 16]), 2)
    """

    TRAINING_OPTIONS = (
        "dropout", "layerdrop_prob", "activation_checkpointing", "summary_options.summary_dropout"
    )

    def __init__(
        self,
        num_layers: int,
        d_model: int,
        nhead: int,
        kernel_size: int = 31,
        activation: type[nn.Module] = nn.GELU,
        dropout: float = 0.0,
        attention_type: str = "SummaryMixing",
        csgu_linear_units: int = 3072,
        gate_activation: type[nn.Module] = nn.Identity,
        use_linear_after_conv: bool = False,
        summary_options: Mapping[str, Any] | None = None,
        layerdrop_prob: float = 0.0,
        output_hidden_states: bool = False,
        activation_checkpointing: bool = False,
    ):
        options = summary_mixing_options(summary_options)
        self.init_arguments["summary_options"] = options
        layers = []
        for _ in range(num_layers):
            mixer = build_mixer(
                attention_type, d_model, nhead, dropout=dropout, activation=activation,
                summary_options=summary_options,
            )
            merge = None
            if isinstance(mixer, SummaryMixing):
                hidden = options["summary_hid_dim"] or [d_model]
                merge = merge_mlp(d_model, hidden, activation)
            layers.append(
                BranchformerLayer(
                    d_model, nhead, mixer, kernel_size=kernel_size, activation=activation,
                    dropout=dropout, csgu_linear_units=csgu_linear_units,
                    gate_activation=gate_activation, use_linear_after_conv=use_linear_after_conv,
                    merge=merge,
                )
            )
        super().__init__(
            layers, d_model, attention_type, layerdrop_prob, output_hidden_states,
            activation_checkpointing,
        )
