"""The SummaryMixing cell against a naive transcription of the authors' equations, its dropout
placement, its initialisation, padding and masks."""

import math

import pytest
import torch
from speechbrain.nnet.activations import Swish
from torch import nn

from summarymixing import MODES, SummaryMixing
from summarymixing.cell import GroupedLinear, masked_mean

D_MODEL, NHEAD = 24, 4

# Sizes per mode, as the authors' Conformer builds the cell (summary_out_dim = d_model; the fast
# mode's two halves are both local_proj_out_dim). Output sizes differ from D_MODEL where the
# mode allows it, so that a wrong split of the concatenation cannot go unnoticed.
CONFIGS = {
    "SummaryMixing": {"local_proj_hid_dim": [32], "local_proj_out_dim": 16,
                      "summary_hid_dim": [32, 16]},
    "SummaryMixing-lite": {"summary_hid_dim": [32, 16]},
    "SummaryMixing-fast": {"local_proj_out_dim": 20},
}


def make_cell(mode: str, **kwargs) -> SummaryMixing:
    torch.manual_seed(0)
    options = {**CONFIGS[mode], "activation": Swish, **kwargs}
    return SummaryMixing(D_MODEL, NHEAD, mode=mode, **options).eval()


# --- The authors' network, written out frame by frame and head by head ----------------------
# Their per-head layer holds a weight (heads, in/heads, out/heads) and a bias (heads, out/heads);
# their single-head layer (nn.Linear) a weight (out, in) and a bias (out,). Every layer of their
# branch MLPs and combiner is followed by the activation.


def swish(v: torch.Tensor) -> torch.Tensor:
    return v * torch.sigmoid(v)


def per_head_layer(in_dim: int, out_dim: int, heads: int) -> dict:
    return {"W": torch.randn(heads, in_dim // heads, out_dim // heads) * 0.4,
            "b": torch.randn(heads, out_dim // heads) * 0.4}


def dense_layer(in_dim: int, out_dim: int) -> dict:
    return {"W": torch.randn(out_dim, in_dim) * 0.3, "b": torch.randn(out_dim) * 0.3}


def apply_layer(layer: dict, v: torch.Tensor) -> torch.Tensor:
    """One frame ``v`` through one of the authors' linear layers."""
    if layer["W"].dim() == 2:
        return torch.stack([layer["W"][o] @ v + layer["b"][o] for o in range(len(layer["b"]))])
    heads = layer["W"].shape[0]
    chunks = v.reshape(heads, -1)  # head h reads features [h * in/heads, (h + 1) * in/heads)
    return torch.cat([chunks[h] @ layer["W"][h] + layer["b"][h] for h in range(heads)])


def apply_mlp(layers: list[dict], v: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        v = swish(apply_layer(layer, v))
    return v


def layer_norm(v: torch.Tensor, norm: dict, eps: float = 1e-5) -> torch.Tensor:
    mean = v.sum() / len(v)
    variance = ((v - mean) ** 2).sum() / len(v)
    return (v - mean) / math.sqrt(variance + eps) * norm["g"] + norm["beta"]


def authors_parameters(cell: SummaryMixing) -> dict:
    """Random parameters in the authors' layout for the cell's sizes (biases and norms far from
    their initial values, so a mapping error cannot hide behind a zero)."""
    torch.manual_seed(3)
    sizes = {"local": [(D_MODEL, 32), (32, 16)],  # CONFIGS' hidden and output sizes
             "summary": [(D_MODEL, 32), (32, 16), (16, D_MODEL)]}
    params: dict = {}
    if cell.mode == "SummaryMixing-fast":
        params["global"] = dense_layer(D_MODEL, 2 * cell.local_out_dim)
    else:
        params["summary"] = [per_head_layer(i, o, NHEAD) for i, o in sizes["summary"]]
    if cell.mode == "SummaryMixing":
        params["local"] = [per_head_layer(i, o, NHEAD) for i, o in sizes["local"]]
    if cell.mode != "SummaryMixing-lite":
        params["merge"] = dense_layer(cell.local_out_dim + cell.summary_out_dim, D_MODEL)
    for name, size in (("local_norm", cell.local_out_dim), ("summary_norm", D_MODEL)):
        params[name] = {"g": 1 + 0.5 * torch.randn(size), "beta": 0.5 * torch.randn(size)}
    return params


def load_authors_parameters(cell: SummaryMixing, params: dict) -> None:
    """The hand mapping from the authors' parameters to ours."""

    def copy(ours: nn.Module, theirs: dict) -> None:
        ours.weight.copy_(theirs["W"])
        ours.bias.copy_(theirs["b"].flatten())  # per head: (heads, out/heads) -> (out,)

    with torch.no_grad():
        for branch in ("local", "summary"):
            if f"{branch}_proj" in cell._modules:
                linears = [m for m in getattr(cell, f"{branch}_proj") if not isinstance(m, Swish)]
                assert all(isinstance(m, GroupedLinear) for m in linears)
                for ours, theirs in zip(linears, params[branch], strict=True):
                    copy(ours, theirs)
        if cell.mode == "SummaryMixing-fast":
            copy(cell.joint_proj[0], params["global"])
        if cell.mode != "SummaryMixing-lite":
            copy(cell.combiner, params["merge"])
        if cell.use_layernorm:
            for name in ("local_norm", "summary_norm"):
                getattr(cell, name).weight.copy_(params[name]["g"])
                getattr(cell, name).bias.copy_(params[name]["beta"])


def authors_cell(params: dict, mode: str, x: torch.Tensor, use_layernorm: bool) -> torch.Tensor:
    """The authors' SummaryMixing (dropout 0) on one utterance ``x`` (T, D) of valid frames."""
    time = len(x)
    if mode == "SummaryMixing-fast":  # one dense layer + activation, split in two halves
        projected = [swish(apply_layer(params["global"], x[t])) for t in range(time)]
        half = len(projected[0]) // 2
        local = [p[:half] for p in projected]
        summary_frames = [p[half:] for p in projected]
    else:
        summary_frames = [apply_mlp(params["summary"], x[t]) for t in range(time)]
    summary = sum(summary_frames) / time
    if mode == "SummaryMixing-lite":
        return torch.stack([summary for _ in range(time)])
    if mode == "SummaryMixing":
        local = [apply_mlp(params["local"], x[t]) for t in range(time)]
        if use_layernorm:
            local = [layer_norm(v, params["local_norm"]) for v in local]
            summary = layer_norm(summary, params["summary_norm"])
    rows = [swish(apply_layer(params["merge"], torch.cat([local[t], summary])))
            for t in range(time)]
    return torch.stack(rows)


def padded_batch(lengths: list[int], fill: float = 1e4) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs (B, T, D) with huge values in the padding, and the padding mask."""
    torch.manual_seed(1)
    time = max(lengths)
    x = torch.randn(len(lengths), time, D_MODEL)
    padding = torch.arange(time)[None, :] >= torch.tensor(lengths)[:, None]  # (B, T)
    return x.masked_fill(padding.unsqueeze(-1), fill), padding


@pytest.mark.parametrize(
    ("mode", "use_layernorm"),
    [("SummaryMixing", True), ("SummaryMixing", False), ("SummaryMixing-lite", True),
     ("SummaryMixing-fast", True)],
)
def test_matches_the_authors_equations(mode, use_layernorm):
    """use_layernorm=True in lite and fast modes: the authors apply no norm there, nor do we."""
    cell = make_cell(mode, use_layernorm=use_layernorm)
    params = authors_parameters(cell)
    load_authors_parameters(cell, params)
    lengths = [9, 6, 1]
    x, padding = padded_batch(lengths)
    with torch.no_grad():
        padded, attention = cell(x, x, x, key_padding_mask=padding)
        unpadded, _ = cell(x[:1, :9])
    assert attention is None
    torch.testing.assert_close(
        unpadded[0], authors_cell(params, mode, x[0, :9], use_layernorm), atol=1e-5, rtol=1e-5
    )
    for row, length in enumerate(lengths):
        expected = authors_cell(params, mode, x[row, :length], use_layernorm)
        torch.testing.assert_close(padded[row, :length], expected, atol=1e-5, rtol=1e-5)


def test_fast_mode_is_one_dense_projection_into_equal_halves():
    cell = make_cell("SummaryMixing-fast")
    assert [type(m) for m in cell.joint_proj] == [nn.Linear, Swish]
    assert cell.joint_proj[0].weight.shape == (2 * 20, D_MODEL)
    assert cell.summary_out_dim == cell.local_out_dim == 20
    assert not hasattr(cell, "summary_norm") and not hasattr(cell, "local_norm")


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
    params = authors_parameters(cell)
    load_authors_parameters(cell, params)
    x = torch.randn(1, 1, D_MODEL)
    expected = authors_cell(params, "SummaryMixing", x[0], use_layernorm=True)
    torch.testing.assert_close(cell(x)[0][0], expected, atol=1e-5, rtol=1e-5)


def test_chunked_summary_mask_matches_per_chunk_means():
    cell = make_cell("SummaryMixing-lite")
    time, chunk = 10, 4
    x = torch.randn(2, time, D_MODEL)
    chunk_id = torch.arange(time) // chunk
    excluded = chunk_id[:, None] != chunk_id[None, :]  # (T, T), True = not in my chunk
    out, _ = cell(x, attn_mask=excluded)
    summary = cell.summary_proj(x)  # (B, T, S)
    for start in range(0, time, chunk):
        expected = summary[:, start : start + chunk].mean(dim=1, keepdim=True)
        torch.testing.assert_close(
            out[:, start : start + chunk], expected.expand_as(out[:, start : start + chunk])
        )


def test_causal_additive_mask_with_padding_matches_prefix_means():
    cell = make_cell("SummaryMixing")
    params = authors_parameters(cell)
    load_authors_parameters(cell, params)
    lengths = [8, 5]
    x, padding = padded_batch(lengths)
    time = x.shape[1]
    causal = torch.triu(torch.full((time, time), float("-inf")), diagonal=1)  # SpeechBrain's
    with torch.no_grad():
        out, _ = cell(x, attn_mask=causal, key_padding_mask=padding)
    for row, length in enumerate(lengths):
        for t in range(length):
            prefix = authors_cell(params, "SummaryMixing", x[row, : t + 1], True)[-1]
            torch.testing.assert_close(out[row, t], prefix, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_gradients_reach_every_parameter(mode, dropout):
    cell = make_cell(mode, dropout=dropout)
    cell.train()
    x, padding = padded_batch([6, 4], fill=0.0)
    x.requires_grad_(True)
    out, _ = cell(x, key_padding_mask=padding)
    out[~padding].pow(2).sum().backward()
    for name, parameter in cell.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert x.grad[padding].abs().sum() == 0, "padded frames must not influence valid outputs"


# --- Dropout: one dropout on [f(x_t); s_bar], none inside the branches ------------------------


def see_through_cell(mode: str, summary_dropout: str = "frame") -> SummaryMixing:
    """A cell whose output is the dropped concatenation itself: identity activation, identity
    combiner (local and summary halves of D_MODEL / 2 each)."""
    half = D_MODEL // 2
    sizes = {"local_proj_out_dim": half, "summary_out_dim": half}
    if mode == "SummaryMixing":
        sizes["local_proj_hid_dim"] = sizes["summary_hid_dim"] = [32]
    torch.manual_seed(0)
    cell = SummaryMixing(D_MODEL, NHEAD, mode=mode, activation=nn.Identity, dropout=0.5,
                         summary_dropout=summary_dropout, **sizes)
    with torch.no_grad():
        cell.combiner.weight.copy_(torch.eye(D_MODEL))
        cell.combiner.bias.zero_()
    return cell


@pytest.mark.parametrize("mode", ["SummaryMixing", "SummaryMixing-fast"])
@pytest.mark.parametrize("summary_dropout", ["frame", "utterance"])
def test_dropout_drops_the_concatenation_and_nothing_inside_the_branches(mode, summary_dropout):
    cell = see_through_cell(mode, summary_dropout)
    x, padding = padded_batch([40, 40], fill=0.0)
    concatenation = cell.eval()(x)[0]  # [f(x_t); s_bar] without dropout
    torch.manual_seed(5)
    dropped = cell.train()(x)[0]
    kept = dropped != 0
    # Every kept value is exactly its dropout-free value / (1 - p): the branches (evaluated before
    # the mask) are not dropped, and every zero is a dropped element of the concatenation.
    torch.testing.assert_close(dropped[kept], 2 * concatenation[kept])
    assert (concatenation != 0).all()
    half = D_MODEL // 2
    local_kept, summary_kept = kept[..., :half], kept[..., half:]  # (B, T, D/2) each
    for part in (local_kept, summary_kept):
        assert 0.2 < part.float().mean() < 0.8, "both halves are dropped at rate 0.5"
    assert (local_kept != local_kept[:, :1]).any(), "the local half: a mask per frame"
    same_over_frames = (summary_kept == summary_kept[:, :1]).all()
    if summary_dropout == "frame":
        assert not same_over_frames, "the authors' dropout: a mask per frame on s_bar too"
    else:
        assert same_over_frames, "summary_dropout='utterance': one mask per utterance"
        assert (summary_kept[0, 0] != summary_kept[1, 0]).any(), "drawn for each utterance"


def test_lite_mode_has_no_dropout():
    """The authors' lite mode returns the summary with no dropout at all."""
    cell = make_cell("SummaryMixing-lite", dropout=0.5)
    x = torch.randn(2, 6, D_MODEL)
    torch.testing.assert_close(cell.train()(x)[0], cell.eval()(x)[0])


@pytest.mark.parametrize("mode", ["SummaryMixing", "SummaryMixing-fast"])
@pytest.mark.parametrize(
    ("training", "dropout", "summary_dropout", "per_frame"),
    [(False, 0.1, "frame", False), (True, 0.0, "frame", False), (True, 0.1, "frame", True),
     (True, 0.1, "utterance", False)],
)
def test_summary_half_runs_per_frame_only_for_per_frame_dropout(
    mode, training, dropout, summary_dropout, per_frame
):
    """The combiner's summary term runs on (B, 1, S), except in training with per-frame
    dropout masks, where it runs on (B, T, S); the concatenation is never built."""
    cell = make_cell(mode, dropout=dropout, summary_dropout=summary_dropout).train(training)
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
    per_utterance = (3, 1, cell.summary_out_dim)
    assert (per_utterance not in seen_shapes) == per_frame
    if cell.summary_out_dim != cell.local_out_dim:
        assert ((3, 50, cell.summary_out_dim) in seen_shapes) == per_frame
    assert (3, 50, cell.local_out_dim + cell.summary_out_dim) not in seen_shapes


# --- Initialisation as the authors' ----------------------------------------------------------


def assert_uniform_bound(values: torch.Tensor, bound: float) -> None:
    """All within ±bound, and the extremes close to it (so the bound is the right one)."""
    assert values.abs().max() <= bound
    assert values.abs().max() >= 0.97 * bound
    assert values.min() < 0 < values.max()


def test_initialisation_at_paper_size():
    torch.manual_seed(0)
    cell = SummaryMixing(768, 8, local_proj_hid_dim=[768], summary_hid_dim=[768])
    grouped = [m for m in cell.modules() if isinstance(m, GroupedLinear)]
    assert len(grouped) == 4
    weight_bound = 1 / math.sqrt(96 * 96)  # (in/h) * (out/h)
    assert weight_bound == pytest.approx(0.0104, abs=1e-4)
    for layer in grouped:
        assert layer.weight.shape == (8, 96, 96)
        assert_uniform_bound(layer.weight, weight_bound)
        assert_uniform_bound(layer.bias, 1 / math.sqrt(96))
    assert torch.equal(cell.combiner.bias, torch.zeros(768))
    assert_uniform_bound(cell.combiner.weight, 1 / math.sqrt(2 * 768))  # nn.Linear default


@pytest.mark.parametrize("mode", ["SummaryMixing", "SummaryMixing-fast"])
def test_single_head_projections_are_linear_layers_with_zero_bias(mode):
    """The authors build every projection with one head (nhead 1, or the fast mode's dense
    projection) as nn.Linear and zero its bias, as for the combiner."""
    torch.manual_seed(0)
    cell = SummaryMixing(256, 1 if mode == "SummaryMixing" else 8, mode=mode)
    linears = [m for m in cell.modules() if isinstance(m, nn.Linear)]
    assert not any(isinstance(m, GroupedLinear) for m in cell.modules())
    assert len(linears) == (5 if mode == "SummaryMixing" else 2)
    for layer in linears:
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
        assert_uniform_bound(layer.weight, 1 / math.sqrt(layer.in_features))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "SummaryMixing-turbo"}, "expected mode"),
        ({"d_model": 10, "nhead": 4}, "divisible"),
        ({"local_proj_hid_dim": [30], "nhead": 4}, "divisible"),
        ({"mode": "SummaryMixing-lite", "summary_out_dim": 12}, "summary_out_dim"),
        ({"summary_dropout": "batch"}, "expected summary_dropout"),
        ({"dropout": 1.0}, r"expected dropout in \[0, 1\)"),
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


@pytest.mark.parametrize("mode", ["SummaryMixing", "SummaryMixing-lite", "SummaryMixing-fast"])
@pytest.mark.parametrize("left_chunks", [None, 0, 2])
def test_streaming_chunks_equal_chunked_forward(mode, left_chunks):
    from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig

    torch.manual_seed(0)
    cell = SummaryMixing(d_model=8, nhead=2, mode=mode).eval()
    x = torch.randn(2, 11, 8)
    config = DynChunkTrainConfig(3, left_chunks)
    with torch.no_grad():
        chunked, _ = cell(x, dynchunktrain_config=config)
        state = cell.make_streaming_state(config)
        streamed = torch.cat(
            [cell.forward_streaming(x[:, start : start + 3], state) for start in range(0, 11, 3)],
            dim=1,
        )
    torch.testing.assert_close(streamed, chunked, atol=1e-6, rtol=0)
    kept = 1 if left_chunks is None else left_chunks
    assert len(state.totals) == kept, "constant-size state"


def test_chunked_summaries_refuse_a_mask_as_well():
    from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig

    cell = SummaryMixing(d_model=8, nhead=2)
    x = torch.randn(1, 4, 8)
    with pytest.raises(ValueError, match="either attn_mask or dynchunktrain_config"):
        cell(x, attn_mask=torch.zeros(4, 4, dtype=torch.bool),
             dynchunktrain_config=DynChunkTrainConfig(2))
    with pytest.raises(ValueError, match="left_context_size >= 0"):
        cell(x, dynchunktrain_config=DynChunkTrainConfig(2, -1))


@pytest.mark.parametrize("mode", MODES)
def test_branches_stay_in_the_autocast_dtype(mode):
    # Several heads (GroupedLinear): the fp32 bias must not promote the branches back to fp32.
    torch.manual_seed(0)
    cell = SummaryMixing(d_model=32, nhead=4, mode=mode).eval()
    x = torch.randn(2, 40, 32)
    with torch.no_grad():
        reference = cell._branches(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            branches = cell._branches(x)
            output, _ = cell(x)
    for low, full in zip(branches, reference, strict=True):
        if full is None:
            continue
        assert low.dtype == torch.bfloat16
        torch.testing.assert_close(low.float(), full, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(output.float(), cell(x)[0].detach(), rtol=5e-2, atol=5e-2)


def test_grouped_linear_keeps_the_autocast_dtype_and_trains_its_fp32_bias():
    layer = GroupedLinear(8, 8, groups=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(torch.randn(3, 8))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert layer.bias.dtype == torch.float32 and layer.bias.grad is not None


@pytest.mark.parametrize(("time", "weighted"), [(16455, False), (3000, True)])
def test_masked_mean_accumulates_in_fp32(time, weighted):
    # bf16 frames of 1.25 .. 1.75: a bf16 total and count (thousands; 16448 valid frames is
    # halfway between two bf16 numbers) keep 8 bits and the mean comes out a bf16 step off;
    # accumulated in fp32 it is exact to the rounding of the result (half a bf16 step, 2**-8 in
    # [1, 2)).
    torch.manual_seed(0)
    frames = (1.25 + 0.5 * torch.rand(1, time, 64)).bfloat16()
    padding = torch.zeros(1, time, dtype=torch.bool)
    padding[:, -7:] = True
    reference = frames[:, :-7].double().mean(dim=1, keepdim=True)  # (1, 1, 64)
    weights = torch.ones(time, time, dtype=torch.bfloat16) if weighted else None
    mean = masked_mean(frames, padding, weights)  # (1, 1 or T, 64)
    assert mean.dtype == torch.bfloat16
    assert bool(((mean.double() - reference).abs() <= 2.0**-8).all())
