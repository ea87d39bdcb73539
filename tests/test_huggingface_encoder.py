"""A Hugging Face wav2vec 2.0 checkpoint as the downstream encoder (issue 9, the w2v2 rows).

Every model here is a tiny randomly initialised ``transformers.Wav2Vec2Model`` saved to a temp
folder with ``save_pretrained`` (no download): a base-like one (group-norm front end, no
attention mask, as ``facebook/wav2vec2-base``) and a large-like one (layer-norm front end, stable
layer norm, attention mask, as ``facebook/wav2vec2-large-lv60``). The references are the
``transformers`` model itself and its ``Wav2Vec2FeatureExtractor``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

from summarymixing.downstream import HiddenStates
from summarymixing.downstream.hf_encoder import HFWav2Vec2Encoder
from summarymixing.downstream.huggingface import huggingface_source
from summarymixing.export import load_pretrained

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 64, "conv_dim": (16, 16, 16, 16), "conv_kernel": (10, 8, 4, 4),
    "conv_stride": (5, 4, 4, 2), "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
}  # 160 samples per frame (100 frames/s), receptive field 345 samples
LENGTHS = (4000, 2500, 1234)  # samples; the shortest is not a whole number of frames


def frames(samples: int) -> int:
    """Output frames of the tiny convolution stack (no padding) for ``samples`` samples."""
    for kernel, stride in zip(TINY["conv_kernel"], TINY["conv_stride"], strict=True):
        samples = (samples - kernel) // stride + 1
    return samples


def save_tiny(folder: Path, large: bool, do_normalize: bool = True) -> Path:
    """Save a random tiny wav2vec 2.0 and its feature extractor to ``folder``."""
    torch.manual_seed(0)
    norm = "layer" if large else "group"
    config = Wav2Vec2Config(**TINY, feat_extract_norm=norm, do_stable_layer_norm=large)
    Wav2Vec2Model(config).save_pretrained(folder)
    extractor = Wav2Vec2FeatureExtractor(do_normalize=do_normalize, return_attention_mask=large)
    extractor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("hf_base"), large=False)


@pytest.fixture(scope="module")
def large_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("hf_large"), large=True)


@pytest.fixture(params=["base", "large"])
def folder(request, base_folder, large_folder) -> Path:
    return {"base": base_folder, "large": large_folder}[request.param]


def padded_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Three utterances of ``LENGTHS`` samples (offset and scaled differently), zero-padded:
    ``(B, S)`` waveforms, ``(B,)`` relative lengths, and the unpadded utterances."""
    generator = torch.Generator().manual_seed(seed)
    utterances = [
        0.3 * (i + 1) * torch.randn(n, generator=generator) + 0.1 * i
        for i, n in enumerate(LENGTHS)
    ]
    wavs = torch.zeros(len(LENGTHS), max(LENGTHS))
    for row, utterance in zip(wavs, utterances, strict=True):
        row[: len(utterance)] = utterance
    lens = torch.tensor(LENGTHS, dtype=torch.float) / max(LENGTHS)
    return wavs, lens, utterances


def test_hidden_states_equal_the_transformers_model(folder):
    encoder = load_pretrained(folder)
    assert isinstance(encoder, HFWav2Vec2Encoder) and not encoder.training
    assert encoder.num_hidden_states == TINY["num_hidden_layers"] + 1
    assert encoder.d_model == TINY["hidden_size"]
    reference = Wav2Vec2Model.from_pretrained(folder).eval()
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(folder)
    _, _, utterances = padded_batch()
    for utterance in utterances:
        # the feature extractor's own normalisation (numpy), then the model called directly
        inputs = extractor(utterance.numpy(), sampling_rate=16000, return_tensors="pt")
        assert inputs.input_values.std() == pytest.approx(1.0, abs=1e-3)
        with torch.no_grad():
            expected = reference(inputs.input_values, output_hidden_states=True).hidden_states
            hidden = encoder(utterance[None], torch.ones(1))
        assert len(hidden) == len(expected) == TINY["num_hidden_layers"] + 1
        for ours, theirs in zip(hidden, expected, strict=True):
            assert ours.shape == theirs.shape == (1, frames(len(utterance)), 32)
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_do_normalize_false_feeds_the_raw_waveform(tmp_path):
    folder = save_tiny(tmp_path, large=True, do_normalize=False)
    encoder = load_pretrained(folder)
    reference = Wav2Vec2Model.from_pretrained(folder).eval()
    wav = 0.2 * torch.randn(1, 3000) + 0.5
    with torch.no_grad():
        expected = reference(wav, output_hidden_states=True).hidden_states
        hidden = encoder(wav, torch.ones(1))
    torch.testing.assert_close(hidden[-1], expected[-1], atol=1e-5, rtol=1e-4)


def test_an_utterance_alone_equals_its_padded_row(folder):
    """Large-like: one batch with an attention mask; base-like: one utterance at a time."""
    encoder = load_pretrained(folder)
    assert encoder.per_utterance == (encoder.model.config.feat_extract_norm == "group")
    wavs, lens, utterances = padded_batch()
    with torch.no_grad():
        batch = encoder(wavs, lens)
        for row, utterance in enumerate(utterances):
            alone = encoder(utterance[None], torch.ones(1))
            count = frames(len(utterance))
            for layer, (padded, single) in enumerate(zip(batch, alone, strict=True)):
                torch.testing.assert_close(
                    padded[row, :count], single[0], atol=1e-5, rtol=1e-4, msg=f"layer {layer}"
                )
                assert not padded[row, count:].any(), "padded frames must be zero"


def test_group_norm_batch_without_mask_is_not_padding_exact(base_folder):
    """Why base-like models run one utterance at a time: the padded batch, as Hugging Face runs
    it (no attention mask), changes a padded utterance's hidden states."""
    batched = HFWav2Vec2Encoder(str(base_folder), per_utterance=False).eval()
    exact = HFWav2Vec2Encoder(str(base_folder)).eval()
    wavs, lens, _ = padded_batch()
    with torch.no_grad():
        ours, theirs = exact(wavs, lens), batched(wavs, lens)
    valid = frames(LENGTHS[2])
    torch.testing.assert_close(ours[-1][0], theirs[-1][0], atol=1e-5, rtol=1e-4)  # unpadded row
    assert (ours[-1][2, :valid] - theirs[-1][2, :valid]).abs().max() > 1e-2


def test_frozen_encoder_has_no_gradients_and_stays_in_eval_mode(folder):
    states = HiddenStates(load_pretrained(folder), freeze=True).train()
    encoder = states.encoder
    assert not encoder.freeze, "the SpeechBrain wrapper's own freeze stays off"
    assert not any(module.training for module in encoder.modules())
    assert not any(p.requires_grad for p in encoder.parameters())
    wavs, lens, _ = padded_batch()
    out = states(wavs, lens)
    assert out.shape == (3, frames(max(LENGTHS)), 3, 32)
    assert not out.requires_grad


def test_fine_tuning_trains_the_whole_model(folder):
    states = HiddenStates(load_pretrained(folder), freeze=False).train()
    encoder = states.encoder
    assert encoder.model.training and all(p.requires_grad for p in encoder.parameters())
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.1)
    wavs, lens, _ = padded_batch()
    torch.manual_seed(0)  # the checkpoint's dropout and layer drop apply in training
    states(wavs, lens).pow(2).mean().backward()
    conv = encoder.model.feature_extractor.conv_layers[0].conv.weight
    assert conv.grad is not None and conv.grad.abs().sum() > 0  # the CNN front end too
    optimizer.step()
    changed = [k for k, v in encoder.state_dict().items() if not torch.equal(v, before[k])]
    assert "model.feature_extractor.conv_layers.0.conv.weight" in changed
    assert any(k.startswith("model.encoder.layers.1.") for k in changed)


def test_dispatch_folder_prefix_and_hub_id(base_folder, tmp_path):
    assert huggingface_source(base_folder) == str(base_folder)
    assert huggingface_source(f"hf:{base_folder}") == str(base_folder)
    assert huggingface_source("facebook/wav2vec2-large-lv60") == "facebook/wav2vec2-large-lv60"
    assert huggingface_source(tmp_path / "missing.pt") is None
    assert huggingface_source(tmp_path) is None  # a folder without config.json
    prefixed = load_pretrained(f"hf:{base_folder}", expected_arch={"d_model": 32, "num_layers": 2,
                                                                   "feat_extract_norm": "group"})
    direct = load_pretrained(base_folder)
    pairs = zip(prefixed.state_dict().values(), direct.state_dict().values(), strict=True)
    for ours, theirs in pairs:
        assert torch.equal(ours, theirs)


def test_expected_arch_is_checked_or_refused(large_folder):
    with pytest.raises(ValueError, match="key 'num_layers': expected 24, found 2"):
        load_pretrained(large_folder, expected_arch={"num_layers": 24})
    with pytest.raises(ValueError, match="expected_arch key 'attention_type' does not apply"):
        load_pretrained(large_folder, expected_arch={"attention_type": "SummaryMixing"})


def test_clear_errors_for_incomplete_folders(base_folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no architecture.ckpt .* and no config.json"):
        load_pretrained(empty)
    with pytest.raises(FileNotFoundError, match=f"no config.json in {empty}"):
        load_pretrained(f"hf:{empty}")
    no_preprocessor = tmp_path / "no_preprocessor"
    Wav2Vec2Model(Wav2Vec2Config(**TINY)).save_pretrained(no_preprocessor)
    with pytest.raises(FileNotFoundError, match="no preprocessor_config.json"):
        load_pretrained(no_preprocessor)
    hubert = tmp_path / "hubert"
    hubert.mkdir()
    config = json.loads((base_folder / "config.json").read_text())
    (hubert / "config.json").write_text(json.dumps({**config, "model_type": "hubert"}))
    with pytest.raises(ValueError, match="expected model_type 'wav2vec2'.*got 'hubert'"):
        load_pretrained(hubert)


def test_too_short_or_bad_lengths_are_refused(large_folder):
    encoder = load_pretrained(large_folder)
    assert frames(345) == 1 and frames(344) == 0
    assert encoder(torch.randn(1, 345), torch.ones(1))[-1].shape == (1, 1, 32)
    with pytest.raises(ValueError, match="got one of 344 samples"):
        encoder(torch.randn(2, 1000), torch.tensor([1.0, 0.344]))
    with pytest.raises(ValueError, match=r"relative lengths in \(0, 1\]"):
        encoder(torch.randn(2, 1000), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"batch >= 1, samples\), got \(0, 1000\)"):
        encoder(torch.zeros(0, 1000), torch.zeros(0))


def test_iemocap_recipe_runs_on_a_huggingface_encoder(mini_corpora, large_folder, tmp_path):
    """The downstream YAML is unchanged: only ``--pretrained_path`` names the HF folder."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path / "iemocap"
        args = [str(ROOT / "hparams" / "iemocap" / "mini.yaml"), f"--output_folder={out}",
                f"--data_folder={mini_corpora / 'IEMOCAP_full_release'}",
                f"--pretrained_path={large_folder}", "--folds=[1]", "--number_of_epochs=2"]
        summary = importlib.import_module("recipes.iemocap.train").main(args)
    finally:
        torch.set_num_threads(threads)
    metrics = json.loads((out / "fold_1" / "metrics.json").read_text())
    assert len(metrics["layer_weights"]) == TINY["num_hidden_layers"] + 1
    assert sum(metrics["layer_weights"]) == pytest.approx(1.0, abs=1e-5)
    assert 0.0 <= summary["mean"]["emo_accuracy"] <= 1.0
    assert summary["folds"]["1"] == metrics["test"]
