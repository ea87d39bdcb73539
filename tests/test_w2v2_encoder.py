"""W2V2Encoder / FbankFrontEnd: batch-vs-single consistency, lengths, edge cases, sizes."""

from __future__ import annotations

import pytest
import torch
from speechbrain.nnet.activations import Swish
from tiny_models import tiny_encoder

from summarymixing.w2v2 import FbankFrontEnd, W2V2Encoder


@pytest.mark.parametrize("attention_type", ["SummaryMixing", "regularMHA"])
def test_utterance_alone_equals_its_row_in_a_padded_batch(attention_type: str) -> None:
    torch.manual_seed(0)
    encoder = tiny_encoder(kernel_size=5, attention_type=attention_type).eval()
    lengths = [16000, 11230, 7001]
    wavs = torch.zeros(3, max(lengths))
    singles = [torch.randn(n) for n in lengths]
    for row, wav in enumerate(singles):
        wavs[row, : len(wav)] = wav
    wav_lens = torch.tensor(lengths, dtype=torch.float) / max(lengths)
    with torch.no_grad():
        batched = encoder(wavs, wav_lens)
        frames = encoder.frontend.output_lengths(wav_lens, wavs.shape[1])
        for row, wav in enumerate(singles):
            alone = encoder(wav.unsqueeze(0), torch.ones(1))
            assert alone[0].shape[1] == frames[row]
            for layer, (single, batch) in enumerate(zip(alone, batched, strict=True)):
                valid = batch[row, : frames[row]]
                assert torch.allclose(single[0], valid, atol=1e-5), (row, layer)


def test_hidden_states_and_attributes() -> None:
    encoder = tiny_encoder(kernel_size=5).eval()
    hidden = encoder(torch.randn(2, 8000), torch.tensor([1.0, 0.6]))
    assert encoder.num_hidden_states == 3 == len(hidden)
    assert encoder.d_model == 32
    assert all(h.shape == (2, 23, 32) for h in hidden)
    assert all(torch.isfinite(h).all() for h in hidden)


def test_output_lengths_match_the_frames_produced() -> None:
    frontend = FbankFrontEnd(n_mels=40, out_channels=[16, 16])
    for samples in [960, 961, 1119, 1120, 1280, 16000, 16159, 16160]:
        latents, padding = frontend(torch.randn(1, samples))
        assert latents.shape[1] == int(frontend.output_lengths(torch.tensor([samples]))[0])
        assert not padding.any()


def test_shortest_input_gives_one_frame_and_shorter_is_a_clear_error() -> None:
    encoder = tiny_encoder(kernel_size=5).eval()
    shortest = encoder.frontend.min_samples()
    assert encoder(torch.randn(1, shortest))[-1].shape[1] == 1
    with pytest.raises(ValueError, match="at least 960 samples"):
        encoder(torch.randn(1, shortest - 1))
    with pytest.raises(ValueError, match="at least"):
        encoder(torch.zeros(1, 0))
    with pytest.raises(ValueError, match="expected waveforms of shape"):
        encoder(torch.randn(16000))


def test_mask_embedding_replaces_masked_frames() -> None:
    encoder = tiny_encoder(kernel_size=5).eval()
    latents, padding = encoder.frontend(torch.randn(1, 8000))
    mask = torch.zeros(padding.shape, dtype=torch.bool)
    mask[0, 3:8] = True
    embedded = encoder.embed(latents, mask)
    positions = encoder.positional_encoding(embedded)
    assert torch.allclose(embedded[0, 3:8] - positions[0, 3:8],
                          encoder.mask_emb.expand(5, -1), atol=1e-6)
    with pytest.raises(ValueError, match="mask of shape"):
        encoder.embed(latents, mask[:, :-1])


def cells(encoder) -> list:
    return [layer.mha_layer for layer in encoder.context.layers]


def test_summary_mixing_options_of_the_architecture() -> None:
    """The cell gets the Conformer's Swish unless the architecture names another activation."""
    default = cells(tiny_encoder(kernel_size=5))
    assert all(isinstance(cell.combiner_activation, Swish) for cell in default)
    assert all(cell.dropout == 0.0 and cell.summary_dropout == "frame" for cell in default)
    named = tiny_encoder(
        activation=torch.nn.GELU, local_proj_out_dim=16, use_layernorm=False, dropout=0.1,
        summary_dropout="utterance",
    )
    for cell in cells(named):
        assert isinstance(cell.combiner_activation, torch.nn.GELU)
        assert isinstance(cell.summary_proj[1], torch.nn.GELU)
        assert cell.local_out_dim == 16 and not cell.use_layernorm
        assert cell.dropout == 0.1 and cell.summary_dropout == "utterance"
    with pytest.raises(ValueError, match="unknown SummaryMixing option 'summary_activation'"):
        tiny_encoder(summary_activation=torch.nn.GELU)


def test_utterances_longer_than_the_positional_table_are_encoded() -> None:
    """Past max_positions the same sinusoids are computed on the fly: an encoder with a short
    table gives what one with a long table gives."""
    torch.manual_seed(0)
    short = tiny_encoder().eval()
    short.max_positions = 20
    long_table = W2V2Encoder(short.frontend, short.context, d_model=32, max_positions=400)
    long_table.load_state_dict(
        {k: v for k, v in short.state_dict().items() if "positional" not in k}, strict=False
    )
    wavs = torch.randn(1, 16000)  # 48 frames > 20
    with torch.no_grad():
        for a, b in zip(short(wavs), long_table.eval()(wavs), strict=True):
            torch.testing.assert_close(a, b)
