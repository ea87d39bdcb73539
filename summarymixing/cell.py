"""The SummaryMixing cell: a linear-time replacement for multi-head self-attention.

SummaryMixing (Parcollet et al., "SummaryMixing: A Linear-Complexity Alternative to
Self-Attention for Speech Recognition and Understanding", arXiv 2307.07421) mixes a sequence
``x_1 .. x_T`` with three small networks:

- a local branch ``f`` applied to every frame: ``f(x_t)``;
- a summary branch ``s`` applied to every frame and averaged over the valid frames of the
  utterance: ``s_bar = 1/T * sum_t s(x_t)``;
- a combiner ``c`` merging both: ``h_t = c([f(x_t); s_bar])``, a linear layer and activation.

Cost is linear in ``T``. The network is the one the authors trained (their ``SummaryMixing``
module inside their Conformer): every branch layer is a per-head linear layer followed by the
activation (no dropout inside the branches); one dropout is applied to the concatenation
``[f(x_t); s_bar]`` just before the combiner; weights and biases are initialised as theirs
(see ``GroupedLinear`` and ``head_linear``).

The combiner is computed as ``W_f f(x_t) + (W_s s_bar + b)``: in evaluation and without dropout
the summary half runs once per utterance and neither the concatenation nor the summary repeated
over time is materialised. In training with dropout, the authors' dropout draws an independent
mask for every frame, so the summary half then runs per frame (``summary_dropout="frame"``, the
default); ``summary_dropout="utterance"`` draws one mask per utterance for the summary half and
keeps it once per utterance (cheaper, not the authors' regularisation).

Modes (as the authors define them):

- ``"SummaryMixing"``: per-head local and summary MLPs, layer norms on the local output and on
  the summary (after the mean) when ``use_layernorm``, dropout, combiner;
- ``"SummaryMixing-lite"``: the per-head summary MLP only, no layer norm, no dropout:
  ``h_t = s_bar``;
- ``"SummaryMixing-fast"``: ONE dense projection and activation ``d_model -> L + S`` (no hidden
  layer, no layer norm) split into a local half and a summary half, dropout, combiner.

Padding follows SpeechBrain: ``key_padding_mask`` is ``True`` at padded frames. Unlike the
published implementation, which multiplied by that mask as if ``True`` meant "valid" (so every
utterance without padding came out NaN), padded frames are excluded from the mean here and an
utterance without padding is unaffected; chunked or causal summaries also exclude padding from
their denominator.

Chunked and causal summaries (streaming): with ``dynchunktrain_config`` (SpeechBrain's
``DynChunkTrainConfig``: chunk size ``C`` in frames, left context ``L`` in chunks, ``None`` =
unlimited), frame ``t`` in chunk ``n = t // C`` averages the valid frames of chunks
``n - L .. n`` (its own chunk entirely, the ``L`` previous chunks, nothing later): the frames
SpeechBrain's chunk mask (``make_transformer_src_mask``) lets attention see. ``C = 1``,
``L = None`` is the causal summary (the mean of frames ``1 .. t``). They are computed from
cumulative sums over chunks in ``O(T)`` time and memory (``chunked_masked_mean``);
``forward_streaming`` computes the same chunk by chunk with a constant-size state
(``SummaryStreamingState``). An arbitrary ``(T, T)`` ``attn_mask`` still works, in ``O(T^2)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig
from torch import nn

logger = logging.getLogger(__name__)

MODES = ("SummaryMixing", "SummaryMixing-lite", "SummaryMixing-fast")
SUMMARY_DROPOUTS = ("frame", "utterance")


class GroupedLinear(nn.Module):
    """Block-diagonal linear layer: the features are split into ``groups`` heads, each with its
    own weights, so heads are projected independently.

    Initialised as the authors' per-head layer: the weight ``(groups, in/groups, out/groups)``
    uniform in ``±1/sqrt((in/groups) * (out/groups))`` (``kaiming_uniform_(a=sqrt(5))`` on that
    3-D tensor: ±0.0104 for 768 -> 768 with 8 heads), the bias uniform in
    ``±1/sqrt(out/groups)``.

    Arguments
    ---------
    in_features : int
        Input size, divisible by ``groups``.
    out_features : int
        Output size, divisible by ``groups``.
    groups : int
        Number of independent heads (the branches use ``nn.Linear`` for one head, see
        ``head_linear``).
    bias : bool
        Whether to add a bias.

    Example
    -------
    >>> layer = GroupedLinear(8, 4, groups=2)
    >>> layer(torch.randn(3, 5, 8)).shape
    torch.Size([3, 5, 4])
    """

    def __init__(self, in_features: int, out_features: int, groups: int = 1, bias: bool = True):
        super().__init__()
        for name, size in (("in_features", in_features), ("out_features", out_features)):
            if size % groups != 0:
                raise ValueError(
                    f"expected {name} divisible by the number of heads {groups}, got {size}"
                )
        self.in_features = in_features
        self.out_features = out_features
        self.groups = groups
        self.weight = nn.Parameter(
            torch.empty(groups, in_features // groups, out_features // groups)
        )
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' per-head initialisation (see the class docstring)."""
        head_in, head_out = self.in_features // self.groups, self.out_features // self.groups
        bound = 1.0 / math.sqrt(head_in * head_out)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            bias_bound = 1.0 / math.sqrt(head_out)
            nn.init.uniform_(self.bias, -bias_bound, bias_bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``x`` of shape ``(..., in_features)`` to ``(..., out_features)``, in the
        matmul's dtype (the autocast dtype under ``torch.autocast``: the bias is cast to it)."""
        heads = x.unflatten(-1, (self.groups, -1))  # (..., G, in/G)
        out = torch.einsum("...gi,gio->...go", heads, self.weight).flatten(-2)  # (..., out)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, groups={self.groups}"


def head_linear(in_features: int, out_features: int, groups: int) -> nn.Module:
    """A branch projection as the authors build it: ``GroupedLinear`` for several heads, else
    ``nn.Linear`` (default weight initialisation) with its bias set to zero.

    Example
    -------
    >>> head_linear(8, 4, groups=1).bias.abs().sum().item()
    0.0
    >>> type(head_linear(8, 4, groups=2)).__name__
    'GroupedLinear'
    """
    if groups > 1:
        return GroupedLinear(in_features, out_features, groups)
    layer = nn.Linear(in_features, out_features)
    nn.init.zeros_(layer.bias)
    return layer


def branch_mlp(
    in_features: int,
    hidden_dims: Sequence[int],
    out_features: int,
    groups: int,
    activation: type[nn.Module],
) -> nn.Sequential:
    """A stack of (per-head linear, activation) blocks: ``in -> hidden... -> out``, no dropout.

    Example
    -------
    >>> mlp = branch_mlp(8, [16], 8, groups=2, activation=nn.GELU)
    >>> mlp(torch.randn(2, 3, 8)).shape
    torch.Size([2, 3, 8])
    """
    blocks: list[nn.Module] = []
    sizes = [in_features, *hidden_dims, out_features]
    for size_in, size_out in zip(sizes[:-1], sizes[1:], strict=True):
        blocks += [head_linear(size_in, size_out, groups), activation()]
    return nn.Sequential(*blocks)


class SummaryMixing(nn.Module):
    """SummaryMixing cell with SpeechBrain's attention call signature.

    Arguments
    ---------
    d_model : int
        Input and output size ``D``.
    nhead : int
        Number of heads: the local and summary MLPs are block-diagonal over ``nhead`` groups
        (``SummaryMixing`` and ``SummaryMixing-lite`` modes; the fast mode's projection is dense).
    local_proj_hid_dim : sequence of int, optional
        Hidden sizes of the local branch ``f`` (default ``[d_model]``; ``SummaryMixing`` mode).
    local_proj_out_dim : int, optional
        Output size ``L`` of ``f`` (default ``d_model``); in ``SummaryMixing-fast`` mode, the
        size of the local half of the joint projection.
    summary_hid_dim : sequence of int, optional
        Hidden sizes of the summary branch ``s`` (default ``[d_model]``; ``SummaryMixing`` and
        ``SummaryMixing-lite`` modes).
    summary_out_dim : int, optional
        Output size ``S`` of ``s``: default ``d_model``, and in ``SummaryMixing-fast`` mode
        ``local_proj_out_dim`` (the authors' two equal halves); must be ``d_model`` in lite mode.
    mode : str
        One of ``"SummaryMixing"``, ``"SummaryMixing-lite"``, ``"SummaryMixing-fast"``.
    activation : type of nn.Module
        Activation class used after every projection and in the combiner (the encoders pass
        their own activation, as the authors' Conformer does).
    dropout : float
        Dropout on the concatenation ``[f(x_t); s_bar]`` before the combiner (training only;
        none inside the branches, none in lite mode).
    use_layernorm : bool
        ``SummaryMixing`` mode: layer norms on the local branch's output and on the summary
        (after the mean). The authors' lite and fast modes have none, and neither do these.
    summary_dropout : str
        How the dropout masks the summary half in training: ``"frame"`` (default, the authors'),
        an independent mask for every frame, so the summary half of the combiner runs per frame;
        ``"utterance"``, one mask per utterance shared by all its frames, so it still runs once
        per utterance (cheaper).

    Example
    -------
    >>> cell = SummaryMixing(d_model=16, nhead=4)
    >>> x = torch.randn(2, 7, 16)
    >>> padding = torch.tensor([[False] * 7, [False] * 5 + [True] * 2])
    >>> out, attn = cell(x, x, x, key_padding_mask=padding)
    >>> out.shape, attn
    (torch.Size([2, 7, 16]), None)
    """

    def __init__(
        self,
        d_model: int,
        nhead: int = 1,
        local_proj_hid_dim: Sequence[int] | None = None,
        local_proj_out_dim: int | None = None,
        summary_hid_dim: Sequence[int] | None = None,
        summary_out_dim: int | None = None,
        mode: str = "SummaryMixing",
        activation: type[nn.Module] = nn.GELU,
        dropout: float = 0.0,
        use_layernorm: bool = True,
        summary_dropout: str = "frame",
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"expected mode in {MODES}, got {mode!r}")
        if summary_dropout not in SUMMARY_DROPOUTS:
            raise ValueError(
                f"expected summary_dropout in {SUMMARY_DROPOUTS}, got {summary_dropout!r}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"expected dropout in [0, 1), got {dropout}")
        if d_model % nhead != 0:
            raise ValueError(f"expected d_model divisible by nhead={nhead}, got {d_model}")
        local_hidden = list(local_proj_hid_dim) if local_proj_hid_dim is not None else [d_model]
        summary_hidden = list(summary_hid_dim) if summary_hid_dim is not None else [d_model]
        self.local_out_dim = local_proj_out_dim or d_model
        fast = mode == "SummaryMixing-fast"
        self.summary_out_dim = summary_out_dim or (self.local_out_dim if fast else d_model)
        self.d_model = d_model
        self.mode = mode
        self.dropout = dropout
        self.summary_dropout = summary_dropout
        self._warn_unused(mode, local_proj_hid_dim, local_proj_out_dim, summary_hid_dim)

        if mode == "SummaryMixing-lite" and self.summary_out_dim != d_model:
            raise ValueError(
                f"expected summary_out_dim == d_model ({d_model}) in SummaryMixing-lite mode "
                f"(the summary is the output), got {self.summary_out_dim}"
            )
        if fast:
            # One dense layer (the authors' n_split=1) d_model -> L + S, then the activation.
            self.joint_proj = branch_mlp(
                d_model, [], self.local_out_dim + self.summary_out_dim, 1, activation
            )
        else:
            self.summary_proj = branch_mlp(
                d_model, summary_hidden, self.summary_out_dim, nhead, activation
            )
        if mode == "SummaryMixing":
            self.local_proj = branch_mlp(
                d_model, local_hidden, self.local_out_dim, nhead, activation
            )
        if mode != "SummaryMixing-lite":
            self.combiner = head_linear(self.local_out_dim + self.summary_out_dim, d_model, 1)
            self.combiner_activation = activation()

        self.use_layernorm = use_layernorm and mode == "SummaryMixing"
        if self.use_layernorm:
            self.local_norm = nn.LayerNorm(self.local_out_dim)
            self.summary_norm = nn.LayerNorm(self.summary_out_dim)

    @staticmethod
    def _warn_unused(
        mode: str,
        local_proj_hid_dim: Sequence[int] | None,
        local_proj_out_dim: int | None,
        summary_hid_dim: Sequence[int] | None,
    ) -> None:
        if mode == "SummaryMixing-lite" and (
            local_proj_hid_dim is not None or local_proj_out_dim is not None
        ):
            logger.warning("SummaryMixing-lite has no local branch: local_proj_* are unused")
        if mode == "SummaryMixing-fast" and (
            local_proj_hid_dim is not None or summary_hid_dim is not None
        ):
            logger.warning(
                "SummaryMixing-fast has one projection without hidden layers: "
                "local_proj_hid_dim and summary_hid_dim are unused"
            )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        pos_embs: torch.Tensor | None = None,
        dynchunktrain_config: DynChunkTrainConfig | None = None,
    ) -> tuple[torch.Tensor, None]:
        """Mix the frames of ``query``.

        Arguments
        ---------
        query : torch.Tensor
            Input ``(B, T, D)``. SummaryMixing is self-mixing: ``key`` and ``value``, when given,
            must be the same tensor (they are accepted for SpeechBrain compatibility).
        key, value : torch.Tensor, optional
            See ``query``.
        attn_mask : torch.Tensor, optional
            Summary mask ``(T, T)``: row ``t`` selects the frames averaged into frame ``t``'s
            summary. Boolean with ``True`` = excluded, or additive float with ``-inf`` =
            excluded (SpeechBrain's conventions). Any mask works, in ``O(T^2)``; chunked and
            causal summaries are ``O(T)`` with ``dynchunktrain_config`` instead.
        key_padding_mask : torch.Tensor, optional
            ``(B, T)`` boolean, ``True`` at padded frames; padded frames never enter a summary.
        pos_embs : torch.Tensor, optional
            Unused (SummaryMixing has no positional term); accepted for compatibility.
        dynchunktrain_config : DynChunkTrainConfig, optional
            Chunked summaries: frame ``t`` averages its own chunk and the
            ``left_context_size`` chunks before it (all of them when ``None``), the frames
            SpeechBrain's Dynamic Chunk Training mask shows attention;
            ``DynChunkTrainConfig(1, None)`` is the causal summary. Exclusive with
            ``attn_mask``.

        Returns
        -------
        output : torch.Tensor
            ``(B, T, D)``; values at padded frames are meaningless.
        attention : None
            SummaryMixing has no attention weights.
        """
        self._check_inputs(query, key, value)
        batch, time, _ = query.shape
        padding = self._check_padding(key_padding_mask, batch, time, query.device)
        if dynchunktrain_config is not None:
            if attn_mask is not None:
                raise ValueError(
                    "expected either attn_mask or dynchunktrain_config (chunked summaries), "
                    "got both"
                )
            check_chunk_config(dynchunktrain_config)
        summary_weights = self._check_summary_mask(attn_mask, time, query)

        local, summary_frames = self._branches(query)
        if dynchunktrain_config is not None:
            summary = chunked_masked_mean(
                summary_frames, padding, dynchunktrain_config.chunk_size,
                dynchunktrain_config.left_context_size,
            )  # (B, T, S)
        else:
            summary = masked_mean(summary_frames, padding, summary_weights)  # (B, 1 or T, S)
        return self._output(local, summary, time), None

    def forward_streaming(
        self, query: torch.Tensor, state: SummaryStreamingState
    ) -> torch.Tensor:
        """Mix the next chunk of a stream: the same output as ``forward`` with
        ``dynchunktrain_config`` gives this chunk's frames, from the summary sums of the
        previous chunks kept in ``state`` (updated in place).

        Arguments
        ---------
        query : torch.Tensor
            The chunk ``(B, C, D)``, no padding (every frame valid); the last chunk of a stream
            may be shorter than the chunk size.
        state : SummaryStreamingState
            From :meth:`make_streaming_state`, passed again with every chunk of the stream.

        Returns
        -------
        torch.Tensor
            ``(B, C, D)``.

        Example
        -------
        >>> cell = SummaryMixing(d_model=8, nhead=2).eval()
        >>> x = torch.randn(1, 6, 8)
        >>> config = DynChunkTrainConfig(chunk_size=2, left_context_size=1)
        >>> full, _ = cell(x, dynchunktrain_config=config)
        >>> state = cell.make_streaming_state(config)
        >>> chunks = [cell.forward_streaming(x[:, i : i + 2], state) for i in (0, 2, 4)]
        >>> torch.allclose(torch.cat(chunks, dim=1), full, atol=1e-6)
        True
        """
        self._check_inputs(query, None, None)
        local, summary_frames = self._branches(query)
        chunk_total = summary_frames.to(accumulation_dtype(query)).sum(dim=1, keepdim=True)
        chunk_count = summary_frames.new_full((query.shape[0], 1, 1), query.shape[1])
        total, count = state.add_chunk(chunk_total, chunk_count.to(chunk_total.dtype))
        summary = (total / count.clamp(min=1.0)).to(summary_frames.dtype)  # (B, 1, S)
        return self._output(local, summary, query.shape[1])

    def make_streaming_state(
        self, dynchunktrain_config: DynChunkTrainConfig
    ) -> SummaryStreamingState:
        """A blank streaming state for :meth:`forward_streaming` (chunk size and left context of
        ``dynchunktrain_config``; the chunks passed must have that size, the last one excepted).
        """
        check_chunk_config(dynchunktrain_config)
        return SummaryStreamingState(dynchunktrain_config.left_context_size)

    def _branches(self, query: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(f(x_t) or None in lite mode, s(x_t))``: ``(B, T, L)``, ``(B, T, S)``."""
        if self.mode == "SummaryMixing-fast":
            joint = self.joint_proj(query)  # (B, T, L + S)
            local, summary_frames = joint.split([self.local_out_dim, self.summary_out_dim], -1)
            return local, summary_frames
        summary_frames = self.summary_proj(query)  # (B, T, S)
        local = self.local_proj(query) if self.mode == "SummaryMixing" else None
        return local, summary_frames

    def _output(
        self, local: torch.Tensor | None, summary: torch.Tensor, time: int
    ) -> torch.Tensor:
        """The cell's output ``(B, T, D)`` from the local branch and the summary
        ``(B, 1 or T, S)``."""
        if local is None:
            return summary.expand(summary.shape[0], time, self.summary_out_dim)
        if self.use_layernorm:
            local = self.local_norm(local)
            summary = self.summary_norm(summary)
        return self._combine(local, summary)

    def _combine(self, local: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        """``c(dropout([f(x_t); s_bar]))`` from ``local`` ``(B, T, L)`` and ``summary``
        ``(B, 1 or T, S)``, as ``act(W_f f(x_t) + W_s s_bar + b)``."""
        if self.training and self.dropout > 0.0:
            local = F.dropout(local, self.dropout)  # (B, T, L), a mask per frame
            batch, time, _ = local.shape
            if self.summary_dropout == "frame":
                # A mask per frame, as on the authors' concatenation: the summary half of the
                # combiner then runs per frame.
                summary = F.dropout(summary.expand(batch, time, -1), self.dropout)  # (B, T, S)
            else:
                keep = F.dropout(summary.new_ones(batch, 1, self.summary_out_dim), self.dropout)
                summary = summary * keep  # (B, 1 or T, S), one mask per utterance
        weight_local, weight_summary = self.combiner.weight.split(
            [self.local_out_dim, self.summary_out_dim], dim=1
        )
        summary_term = F.linear(summary, weight_summary, self.combiner.bias)  # (B, 1 or T, D)
        mixed = F.linear(local, weight_local) + summary_term  # (B, T, D)
        return self.combiner_activation(mixed)

    def _check_inputs(
        self, query: torch.Tensor, key: torch.Tensor | None, value: torch.Tensor | None
    ) -> None:
        if query.dim() != 3 or query.shape[-1] != self.d_model:
            raise ValueError(
                f"expected query of shape (batch, time, {self.d_model}), got {tuple(query.shape)}"
            )
        if query.shape[1] == 0:
            raise ValueError("expected at least one frame, got an empty sequence")
        for name, other in (("key", key), ("value", value)):
            if other is not None and other.shape != query.shape:
                raise ValueError(
                    f"SummaryMixing is self-mixing: expected {name} of the query's shape "
                    f"{tuple(query.shape)}, got {tuple(other.shape)}"
                )

    @staticmethod
    def _check_padding(
        key_padding_mask: torch.Tensor | None, batch: int, time: int, device: torch.device
    ) -> torch.Tensor | None:
        if key_padding_mask is None:
            return None
        if tuple(key_padding_mask.shape) != (batch, time):
            raise ValueError(
                f"expected key_padding_mask of shape ({batch}, {time}), "
                f"got {tuple(key_padding_mask.shape)}"
            )
        return key_padding_mask.to(device=device, dtype=torch.bool)

    @staticmethod
    def _check_summary_mask(
        attn_mask: torch.Tensor | None, time: int, query: torch.Tensor
    ) -> torch.Tensor | None:
        if attn_mask is None:
            return None
        if tuple(attn_mask.shape) != (time, time):
            raise ValueError(
                f"expected a summary mask (attn_mask) of shape ({time}, {time}), "
                f"got {tuple(attn_mask.shape)}"
            )
        excluded = attn_mask if attn_mask.dtype == torch.bool else torch.isneginf(attn_mask)
        return (~excluded).to(device=query.device, dtype=query.dtype)  # (T, T), 1 = averaged


def masked_mean(
    frames: torch.Tensor,
    padding: torch.Tensor | None = None,
    summary_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of ``frames`` over valid time steps.

    Arguments
    ---------
    frames : torch.Tensor
        ``(B, T, S)``.
    padding : torch.Tensor, optional
        ``(B, T)`` boolean, ``True`` at padded frames (excluded).
    summary_weights : torch.Tensor, optional
        ``(T, T)`` 0/1 matrix: row ``t`` selects the frames averaged for frame ``t``.

    Returns
    -------
    torch.Tensor
        ``(B, 1, S)`` without ``summary_weights``, else ``(B, T, S)``, in ``frames``' dtype,
        accumulated in float32 at least (half-precision sums over long utterances drift). A frame
        with no valid frame to average gets zeros (the denominator is clamped to 1).

    Example
    -------
    >>> frames = torch.tensor([[[1.0], [3.0], [100.0]]])
    >>> masked_mean(frames, torch.tensor([[False, False, True]]))
    tensor([[[2.]]])
    """
    dtype = torch.promote_types(frames.dtype, torch.float32)  # accumulation dtype
    values = frames
    if padding is not None:
        values = frames.masked_fill(padding.unsqueeze(-1), 0.0)  # (B, T, S)
        valid = (~padding).unsqueeze(-1).to(dtype)  # (B, T, 1)
    else:
        valid = frames.new_ones(frames.shape[0], frames.shape[1], 1, dtype=dtype)
    if summary_weights is None:
        total = values.sum(dim=1, keepdim=True, dtype=dtype)  # (B, 1, S)
        count = valid.sum(dim=1, keepdim=True)  # (B, 1, 1)
    else:
        with torch.autocast(frames.device.type, enabled=False):
            weights = summary_weights.to(dtype)
            total = torch.matmul(weights, values.to(dtype))  # (B, T, S)
            count = torch.matmul(weights, valid)  # (B, T, 1)
    return (total / count.clamp(min=1.0)).to(frames.dtype)


def accumulation_dtype(frames: torch.Tensor) -> torch.dtype:
    """The dtype summaries are accumulated in: float64 where the device has it (the chunked
    path subtracts cumulative sums), else float32."""
    return torch.float32 if frames.device.type == "mps" else torch.float64


def check_chunk_config(config: DynChunkTrainConfig) -> None:
    """Raise ``ValueError`` for a chunk size below 1 or a negative left context.

    Example
    -------
    >>> check_chunk_config(DynChunkTrainConfig(0))
    Traceback (most recent call last):
    ...
    ValueError: expected dynchunktrain_config.chunk_size >= 1, got 0
    """
    if config.chunk_size < 1:
        raise ValueError(f"expected dynchunktrain_config.chunk_size >= 1, got {config.chunk_size}")
    if config.left_context_size is not None and config.left_context_size < 0:
        raise ValueError(
            "expected dynchunktrain_config.left_context_size >= 0 or None, "
            f"got {config.left_context_size}"
        )


def chunked_masked_mean(
    frames: torch.Tensor,
    padding: torch.Tensor | None,
    chunk_size: int,
    left_context_chunks: int | None = None,
) -> torch.Tensor:
    """Chunked mean in ``O(T)``: frame ``t`` of chunk ``n = t // chunk_size`` gets the mean of
    the valid frames of chunks ``n - left_context_chunks .. n`` (``0 .. n`` when
    ``left_context_chunks`` is ``None``), the frames SpeechBrain's Dynamic Chunk Training mask
    (``make_transformer_src_mask``) selects, from cumulative sums over chunks (no ``(T, T)``
    matrix).

    Arguments
    ---------
    frames : torch.Tensor
        ``(B, T, S)``.
    padding : torch.Tensor, optional
        ``(B, T)`` boolean, ``True`` at padded frames (excluded from sums and counts).
    chunk_size : int
        Chunk size ``C`` in frames (``1`` with ``left_context_chunks=None``: causal means).
    left_context_chunks : int, optional
        Chunks of left context; ``None``: all previous chunks.

    Returns
    -------
    torch.Tensor
        ``(B, T, S)``; a frame with no valid frame to average gets zeros.

    Example
    -------
    >>> frames = torch.tensor([[[1.0], [3.0], [5.0], [7.0], [9.0]]])
    >>> chunked_masked_mean(frames, None, chunk_size=2, left_context_chunks=1).flatten().tolist()
    [2.0, 2.0, 4.0, 4.0, 7.0]
    >>> chunked_masked_mean(frames, None, chunk_size=1).flatten().tolist()
    [1.0, 2.0, 3.0, 4.0, 5.0]
    """
    batch, time, size = frames.shape
    dtype = accumulation_dtype(frames)
    values = frames.to(dtype)
    if padding is not None:
        values = values.masked_fill(padding.unsqueeze(-1), 0.0)
        valid = (~padding).unsqueeze(-1).to(dtype)  # (B, T, 1)
    else:
        valid = values.new_ones(batch, time, 1)
    chunks = -(-time // chunk_size)
    extra = chunks * chunk_size - time
    chunk_totals = F.pad(values, (0, 0, 0, extra)).view(batch, chunks, chunk_size, size).sum(2)
    chunk_counts = F.pad(valid, (0, 0, 0, extra)).view(batch, chunks, chunk_size, 1).sum(2)
    totals = chunk_totals.cumsum(dim=1)  # (B, N, S): chunks 0 .. n
    counts = chunk_counts.cumsum(dim=1)  # (B, N, 1)
    window = None if left_context_chunks is None else left_context_chunks + 1
    if window is not None and window < chunks:
        # Chunks n - L .. n: the cumulative sum up to n less the one up to n - L - 1.
        totals = torch.cat([totals[:, :window], totals[:, window:] - totals[:, :-window]], 1)
        counts = torch.cat([counts[:, :window], counts[:, window:] - counts[:, :-window]], 1)
    means = (totals / counts.clamp(min=1.0)).to(frames.dtype)  # (B, N, S)
    return means.repeat_interleave(chunk_size, dim=1)[:, :time]  # (B, T, S)


@dataclass
class SummaryStreamingState:
    """What :meth:`SummaryMixing.forward_streaming` keeps between chunks: the sums and counts of
    ``s(x_t)`` over the left context, in constant memory.

    With an unlimited left context (``left_context_chunks`` ``None``), one running sum and
    count; with ``L`` chunks of left context, the sums and counts of the last ``L`` chunks.
    """

    left_context_chunks: int | None
    """Chunks of left context, ``None`` = all."""

    totals: list[torch.Tensor] = field(default_factory=list)
    """Sums ``(B, 1, S)`` (accumulation dtype): the running sum, or one per kept chunk."""

    counts: list[torch.Tensor] = field(default_factory=list)
    """Frame counts ``(B, 1, 1)``, as ``totals``."""

    def add_chunk(
        self, total: torch.Tensor, count: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum and count over the left context and the new chunk (``total``, ``count``); then
        keep what the next chunk needs."""
        window_total = sum(self.totals, total)
        window_count = sum(self.counts, count)
        if self.left_context_chunks is None:
            self.totals, self.counts = [window_total], [window_count]
        elif self.left_context_chunks > 0:
            self.totals = [*self.totals, total][-self.left_context_chunks :]
            self.counts = [*self.counts, count][-self.left_context_chunks :]
        return window_total, window_count
