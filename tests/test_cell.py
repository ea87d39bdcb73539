"""The SummaryMixing cell against a naive transcription of the paper's equations."""

import pytest
import torch
from torch import nn

from summarymixing import MODES, SummaryMixing
from summarymixing.cell import GroupedLinear

D_MODEL, NHEAD = 24, 4


def naive_grouped_linear(layer: GroupedLinear, x: torch.Tensor) -> torch.Tensor:
    """The per-head projection as one block-diagonal matrix."""
    block_diagonal = torch.block_diag(*layer.weight)  # (in, out)
    return x @ block_diagonal + layer.bias


def naive_mlp(mlp: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    for module in mlp:
        x = naive_grouped_linear(module, x) if isinstance(module, GroupedLinear) else module(x)
    return x


def naive_summary_mixing(cell: SummaryMixing, x: torch.Tensor, length: int) -> torch.Tensor:
    """h_t = c([f(x_t); mean_{t' < length} s(x_t')]) for one utterance ``x`` (T, D), frame by
    frame, with the concatenation and the repeated summary spelled out."""
    x = x[:length]
    if cell.mode == "SummaryMixing-fast":
        joint = naive_mlp(cell.joint_proj, x)
        local, summary = joint[:, : cell.local_out_dim], joint[:, cell.local_out_dim :]
    else:
        summary = naive_mlp(cell.summary_proj, x)
        local = naive_mlp(cell.local_proj, x) if cell.mode == "SummaryMixing" else None
    summary_mean = sum(summary[t] for t in range(length)) / length
    if cell.use_layernorm:
        summary_mean = cell.summary_norm(summary_mean)
        local = cell.local_norm(local) if local is not None else None
    if local is None:
        return torch.stack([summary_mean for _ in range(length)])
    rows = []
    for t in range(length):
        concatenated = torch.cat([local[t], summary_mean])
        merged = cell.combiner.weight @ concatenated + cell.combiner.bias
        rows.append(cell.combiner_activation(merged))
    return torch.stack(rows)


def make_cell(mode: str, **kwargs) -> SummaryMixing:
    torch.manual_seed(0)
    summary_hidden = None if mode == "SummaryMixing-fast" else [32]
    return SummaryMixing(
        D_MODEL, NHEAD, local_proj_hid_dim=[32], summary_hid_dim=summary_hidden, mode=mode, **kwargs
    ).eval()


def padded_batch(lengths: list[int], fill: float = 1e4) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs (B, T, D) with huge values in the padding, and the padding mask."""
    torch.manual_seed(1)
    time = max(lengths)
    x = torch.randn(len(lengths), time, D_MODEL)
    padding = torch.arange(time)[None, :] >= torch.tensor(lengths)[:, None]  # (B, T)
    return x.masked_fill(padding.unsqueeze(-1), fill), padding


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("use_layernorm", [True, False])
def test_matches_naive_equations(mode, use_layernorm):
    cell = make_cell(mode, use_layernorm=use_layernorm)
    lengths = [9, 6, 1]
    x, padding = padded_batch(lengths)
    out, attention = cell(x, x, x, key_padding_mask=padding)
    assert attention is None
    for row, length in enumerate(lengths):
        expected = naive_summary_mixing(cell, x[row], length)
        torch.testing.assert_close(out[row, :length], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_alone_equals_padded_in_batch(mode):
    cell = make_cell(mode)
    lengths = [11, 7, 3]
    x, padding = padded_batch(lengths)
    batched, _ = cell(x, key_padding_mask=padding)
    for row, length in enumerate(lengths):
        alone, _ = cell(x[row : row + 1, :length])
        assert (batched[row, :length] - alone[0]).abs().max() <= 1e-5


@pytest.mark.parametrize("mode", MODES)
def test_no_padding_gives_no_nan(mode):
    """The published code multiplied by SpeechBrain's mask as if True meant valid: an all-False
    mask (nothing padded) then divided 0 by 0."""
    cell = make_cell(mode)
    x = torch.randn(2, 5, D_MODEL)
    nothing_padded = torch.zeros(2, 5, dtype=torch.bool)
    out, _ = cell(x, key_padding_mask=nothing_padded)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, cell(x)[0])


def test_one_frame():
    cell = make_cell("SummaryMixing")
    x = torch.randn(1, 1, D_MODEL)
    torch.testing.assert_close(cell(x)[0][0], naive_summary_mixing(cell, x[0], 1))


def test_chunked_summary_mask_matches_per_chunk_means():
    cell = make_cell("SummaryMixing-lite")
    time, chunk = 10, 4
    x = torch.randn(2, time, D_MODEL)
    chunk_id = torch.arange(time) // chunk
    excluded = chunk_id[:, None] != chunk_id[None, :]  # (T, T), True = not in my chunk
    out, _ = cell(x, attn_mask=excluded)
    summary = cell.summary_proj(x)  # (B, T, S)
    for start in range(0, time, chunk):
        expected = cell.summary_norm(summary[:, start : start + chunk].mean(dim=1, keepdim=True))
        torch.testing.assert_close(out[:, start : start + chunk], expected.expand_as(
            out[:, start : start + chunk]))


def test_causal_additive_mask_with_padding_matches_prefix_means():
    cell = make_cell("SummaryMixing")
    lengths = [8, 5]
    x, padding = padded_batch(lengths)
    time = x.shape[1]
    causal = torch.triu(torch.full((time, time), float("-inf")), diagonal=1)  # SpeechBrain's
    out, _ = cell(x, attn_mask=causal, key_padding_mask=padding)
    for row, length in enumerate(lengths):
        for t in range(length):
            prefix = naive_summary_mixing(cell, x[row], t + 1)[-1]
            torch.testing.assert_close(out[row, t], prefix, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_gradients_reach_every_parameter(mode):
    cell = make_cell(mode)
    cell.train()
    x, padding = padded_batch([6, 4], fill=0.0)
    x.requires_grad_(True)
    out, _ = cell(x, key_padding_mask=padding)
    out[~padding].pow(2).sum().backward()
    for name, parameter in cell.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert x.grad[padding].abs().sum() == 0, "padded frames must not influence valid outputs"


def test_summary_half_runs_once_per_utterance():
    """The combiner's summary term is computed on (B, 1, S), not on (B, T, S)."""
    cell = make_cell("SummaryMixing")
    seen_shapes = []
    original_linear = torch.nn.functional.linear

    def recording_linear(x, weight, bias=None):
        seen_shapes.append(tuple(x.shape))
        return original_linear(x, weight, bias)

    torch.nn.functional.linear = recording_linear
    try:
        cell(torch.randn(3, 50, D_MODEL))
    finally:
        torch.nn.functional.linear = original_linear
    assert (3, 1, cell.summary_out_dim) in seen_shapes
    assert (3, 50, cell.local_out_dim + cell.summary_out_dim) not in seen_shapes


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "SummaryMixing-turbo"}, "expected mode"),
        ({"d_model": 10, "nhead": 4}, "divisible"),
        ({"local_proj_hid_dim": [30], "nhead": 4}, "divisible"),
        ({"mode": "SummaryMixing-lite", "summary_out_dim": 12}, "summary_out_dim"),
    ],
)
def test_invalid_configuration(kwargs, message):
    arguments = {"d_model": D_MODEL, "nhead": NHEAD, **kwargs}
    with pytest.raises(ValueError, match=message):
        SummaryMixing(**arguments)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda cell, x: cell(x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool)),
         r"key_padding_mask of shape \(2, 5\)"),
        (lambda cell, x: cell(x, attn_mask=torch.zeros(5, 4, dtype=torch.bool)),
         r"attn_mask\) of shape \(5, 5\)"),
        (lambda cell, x: cell(x[:, :, :8]), "expected query of shape"),
        (lambda cell, x: cell(x[:, :0]), "at least one frame"),
        (lambda cell, x: cell(x, x[:, :3], x[:, :3]), "self-mixing"),
    ],
)
def test_bad_masks_and_inputs(call, message):
    cell = make_cell("SummaryMixing")
    with pytest.raises(ValueError, match=message):
        call(cell, torch.randn(2, 5, D_MODEL))
