"""The SummaryMixing cell: a linear-time replacement for multi-head self-attention.

SummaryMixing (Parcollet et al., "SummaryMixing: A Linear-Complexity Alternative to
Self-Attention for Speech Recognition and Understanding", arXiv 2307.07421) mixes a sequence
``x_1 .. x_T`` with three small networks:

- a local branch ``f`` applied to every frame: ``f(x_t)``;
- a summary branch ``s`` applied to every frame and averaged over the valid frames of the
  utterance: ``s_bar = 1/T * sum_t s(x_t)``;
- a combiner ``c`` merging both: ``h_t = c(f(x_t), s_bar)``.

Cost is linear in ``T``. The combiner is a linear layer on the concatenation ``[f(x_t); s_bar]``
followed by the activation; it is computed here as ``W_f f(x_t) + (W_s s_bar + b)`` so that the
summary half runs once per utterance and neither the concatenation nor the summary repeated over
time is ever materialised.

Modes:

- ``"SummaryMixing"``: local + summary branches and the combiner (as above);
- ``"SummaryMixing-lite"``: summary branch only, ``h_t = s_bar``;
- ``"SummaryMixing-fast"``: one joint projection of ``x_t`` split into a local half and a
  summary half, then the combiner.

Padding follows SpeechBrain: ``key_padding_mask`` is ``True`` at padded frames. Unlike the
published implementation, which multiplied by that mask as if ``True`` meant "valid" (so every
utterance without padding came out NaN), padded frames are excluded from the mean here and an
utterance without padding is unaffected.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

MODES = ("SummaryMixing", "SummaryMixing-lite", "SummaryMixing-fast")


class GroupedLinear(nn.Module):
    """Block-diagonal linear layer: the features are split into ``groups`` heads, each with its
    own weights, so heads are projected independently.

    Arguments
    ---------
    in_features : int
        Input size, divisible by ``groups``.
    out_features : int
        Output size, divisible by ``groups``.
    groups : int
        Number of independent heads; 1 gives an ordinary linear layer.
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
        """Uniform initialisation with the bounds nn.Linear uses, per head."""
        bound = 1.0 / math.sqrt(self.in_features // self.groups)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``x`` of shape ``(..., in_features)`` to ``(..., out_features)``."""
        if self.groups == 1:
            return F.linear(x, self.weight[0].t(), self.bias)
        heads = x.unflatten(-1, (self.groups, -1))  # (..., G, in/G)
        out = torch.einsum("...gi,gio->...go", heads, self.weight).flatten(-2)  # (..., out)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, groups={self.groups}"


def branch_mlp(
    in_features: int,
    hidden_dims: Sequence[int],
    out_features: int,
    groups: int,
    activation: type[nn.Module],
    dropout: float,
) -> nn.Sequential:
    """A stack of (grouped linear, activation, dropout) blocks: ``in -> hidden... -> out``.

    Example
    -------
    >>> mlp = branch_mlp(8, [16], 8, groups=2, activation=nn.GELU, dropout=0.0)
    >>> mlp(torch.randn(2, 3, 8)).shape
    torch.Size([2, 3, 8])
    """
    blocks: list[nn.Module] = []
    sizes = [in_features, *hidden_dims, out_features]
    for size_in, size_out in zip(sizes[:-1], sizes[1:], strict=True):
        blocks += [GroupedLinear(size_in, size_out, groups), activation(), nn.Dropout(dropout)]
    return nn.Sequential(*blocks)


class SummaryMixing(nn.Module):
    """SummaryMixing cell with SpeechBrain's attention call signature.

    Arguments
    ---------
    d_model : int
        Input and output size ``D``.
    nhead : int
        Number of heads: the local and summary projections are block-diagonal over ``nhead``
        groups (``SummaryMixing`` and ``SummaryMixing-lite`` modes).
    local_proj_hid_dim : sequence of int, optional
        Hidden sizes of the local branch ``f`` (default ``[d_model]``). In ``SummaryMixing-fast``
        mode, the hidden sizes of the joint projection.
    local_proj_out_dim : int, optional
        Output size of ``f`` (default ``d_model``).
    summary_hid_dim : sequence of int, optional
        Hidden sizes of the summary branch ``s`` (default ``[d_model]``).
    summary_out_dim : int, optional
        Output size of ``s`` (default ``d_model``; must be ``d_model`` in lite mode).
    mode : str
        One of ``"SummaryMixing"``, ``"SummaryMixing-lite"``, ``"SummaryMixing-fast"``.
    activation : type of nn.Module
        Activation class used after every projection and in the combiner.
    dropout : float
        Dropout after every hidden activation of the branches.
    use_layernorm : bool
        Apply a layer norm to the local branch's output and to the summary vector (after the
        mean, as the reference implementation does).

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
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"expected mode in {MODES}, got {mode!r}")
        if d_model % nhead != 0:
            raise ValueError(f"expected d_model divisible by nhead={nhead}, got {d_model}")
        local_hidden = list(local_proj_hid_dim) if local_proj_hid_dim is not None else [d_model]
        summary_hidden = list(summary_hid_dim) if summary_hid_dim is not None else [d_model]
        self.local_out_dim = local_proj_out_dim or d_model
        self.summary_out_dim = summary_out_dim or d_model
        self.d_model = d_model
        self.mode = mode

        if mode == "SummaryMixing-lite":
            if self.summary_out_dim != d_model:
                raise ValueError(
                    f"expected summary_out_dim == d_model ({d_model}) in SummaryMixing-lite mode "
                    f"(the summary is the output), got {self.summary_out_dim}"
                )
            if local_proj_hid_dim is not None or local_proj_out_dim is not None:
                logger.warning("SummaryMixing-lite has no local branch: local_proj_* are unused")
        if mode == "SummaryMixing-fast" and summary_hid_dim is not None:
            if summary_hidden != local_hidden:
                logger.warning(
                    "SummaryMixing-fast uses one joint projection with hidden sizes "
                    "local_proj_hid_dim=%s; summary_hid_dim=%s is unused",
                    local_hidden,
                    summary_hidden,
                )

        if mode == "SummaryMixing-fast":
            self.joint_proj = branch_mlp(
                d_model, local_hidden, self.local_out_dim + self.summary_out_dim, 1,
                activation, dropout,
            )
        else:
            self.summary_proj = branch_mlp(
                d_model, summary_hidden, self.summary_out_dim, nhead, activation, dropout
            )
        if mode == "SummaryMixing":
            self.local_proj = branch_mlp(
                d_model, local_hidden, self.local_out_dim, nhead, activation, dropout
            )
        if mode != "SummaryMixing-lite":
            self.combiner = nn.Linear(self.local_out_dim + self.summary_out_dim, d_model)
            self.combiner_activation = activation()

        self.use_layernorm = use_layernorm
        if use_layernorm:
            self.summary_norm = nn.LayerNorm(self.summary_out_dim)
            if mode != "SummaryMixing-lite":
                self.local_norm = nn.LayerNorm(self.local_out_dim)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        pos_embs: torch.Tensor | None = None,
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
            summary (chunked or causal summaries for streaming). Boolean with ``True`` =
            excluded, or additive float with ``-inf`` = excluded (SpeechBrain's conventions).
        key_padding_mask : torch.Tensor, optional
            ``(B, T)`` boolean, ``True`` at padded frames; padded frames never enter a summary.
        pos_embs : torch.Tensor, optional
            Unused (SummaryMixing has no positional term); accepted for compatibility.

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
        summary_weights = self._check_summary_mask(attn_mask, time, query)

        if self.mode == "SummaryMixing-fast":
            joint = self.joint_proj(query)  # (B, T, L + S)
            local, summary_frames = joint.split([self.local_out_dim, self.summary_out_dim], -1)
        else:
            summary_frames = self.summary_proj(query)  # (B, T, S)
            local = self.local_proj(query) if self.mode == "SummaryMixing" else None
        summary = masked_mean(summary_frames, padding, summary_weights)  # (B, 1 or T, S)
        if self.use_layernorm:
            summary = self.summary_norm(summary)
            local = self.local_norm(local) if local is not None else None
        if local is None:
            return summary.expand(batch, time, self.summary_out_dim), None

        weight_local, weight_summary = self.combiner.weight.split(
            [self.local_out_dim, self.summary_out_dim], dim=1
        )
        summary_term = F.linear(summary, weight_summary, self.combiner.bias)  # (B, 1 or T, D)
        mixed = F.linear(local, weight_local) + summary_term  # (B, T, D)
        return self.combiner_activation(mixed), None

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
        ``(B, 1, S)`` without ``summary_weights``, else ``(B, T, S)``. A frame with no valid frame
        to average gets zeros (the denominator is clamped to 1).

    Example
    -------
    >>> frames = torch.tensor([[[1.0], [3.0], [100.0]]])
    >>> masked_mean(frames, torch.tensor([[False, False, True]]))
    tensor([[[2.]]])
    """
    if padding is not None:
        frames = frames.masked_fill(padding.unsqueeze(-1), 0.0)  # (B, T, S)
        valid = (~padding).unsqueeze(-1).to(frames.dtype)  # (B, T, 1)
    else:
        valid = frames.new_ones(frames.shape[0], frames.shape[1], 1)
    if summary_weights is None:
        total = frames.sum(dim=1, keepdim=True)  # (B, 1, S)
        count = valid.sum(dim=1, keepdim=True)  # (B, 1, 1)
    else:
        total = torch.matmul(summary_weights, frames)  # (B, T, S)
        count = torch.matmul(summary_weights, valid)  # (B, T, 1)
    return total / count.clamp(min=1.0)
