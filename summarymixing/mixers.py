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

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from speechbrain.nnet.attention import MultiheadAttention, RelPosMHAXL
from torch import nn

from summarymixing.cell import SummaryMixing

ATTENTION_TYPES = ("SummaryMixing", "regularMHA", "RelPosMHAXL", "SDPA")
ENCODER_OWNED_OPTIONS = ("self", "d_model", "nhead", "dropout")  # SummaryMixing arguments



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


def summary_mixing_options(options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """SummaryMixing's options, complete: the given ones over ``SummaryMixing``'s defaults.

    An encoder receives them as one mapping (``summary_options``) and hands them to every
    layer's cell. ``d_model``, ``nhead`` and ``dropout`` are the encoder's own; ``activation``
    ``None`` (the default here) means the encoder layer's activation, as the authors do.

    Arguments
    ---------
    options : mapping, optional
        Keyword arguments of ``summarymixing.SummaryMixing`` (``mode``, ``local_proj_hid_dim``,
        ``local_proj_out_dim``, ``summary_hid_dim``, ``summary_out_dim``, ``activation``,
        ``use_layernorm``, ``summary_dropout``).

    Returns
    -------
    dict
        Every option, sequences as lists.

    Raises
    ------
    ValueError
        For an option SummaryMixing does not have (names it and lists the valid ones).

    Example
    -------
    >>> summary_mixing_options({"mode": "SummaryMixing-lite"})["mode"]
    'SummaryMixing-lite'
    >>> summary_mixing_options({"local_proj_hidden": [8]})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown SummaryMixing option 'local_proj_hidden'; expected one of [...]
    """
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(SummaryMixing.__init__).parameters.items()
        if name not in ENCODER_OWNED_OPTIONS
    }
    defaults["activation"] = None
    options = dict(options or {})
    for name in options:
        if name not in defaults:
            raise ValueError(
                f"unknown SummaryMixing option {name!r}; expected one of {list(defaults)}"
            )
    complete = {**defaults, **options}
    return {
        name: list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value
        for name, value in complete.items()
    }


def build_mixer(
    attention_type: str,
    d_model: int,
    nhead: int,
    dropout: float = 0.0,
    causal: bool = False,
    activation: type[nn.Module] = nn.GELU,
    summary_options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build the token mixer named by ``attention_type``: the one place that checks it.

    Arguments
    ---------
    attention_type : str
        One of ``ATTENTION_TYPES``.
    d_model : int
        Input and output size ``D``.
    nhead : int
        Heads (SummaryMixing's per-head projections, attention heads otherwise).
    dropout : float
        SummaryMixing's dropout on the concatenation before its combiner, or the attention
        dropout of the other mixers.
    causal : bool
        Mask future positions in ``RelPosMHAXL`` (other mixers take causal masks through
        ``attn_mask``).
    activation : type of nn.Module
        SummaryMixing's activation unless ``summary_options`` names one (encoders pass their
        layers' activation).
    summary_options : mapping, optional
        SummaryMixing's options (:func:`summary_mixing_options`); checked whatever the
        ``attention_type``, used only by SummaryMixing, so swapping the mixer is one line.

    Returns
    -------
    nn.Module
        Called as ``mixer(query, key, value, attn_mask=None, key_padding_mask=None,
        pos_embs=None)``.

    Example
    -------
    >>> type(build_mixer("SummaryMixing", 16, 4, summary_options={"mode": "SummaryMixing-fast"}))
    <class 'summarymixing.cell.SummaryMixing'>
    >>> type(build_mixer("regularMHA", 16, 4)).__name__
    'MultiheadAttention'
    >>> build_mixer("Attention", 16, 4)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: expected attention_type in ('SummaryMixing', ...), got 'Attention'
    """
    options = summary_mixing_options(summary_options)
    if attention_type == "SummaryMixing":
        if options["activation"] is None:
            options["activation"] = activation
        return SummaryMixing(d_model, nhead, dropout=dropout, **options)
    if attention_type == "regularMHA":
        return MultiheadAttention(nhead=nhead, d_model=d_model, dropout=dropout)
    if attention_type == "RelPosMHAXL":
        return RelPosMHAXL(
            num_heads=nhead, embed_dim=d_model, dropout=dropout, mask_pos_future=causal
        )
    if attention_type == "SDPA":
        return MultiheadSDPA(d_model, nhead, dropout)
    raise ValueError(f"expected attention_type in {ATTENTION_TYPES}, got {attention_type!r}")
