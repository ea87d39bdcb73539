"""Dynamic Chunk Training and streaming of the three encoders: streaming equals chunked
``forward``, no output reads a later chunk, padding changes nothing, and SummaryMixing's chunked
summaries are O(T) and equal to the naive mean over SpeechBrain's chunk mask."""

import pytest
import torch
from speechbrain.lobes.models.transformer.Conformer import ConvolutionModule
from speechbrain.lobes.models.transformer.Transformer import get_lookahead_mask
from speechbrain.lobes.models.transformer.TransformerASR import make_transformer_src_mask
from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig

import summarymixing.cell
import summarymixing.encoders
from summarymixing import (
    ATTENTION_TYPES,
    BranchformerEncoder,
    ConformerEncoder,
    SummaryMixing,
    TransformerEncoder,
)
from summarymixing.cell import chunked_masked_mean
from summarymixing.encoders import PaddingSafeConvolutionModule

ENCODERS = [ConformerEncoder, TransformerEncoder, BranchformerEncoder]
D_MODEL = 16
TIME = 19  # not a multiple of the chunk sizes: a short last chunk
CONFIGS = [
    DynChunkTrainConfig(4, None), DynChunkTrainConfig(4, 0), DynChunkTrainConfig(3, 2),
    DynChunkTrainConfig(2, 3),
]


def tiny(encoder_class, attention_type, **kwargs):
    torch.manual_seed(0)
    if encoder_class is BranchformerEncoder:
        return BranchformerEncoder(
            2, D_MODEL, 4, kernel_size=7, csgu_linear_units=32, attention_type=attention_type,
            **kwargs,
        ).eval()
    extra = {"kernel_size": 7} if encoder_class is ConformerEncoder else {}
    return encoder_class(
        2, D_MODEL, 32, 4, attention_type=attention_type, **extra, **kwargs
    ).eval()


def stream(encoder, x, config):
    context = encoder.make_streaming_context(config)
    size = config.chunk_size
    with torch.no_grad():
        outputs = [
            encoder.forward_streaming(x[:, start : start + size], context)[0]
            for start in range(0, x.shape[1], size)
        ]
    return torch.cat(outputs, dim=1), context


@pytest.mark.parametrize("encoder_class", ENCODERS)
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_streaming_equals_chunked_forward(encoder_class, attention_type, config):
    encoder = tiny(encoder_class, attention_type)
    torch.manual_seed(1)
    x = torch.randn(2, TIME, D_MODEL)
    with torch.no_grad():
        chunked = encoder(x, dynchunktrain_config=config)[0]
        full = encoder(x)[0]
    streamed, _ = stream(encoder, x, config)
    assert (streamed - chunked).abs().max() <= 1e-5
    assert (streamed - full).abs().max() > 1e-3, "chunking must change the output"


@pytest.mark.parametrize("encoder_class", ENCODERS)
def test_summary_mixing_streaming_state_is_constant_size(encoder_class):
    encoder = tiny(encoder_class, "SummaryMixing")
    x = torch.randn(1, 40, D_MODEL)
    for config, kept in ((DynChunkTrainConfig(2, None), 1), (DynChunkTrainConfig(2, 3), 3)):
        _, context = stream(encoder, x, config)
        for layer in context.layers:
            assert layer.mha_left_context is None, "SummaryMixing keeps no frames"
            assert len(layer.summary_state.totals) == kept
            assert layer.summary_state.totals[0].shape == (1, 1, D_MODEL)
            half = 7 // 2
            if encoder_class is not TransformerEncoder:
                assert layer.dcconv_left_context.shape[1] == half
            assert layer.frames_seen == 40


def test_attention_streaming_keeps_its_left_context_frames():
    encoder = tiny(ConformerEncoder, "regularMHA")
    _, context = stream(encoder, torch.randn(1, 20, D_MODEL), DynChunkTrainConfig(4, 2))
    assert context.layers[0].mha_left_context.shape == (1, 8, D_MODEL)


def test_streaming_refuses_misuse():
    encoder = tiny(ConformerEncoder, "SummaryMixing")
    context = encoder.make_streaming_context(DynChunkTrainConfig(4, 1))
    with pytest.raises(ValueError, match="expected a chunk of shape"):
        encoder.forward_streaming(torch.randn(1, 5, D_MODEL), context)
    encoder.forward_streaming(torch.randn(1, 3, D_MODEL), context)
    with pytest.raises(ValueError, match="shorter than chunk_size ends a stream"):
        encoder.forward_streaming(torch.randn(1, 4, D_MODEL), context)
    causal = ConformerEncoder(1, D_MODEL, 32, 4, kernel_size=3, causal=True)
    with pytest.raises(ValueError, match="causal"):
        causal.make_streaming_context(DynChunkTrainConfig(4))
    with pytest.raises(ValueError, match="causal"):
        causal(torch.randn(1, 8, D_MODEL), dynchunktrain_config=DynChunkTrainConfig(4))
    with pytest.raises(ValueError, match="chunk_size >= 1"):
        encoder(torch.randn(1, 8, D_MODEL), dynchunktrain_config=DynChunkTrainConfig(0))


@pytest.mark.parametrize("encoder_class", ENCODERS)
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_no_future_leak(encoder_class, attention_type):
    """Changing the frames after chunk k changes no output of chunks <= k; without chunks it
    does (the test can see a leak)."""
    encoder = tiny(encoder_class, attention_type)
    torch.manual_seed(2)
    x = torch.randn(2, TIME, D_MODEL)
    for config in CONFIGS:
        size = config.chunk_size
        for chunk in range(TIME // size):
            end = (chunk + 1) * size
            changed = x.clone()
            changed[:, end:] = torch.randn_like(changed[:, end:]) * 3.0
            with torch.no_grad():
                before = encoder(x, dynchunktrain_config=config)[0]
                after = encoder(changed, dynchunktrain_config=config)[0]
                unchunked = encoder(changed)[0][:, :end] - encoder(x)[0][:, :end]
            assert (after[:, :end] - before[:, :end]).abs().max() <= 1e-6, (config, chunk)
            assert (after[:, end:] - before[:, end:]).abs().max() > 1e-3
            assert unchunked.abs().max() > 1e-5


def test_chunked_convolution_alone_leaks_without_dynamic_chunk_convolution():
    """The issue's finding: a chunk mask alone is not enough, the convolution must be chunked.
    With the mask but an unchunked convolution, the first chunk reads the second one."""
    encoder = tiny(ConformerEncoder, "SummaryMixing")
    config = DynChunkTrainConfig(4, None)
    x = torch.randn(1, 12, D_MODEL)
    changed = x.clone()
    changed[:, 4:] = torch.randn_like(changed[:, 4:])
    with torch.no_grad():
        mask = make_transformer_src_mask(x, dynchunktrain_config=config)
        masked_only = encoder(changed, src_mask=mask)[0] - encoder(x, src_mask=mask)[0]
        chunked = encoder(changed, dynchunktrain_config=config)[0] - encoder(
            x, dynchunktrain_config=config
        )[0]
    assert masked_only[:, :4].abs().max() > 1e-3
    assert chunked[:, :4].abs().max() <= 1e-6


@pytest.mark.parametrize("encoder_class", ENCODERS)
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_alone_equals_padded_chunked_and_full(encoder_class, attention_type):
    encoder = tiny(encoder_class, attention_type)
    lengths = [TIME, 11, 2]  # the last padded beyond several chunks of left context
    torch.manual_seed(3)
    x = torch.randn(len(lengths), TIME, D_MODEL)
    padding = torch.arange(TIME)[None, :] >= torch.tensor(lengths)[:, None]
    x = x.masked_fill(padding.unsqueeze(-1), 50.0)  # loud padding must not leak
    for config in [None, *CONFIGS]:
        with torch.no_grad():
            batched = encoder(x, src_key_padding_mask=padding, dynchunktrain_config=config)[0]
            for row, length in enumerate(lengths):
                alone = encoder(x[row : row + 1, :length], dynchunktrain_config=config)[0]
                assert (batched[row, :length] - alone[0]).abs().max() <= 1e-5, (config, row)
        assert torch.isfinite(batched).all()


def test_padding_safe_convolution_is_speechbrains_without_padding():
    torch.manual_seed(0)
    ours = PaddingSafeConvolutionModule(8, kernel_size=7).eval()
    theirs = ConvolutionModule(8, kernel_size=7).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 23, 8)
    with torch.no_grad():
        for size in (None, 1, 5, 30):
            config = None if size is None else DynChunkTrainConfig(size)
            torch.testing.assert_close(
                ours(x, dynchunktrain_config=config), theirs(x, dynchunktrain_config=config)
            )


def naive_chunked_mean(frames, padding, chunk_size, left_chunks):
    """Frame by frame: the mean of the valid frames of chunks n - L .. n."""
    batch, time, size = frames.shape
    out = torch.zeros(batch, time, size, dtype=torch.float64)
    for b in range(batch):
        for t in range(time):
            chunk = t // chunk_size
            first = 0 if left_chunks is None else max(0, (chunk - left_chunks) * chunk_size)
            last = min(time, (chunk + 1) * chunk_size)
            picked = [u for u in range(first, last) if not padding[b, u]]
            if picked:
                out[b, t] = frames[b, picked].double().mean(dim=0)
    return out


@pytest.mark.parametrize(
    ("chunk_size", "left_chunks"), [(1, None), (3, None), (3, 0), (3, 2), (4, 1), (25, 0)]
)
def test_chunked_mean_equals_naive_mean_and_the_mask_path(chunk_size, left_chunks):
    torch.manual_seed(4)
    frames = torch.randn(3, TIME, 5)
    padding = torch.arange(TIME)[None, :] >= torch.tensor([TIME, 10, 1])[:, None]
    fast = chunked_masked_mean(frames, padding, chunk_size, left_chunks)
    expected = naive_chunked_mean(frames, padding, chunk_size, left_chunks)
    valid = ~padding
    assert (fast.double() - expected)[valid].abs().max() <= 1e-6

    cell = SummaryMixing(d_model=8, nhead=2).eval()
    x = torch.randn(3, TIME, 8)
    config = DynChunkTrainConfig(chunk_size, left_chunks)
    mask = make_transformer_src_mask(x, dynchunktrain_config=config)  # SpeechBrain's (T, T)
    with torch.no_grad():
        o_t = cell(x, key_padding_mask=padding, dynchunktrain_config=config)[0]
        o_t2 = cell(x, attn_mask=mask, key_padding_mask=padding)[0]
    assert (o_t - o_t2)[valid].abs().max() <= 1e-5


def test_causal_mask_takes_the_linear_path(monkeypatch):
    """SpeechBrain's causal mask (get_lookahead_mask) becomes O(T) causal summaries: the same
    result as the (T, T) product, without it."""
    encoder = tiny(TransformerEncoder, "SummaryMixing")
    x = torch.randn(2, TIME, D_MODEL)
    with torch.no_grad():
        general_out = x  # layers called directly take the (T, T) path
        for layer in encoder.layers:
            general_out = layer(general_out, src_mask=get_lookahead_mask(x))[0]
        general_out = encoder.norm(general_out)
        monkeypatch.setattr(summarymixing.cell, "masked_mean", _refuse)
        causal = encoder(x, src_mask=get_lookahead_mask(x))[0]
        causal_bool = encoder(x, src_mask=torch.ones(TIME, TIME, dtype=torch.bool).triu(1))[0]
    torch.testing.assert_close(causal, general_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(causal_bool, general_out, atol=1e-5, rtol=0)


def _refuse(*args, **kwargs):
    raise AssertionError("the (T, T) summary path was used")


@pytest.mark.parametrize("encoder_class", ENCODERS)
def test_chunked_summary_mixing_builds_no_time_by_time_mask(encoder_class, monkeypatch):
    encoder = tiny(encoder_class, "SummaryMixing")
    monkeypatch.setattr(summarymixing.encoders, "make_transformer_src_mask", _refuse)
    monkeypatch.setattr(summarymixing.cell, "masked_mean", _refuse)
    out = encoder(torch.randn(2, TIME, D_MODEL), dynchunktrain_config=DynChunkTrainConfig(4, 1))
    assert out[0].shape == (2, TIME, D_MODEL)


def test_transformer_asr_arguments_are_accepted_and_checked():
    """TransformerASR.encode passes src, src_mask (the chunk mask), src_key_padding_mask,
    pos_embs and dynchunktrain_config by keyword; a src_mask other than the chunk mask is
    refused rather than ignored."""
    encoder = tiny(ConformerEncoder, "SummaryMixing")
    x = torch.randn(2, TIME, D_MODEL)
    config = DynChunkTrainConfig(4, 1)
    padding = torch.zeros(2, TIME, dtype=torch.bool)
    with torch.no_grad():
        alone = encoder(x, dynchunktrain_config=config)[0]
        given = encoder(
            src=x, src_mask=make_transformer_src_mask(x, dynchunktrain_config=config),
            src_key_padding_mask=padding, pos_embs=None, dynchunktrain_config=config,
        )
    assert len(given) == 2
    torch.testing.assert_close(given[0], alone)
    with pytest.raises(ValueError, match="chunk mask of dynchunktrain_config"):
        encoder(x, src_mask=get_lookahead_mask(x), dynchunktrain_config=config)


@pytest.mark.parametrize("encoder_class", ENCODERS)
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_training_with_chunks_and_long_padding_has_finite_gradients(encoder_class, attention_type):
    """A padded frame whose chunk and left context are all padding sees no frame: the mixers
    must not turn that into NaN outputs or gradients (torch's MultiheadAttention would)."""
    encoder = tiny(encoder_class, attention_type).train()
    x = torch.randn(2, TIME, D_MODEL)
    padding = torch.arange(TIME)[None, :] >= torch.tensor([TIME, 3])[:, None]
    out = encoder(x, src_key_padding_mask=padding, dynchunktrain_config=DynChunkTrainConfig(4, 0))
    assert torch.isfinite(out[0]).all()
    out[0][~padding].pow(2).mean().backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
