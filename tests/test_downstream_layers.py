"""Unit tests of summarymixing.downstream: layer sum, frozen wrapper, optimizers and schedulers
of the shared Brain, cache, data, reports."""

from __future__ import annotations

import json

import pytest
import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.nnet.schedulers import LinearScheduler, NewBobScheduler
from speechbrain.utils.checkpoints import Checkpointer
from tiny_models import tiny_encoder
from torch import nn

from summarymixing.downstream import HiddenStates, WeightedLayerSum
from summarymixing.downstream.brain import DownstreamBrain
from summarymixing.downstream.cache import FeatureCache, fingerprint
from summarymixing.downstream.data import add_label_pipeline, load_manifest
from summarymixing.downstream.reporting import plot_layer_weights, write_metrics


@pytest.fixture()
def encoder() -> nn.Module:
    torch.manual_seed(0)
    return tiny_encoder()


def test_weighted_sum_is_a_convex_combination():
    mix = WeightedLayerSum(3, layer_norm=False)
    with torch.no_grad():
        mix.logits.copy_(torch.tensor([0.0, 1.0, -1.0]))
    hidden = torch.randn(2, 5, 3, 4)  # (B, T, L + 1, D)
    weights = mix.weights()
    assert torch.allclose(weights.sum(), torch.tensor(1.0)) and (weights > 0).all()
    expected = sum(weights[i] * hidden[:, :, i] for i in range(3))
    assert torch.allclose(mix(hidden), expected, atol=1e-6)


def test_weighted_sum_has_no_layer_norm_by_default():
    """The authors' read-out: a plain softmax-weighted sum of the raw hidden states."""
    mix = WeightedLayerSum(2)
    assert not mix.layer_norm
    hidden = torch.randn(1, 3, 2, 4) * 5 + 2  # far from zero mean / unit variance
    assert torch.allclose(mix(hidden), hidden.mean(dim=2), atol=1e-6)
    normed = WeightedLayerSum(2, layer_norm=True)(hidden)
    expected = nn.functional.layer_norm(hidden, (4,)).mean(dim=2)
    assert torch.allclose(normed, expected, atol=1e-6)


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


@pytest.mark.parametrize("samples", [1234, 6000, 7777, 8999])
def test_frame_lengths_count_the_frames_an_utterance_has_alone(encoder, samples):
    """Relative frame lengths give exactly the frames of the utterance encoded alone (scaling the
    waveform's relative length by T is off by one frame for some lengths)."""
    states = HiddenStates(encoder)
    batch = torch.zeros(2, 9000)
    batch[0, :samples] = torch.randn(samples)
    padded = states(batch, torch.tensor([samples / 9000, 1.0]))
    alone = states(batch[:1, :samples], torch.ones(1)).shape[1]
    lens = states.frame_lengths(torch.tensor([samples / 9000, 1.0]), 9000, padded.shape[1])
    assert (lens * padded.shape[1]).round().long().tolist() == [alone, padded.shape[1]]


def test_frame_lengths_fall_back_to_waveform_lengths_without_output_lengths():
    class Toy(nn.Module):
        def forward(self, wavs, wav_lens):
            return [wavs.unflatten(1, (-1, 4))]

    lens = torch.tensor([0.5, 1.0])
    assert HiddenStates(Toy()).frame_lengths(lens, 16, 4) is lens


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
    other = tiny_encoder()
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


# ------------------------------------------------------------- optimizers and schedulers


class ToyEncoder(nn.Module):
    """Two "hidden states" from a waveform: ``(B, S)`` -> 2 x ``(B, S / 4, 4)``."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, wavs, wav_lens):
        x = self.proj(wavs.unflatten(1, (-1, 4)))
        return [x, x.tanh()]


class ToyBrain(DownstreamBrain):
    def stage_stats(self, stage):
        return {"error_rate": 0.5}


def toy_brain(tmp_path, freeze=True, **hparams) -> ToyBrain:
    """A DownstreamBrain over a toy encoder, a 2-state layer sum and a linear head."""
    weighted_sum, head = WeightedLayerSum(2), nn.Linear(4, 3)
    encoder = HiddenStates(ToyEncoder(), freeze=freeze)
    defaults = {
        "encoder": encoder, "weighted_sum": weighted_sum, "cache_features": False,
        "wav_augment": None, "feat_augment": None, "freeze_encoder_steps": 0,
        "lr_annealing": NewBobScheduler(0.0002, annealing_factor=0.8, patient=0),
        "encoder_opt_class": lambda params: torch.optim.Adam(params, lr=1e-5),
        "lr_annealing_encoder": NewBobScheduler(1e-5, annealing_factor=0.9, patient=0),
    }
    brain = ToyBrain(
        modules={"encoder": encoder, "weighted_sum": weighted_sum, "head": head},
        opt_class=lambda params: torch.optim.Adam(params, lr=0.0002),
        hparams={**defaults, **hparams},
        run_opts={"device": "cpu"},
        checkpointer=Checkpointer(tmp_path),
    )
    brain.init_optimizers()
    return brain


def optimizer_params(optimizer) -> list[int]:
    return [id(p) for group in optimizer.param_groups for p in group["params"]]


def weights_options():
    return {
        "weights_opt_class": lambda params: torch.optim.Adam(params, lr=0.01),
        "lr_annealing_weights": NewBobScheduler(
            0.01, improvement_threshold=0.0025, annealing_factor=0.9
        ),
    }


@pytest.mark.parametrize("freeze", [True, False])
def test_layer_weights_get_their_own_optimizer(tmp_path, freeze):
    brain = toy_brain(tmp_path, freeze=freeze, **weights_options())
    logits = brain.hparams.weighted_sum.logits
    expected = {"head", "weights"} | (set() if freeze else {"encoder"})
    assert set(brain.optimizers_dict) == expected
    weights = brain.optimizers_dict["weights"]
    assert optimizer_params(weights) == [id(logits)]
    assert weights.param_groups[0]["lr"] == 0.01
    assert brain.optimizers_dict["head"].param_groups[0]["lr"] == 0.0002
    # every trainable parameter in exactly one optimizer
    owned = [i for opt in brain.optimizers_dict.values() for i in optimizer_params(opt)]
    trainable = [id(p) for p in brain.modules.parameters() if p.requires_grad]
    assert sorted(owned) == sorted(trainable) and len(set(owned)) == len(owned)
    recoverables = brain.checkpointer.recoverables
    assert recoverables["optimizer_weights"] is weights
    assert recoverables["lr_annealing_weights"] is brain.hparams.lr_annealing_weights


def test_without_weights_optimizer_the_head_owns_the_weights(tmp_path):
    brain = toy_brain(tmp_path)
    assert set(brain.optimizers_dict) == {"head"}
    assert id(brain.hparams.weighted_sum.logits) in optimizer_params(brain.optimizer)


def test_weights_step_with_their_own_learning_rate(tmp_path):
    """One Adam step moves each logit by ~lr: 0.01 for the weights, not the head's 2e-4."""
    brain = toy_brain(tmp_path, **weights_options())
    batch = sb.dataio.batch.PaddedBatch([{"id": "a", "sig": torch.randn(32)}])
    feats, _ = brain.features(batch, sb.Stage.TRAIN)
    before = brain.hparams.weighted_sum.logits.detach().clone()
    brain.modules.head(feats).pow(2).sum().backward()
    for optimizer in brain.optimizers_dict.values():
        optimizer.step()
    step = (brain.hparams.weighted_sum.logits.detach() - before).abs()
    assert torch.allclose(step, torch.full((2,), 0.01), rtol=1e-3)


def test_newbob_anneals_head_and_weights_on_the_chosen_metric(tmp_path):
    brain = toy_brain(tmp_path, lr_annealing_metric="error_rate", **weights_options())
    lrs = brain.anneal_learning_rates(1, {"loss": 2.0, "error_rate": 0.5})
    assert lrs == {"lr": 0.0002, "lr_weights": 0.01}  # the rates epoch 1 trained with
    # the loss improves but the error rate does not: both rates are annealed by their factor
    lrs = brain.anneal_learning_rates(2, {"loss": 1.0, "error_rate": 0.5})
    assert lrs == {"lr": 0.0002, "lr_weights": 0.01}
    head, weights = (brain.optimizers_dict[k].param_groups[0]["lr"] for k in ("head", "weights"))
    assert head == pytest.approx(0.0002 * 0.8) and weights == pytest.approx(0.01 * 0.9)
    with pytest.raises(ValueError, match="lr_annealing_metric: expected one of"):
        brain.anneal_learning_rates(3, {"loss": 1.0})


def test_linear_scheduler_follows_the_epoch(tmp_path):
    """VoxCeleb's head schedule: 1e-3 -> 1e-4 linearly over 15 epochs, whatever the loss."""
    brain = toy_brain(tmp_path, lr_annealing=LinearScheduler(1e-3, 1e-4, 15))
    head = brain.optimizers_dict["head"]
    for epoch in range(1, 15):
        trained_with = brain.anneal_learning_rates(epoch, {"loss": float(epoch)})["lr"]
        assert trained_with == pytest.approx(1e-3 - (epoch - 1) * 9e-4 / 14)
        assert head.param_groups[0]["lr"] == pytest.approx(1e-3 - epoch * 9e-4 / 14)
    assert head.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_unsupported_scheduler_and_weights_scheduler_alone(tmp_path):
    with pytest.raises(TypeError, match="lr_annealing: expected a NewBobScheduler, "):
        toy_brain(tmp_path, lr_annealing=torch.optim.lr_scheduler.StepLR)
    with pytest.raises(ValueError, match="expected weights_opt_class with lr_annealing_weights"):
        toy_brain(tmp_path, lr_annealing_weights=NewBobScheduler(0.01))
