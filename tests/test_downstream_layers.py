"""Unit tests of summarymixing.downstream: layer sum, frozen wrapper, cache, data, reports."""

from __future__ import annotations

import json

import pytest
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from torch import nn

from summarymixing.downstream import HiddenStates, WeightedLayerSum
from summarymixing.downstream.cache import FeatureCache, fingerprint
from summarymixing.downstream.data import add_label_pipeline, load_manifest
from summarymixing.downstream.reporting import plot_layer_weights, write_metrics
from summarymixing.w2v2.encoder import build_encoder

TINY_ARCH = {
    "n_mels": 40, "cnn_channels": [32, 32], "d_model": 32, "num_layers": 2, "nhead": 4,
    "d_ffn": 64, "conv_kernel_size": 3, "local_proj_hid_dim": [32], "summary_hid_dim": [32],
}  # fmt: skip


@pytest.fixture()
def encoder() -> nn.Module:
    torch.manual_seed(0)
    return build_encoder(TINY_ARCH)


def test_weighted_sum_is_a_convex_combination():
    mix = WeightedLayerSum(3, layer_norm=False)
    with torch.no_grad():
        mix.logits.copy_(torch.tensor([0.0, 1.0, -1.0]))
    hidden = torch.randn(2, 5, 3, 4)  # (B, T, L + 1, D)
    weights = mix.weights()
    assert torch.allclose(weights.sum(), torch.tensor(1.0)) and (weights > 0).all()
    expected = sum(weights[i] * hidden[:, :, i] for i in range(3))
    assert torch.allclose(mix(hidden), expected, atol=1e-6)


def test_weighted_sum_learns_and_checks_shapes():
    mix = WeightedLayerSum(3)
    mix(torch.randn(2, 5, 3, 4)).pow(2).sum().backward()
    assert mix.logits.grad is not None and mix.logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"expected hidden states of shape \(batch, time, 3, D\)"):
        mix(torch.randn(2, 5, 4, 4))


def test_hidden_states_frozen_has_no_graph_and_stays_in_eval(encoder):
    states = HiddenStates(encoder, freeze=True).train()
    out = states(torch.randn(2, 8000), torch.tensor([1.0, 0.6]))
    assert out.shape[2:] == (3, 32) and not out.requires_grad
    assert not encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())
    with pytest.raises(ValueError, match="freeze=False"):
        states.set_frozen(False)


def test_hidden_states_fine_tune_pause_and_resume(encoder):
    states = HiddenStates(encoder, freeze=False).train()
    assert encoder.training and all(p.requires_grad for p in encoder.parameters())
    states.set_frozen(True)  # first steps of fine-tuning: no graph, eval mode
    assert not states(torch.randn(1, 4000), torch.ones(1)).requires_grad
    assert not encoder.training
    states.set_frozen(False)
    assert states(torch.randn(1, 4000), torch.ones(1)).requires_grad and encoder.training


def test_hidden_states_padding_consistency(encoder):
    """Each utterance alone equals its row of a padded batch (up to its length)."""
    states = HiddenStates(encoder)
    short, long = torch.randn(6000), torch.randn(9000)
    batch = torch.stack([torch.cat([short, torch.zeros(3000)]), long])
    padded = states(batch, torch.tensor([6000 / 9000, 1.0]))
    alone = states(short[None], torch.ones(1))
    frames = alone.shape[1]
    assert torch.allclose(padded[0, :frames], alone[0], atol=1e-4)


def test_feature_cache_round_trip_and_fingerprint(tmp_path, encoder):
    data = DynamicItemDataset(
        {"spk/a.wav": {"sig": torch.randn(8000)}, "b": {"sig": torch.randn(12000)}}
    )
    states = HiddenStates(encoder)
    cache = FeatureCache(tmp_path, dtype=torch.float32, batch_size=2)
    assert cache.fill([data], states, torch.device("cpu")) == 2
    assert cache.fill([data], states, torch.device("cpu")) == 0  # already cached
    cache.add_pipeline([data])
    data.set_output_keys(["id", "sig", "hidden"])
    for item in data:
        direct = states(item["sig"][None], torch.ones(1))[0]
        assert torch.allclose(item["hidden"], direct, atol=1e-4)
    other = build_encoder(TINY_ARCH)
    assert fingerprint(HiddenStates(other)) != fingerprint(states)


def test_empty_manifest_and_missing_manifest(tmp_path):
    (tmp_path / "empty.csv").write_text("ID,duration,wav\n")
    with pytest.raises(ValueError, match="empty.csv: expected a manifest with at least one"):
        load_manifest(tmp_path / "empty.csv")
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        load_manifest(tmp_path / "nothere.csv")


def test_unseen_label_is_named(tmp_path):
    train = DynamicItemDataset({"a": {"emo": "neu"}, "b": {"emo": "ang"}})
    valid = DynamicItemDataset({"c": {"emo": "ang"}})
    test = DynamicItemDataset({"d": {"emo": "neu"}, "e": {"emo": "fru"}})
    with pytest.raises(ValueError, match="test utterance 'e': emo label 'fru' not seen"):
        add_label_pipeline("emo", train, {"valid": valid, "test": test}, tmp_path / "emo.txt")


def test_reports(tmp_path):
    path = write_metrics(tmp_path / "m.json", {"test": {"accuracy": 0.5}})
    assert json.loads(path.read_text()) == {"test": {"accuracy": 0.5}}
    with pytest.raises(ValueError):
        write_metrics(tmp_path / "bad.json", {"loss": float("nan")})
    png = plot_layer_weights([0.1, 0.2, 0.7], tmp_path / "w.png", title="weights")
    assert png.read_bytes()[:4] == b"\x89PNG"
