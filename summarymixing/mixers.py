"""Token mixers with SpeechBrain's attention call signature, and the factory that picks one.

All mixers are called as ``mixer(query, key, value, attn_mask=None, key_padding_mask=None,
pos_embs=None) -> (output, attention_or_None)`` with ``key_padding_mask`` ``True`` at padding.

- ``SummaryMixing``: the linear-time cell of this project (``summarymixing.cell``);
- ``regularMHA``: SpeechBrain's ``MultiheadAttention`` (wraps ``torch.nn.MultiheadAttention``);
- ``RelPosMHAXL``: SpeechBrain's Transformer-XL relative-position attention;
- ``SDPA``: multi-head attention on ``torch.nn.functional.scaled_dot_product_attention`` (fused
  kernels, no attention matrix returned): the fastest quadratic baseline PyTorch offers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from speechbrain.nnet.attention import MultiheadAttention, RelPosMHAXL
from torch import nn

from summarymixing.cell import SummaryMixing

ATTENTION_TYPES = ("SummaryMixing", "regularMHA", "RelPosMHAXL", "SDPA")


class MultiheadSDPA(nn.Module):
    """Multi-head self-attention computed by ``F.scaled_dot_product_attention``.

    Arguments
    ---------
    d_model : int
        Input and output size ``D``, divisible by ``nhead``.
    nhead : int
        Number of heads.
    dropout : float
        Attention dropout (training only).

    Example
    -------
    >>> attention = MultiheadSDPA(16, 4)
    >>> x = torch.randn(2, 5, 16)
    >>> out, weights = attention(x, x, x)
    >>> out.shape, weights
    (torch.Size([2, 5, 16]), None)
    """

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0):
        super().__init__()
        if d_model % nhead != 0:
            raise ValueError(f"expected d_model divisible by nhead={nhead}, got {d_model}")
        self.nhead = nhead
        self.dropout = dropout
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        pos_embs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        """Self-attention over ``query`` ``(B, T, D)``; ``attn_mask`` ``(T, T)`` (bool,
        ``True`` = excluded, or additive float); ``key_padding_mask`` ``(B, T)``."""
        batch, time, d_model = query.shape
        q, k, v = (
            part.unflatten(-1, (self.nhead, -1)).transpose(1, 2)  # (B, H, T, D/H)
            for part in self.in_proj(query).chunk(3, dim=-1)
        )
        bias = None
        if attn_mask is not None:
            bias = (
                torch.zeros(time, time, dtype=q.dtype, device=q.device).masked_fill(
                    attn_mask, float("-inf")
                )
                if attn_mask.dtype == torch.bool
                else attn_mask.to(q.dtype)
            )
        if key_padding_mask is not None:
            padding_bias = torch.zeros(batch, 1, 1, time, dtype=q.dtype, device=q.device)
            padding_bias = padding_bias.masked_fill(
                key_padding_mask.view(batch, 1, 1, time).bool(), float("-inf")
            )
            bias = padding_bias if bias is None else bias + padding_bias  # (B, 1, T, T)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, D/H)
        return self.out_proj(out.transpose(1, 2).reshape(batch, time, d_model)), None


def build_mixer(
    attention_type: str,
    d_model: int,
    nhead: int,
    dropout: float = 0.0,
    causal: bool = False,
    local_proj_hid_dim: Sequence[int] | None = None,
    local_proj_out_dim: int | None = None,
    summary_hid_dim: Sequence[int] | None = None,
    summary_out_dim: int | None = None,
    mode: str = "SummaryMixing",
    summary_activation: type[nn.Module] = nn.GELU,
    use_layernorm: bool = True,
    summary_dropout: str = "frame",
) -> nn.Module:
    """Build the token mixer named by ``attention_type``.

    The ``local_*``, ``summary_*``, ``mode`` and ``use_layernorm`` options configure
    SummaryMixing and are used only by it (``summary_activation`` is its ``activation``; the
    encoders pass their own layer activation here); ``dropout`` is SummaryMixing's dropout on
    the concatenation before its combiner, or the attention dropout of the other mixers;
    ``causal`` masks future positions in ``RelPosMHAXL`` (other mixers take causal masks through
    ``attn_mask``).

    Example
    -------
    >>> type(build_mixer("SummaryMixing", 16, 4)).__name__
    'SummaryMixing'
    >>> type(build_mixer("regularMHA", 16, 4)).__name__
    'MultiheadAttention'
    """
    if attention_type == "SummaryMixing":
        return SummaryMixing(
            d_model, nhead, local_proj_hid_dim=local_proj_hid_dim,
            local_proj_out_dim=local_proj_out_dim, summary_hid_dim=summary_hid_dim,
            summary_out_dim=summary_out_dim, mode=mode, activation=summary_activation,
            dropout=dropout, use_layernorm=use_layernorm, summary_dropout=summary_dropout,
        )
    if attention_type == "regularMHA":
        return MultiheadAttention(nhead=nhead, d_model=d_model, dropout=dropout)
    if attention_type == "RelPosMHAXL":
        return RelPosMHAXL(
            num_heads=nhead, embed_dim=d_model, dropout=dropout, mask_pos_future=causal
        )
    if attention_type == "SDPA":
        return MultiheadSDPA(d_model, nhead, dropout)
    raise ValueError(f"expected attention_type in {ATTENTION_TYPES}, got {attention_type!r}")
