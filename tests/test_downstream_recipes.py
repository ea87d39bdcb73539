"""End-to-end runs of the four downstream recipes on the mini corpora (CPU, tiny encoder).

The encoder is a randomly initialised tiny ``W2V2Encoder`` exported with ``export_encoder``:
learning is what the heads do, and the softmax layer sum includes the input embeddings (front
end output), which carry the prosody, speaker and phonetic cues the mini corpora are built on.
Runs use one intra-op thread: the tiny LSTMs are an order of magnitude slower with two threads
on a busy two-core machine.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
from pathlib import Path

import pytest
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from tiny_models import tiny_export

from data_prep.iemocap import prepare_iemocap
from recipes.iemocap.train import dataio_prepare, prepare_speaker_folds, run_fold
from summarymixing.downstream.classification import ClassificationBrain
from summarymixing.export import load_pretrained
from summarymixing.training import NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]
NUM_LAYERS = 2


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return tiny_export(tmp_path_factory.mktemp("encoder") / "tiny_w2v2", num_layers=NUM_LAYERS)


@pytest.fixture(scope="module")
def iemocap_manifests(mini_corpora: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``prep_folder``: session folds in ``session/``, MP3S speaker folds in ``speaker/``."""
    folder = tmp_path_factory.mktemp("iemocap_manifests")
    prepare_iemocap(str(mini_corpora / "IEMOCAP_full_release"), str(folder / "session"))
    prepare_speaker_folds(str(folder / "session"), str(folder / "speaker"))
    return folder


def run_recipe(task: str, yaml: str, out: Path, **overrides: object) -> dict:
    """Run ``recipes.<task>.train`` with ``hparams/<task>/<yaml>`` and ``--key=value`` args."""
    args = [str(ROOT / "hparams" / task / yaml), f"--output_folder={out}"]
    args += [f"--{key}={value}" for key, value in overrides.items()]
    return importlib.import_module(f"recipes.{task}.train").main(args)


def check_outputs(folder: Path) -> dict:
    """metrics.json, the per-epoch log and the layer-weights PNG exist; return the metrics."""
    metrics = json.loads((folder / "metrics.json").read_text())
    log = (folder / "train_log.txt").read_text()
    assert "epoch: 1" in log and "test" in log
    assert (folder / "layer_weights.png").read_bytes()[:4] == b"\x89PNG"
    assert len(metrics["layer_weights"]) == NUM_LAYERS + 1
    assert sum(metrics["layer_weights"]) == pytest.approx(1.0, abs=1e-5)
    return metrics


def test_slurp_learns_scenarios(mini_corpora, tiny_encoder, tmp_path):
    out = tmp_path / "slurp"
    metrics = run_recipe("slurp", "mini.yaml", out, data_folder=mini_corpora / "slurp",
                         pretrained_path=tiny_encoder)
    assert metrics == check_outputs(out)
    test = metrics["test"]
    # the shipped protocol's structure: scenario only (6 scenarios, the largest 6/21 of test)
    assert set(test) == {"loss", "scenario_accuracy", "scenario_error_rate"}
    assert test["scenario_accuracy"] > 0.5
    log = (out / "train_log.txt").read_text()
    assert "lr_weights: 1.00e-02" in log  # the layer weights' own optimizer


def test_iemocap_learns_emotions_over_folds(mini_corpora, tiny_encoder, iemocap_manifests,
                                            tmp_path):
    out = tmp_path / "iemocap"
    summary = run_recipe("iemocap", "mini.yaml", out, folds="[1, 4]",
                         data_folder=mini_corpora / "IEMOCAP_full_release",
                         pretrained_path=tiny_encoder, prep_folder=iemocap_manifests)
    assert summary == json.loads((out / "metrics.json").read_text())
    for fold in (1, 4):
        assert check_outputs(out / f"fold_{fold}")["test"]["emo_accuracy"] > 0.5  # chance 0.25
        # each fold's experiment folder: the YAML as this fold resolved it, the recipe that ran
        saved = (out / f"fold_{fold}" / "hyperparams.yaml").read_text()
        assert re.search(rf"^fold: {fold}\b", saved, re.MULTILINE), saved[:300]
        recipe = ROOT / "recipes" / "iemocap" / "train.py"
        assert (out / f"fold_{fold}" / "train.py").read_text() == recipe.read_text()
    accuracies = [summary["folds"][f]["emo_accuracy"] for f in ("1", "4")]
    assert summary["mean"]["emo_accuracy"] == pytest.approx(sum(accuracies) / 2)
    with pytest.raises(ValueError, match=r"subset of 1..5 \(fold_protocol session\)"):
        run_recipe("iemocap", "mini.yaml", out, folds="[6]", fold_protocol="session",
                   data_folder="unused", pretrained_path=tiny_encoder)


def test_voxceleb_verification(mini_corpora, tiny_encoder, tmp_path):
    out = tmp_path / "voxceleb"
    metrics = run_recipe("voxceleb", "mini.yaml", out, data_folder=mini_corpora / "voxceleb1",
                         pretrained_path=tiny_encoder)
    test = check_outputs(out)["test"]
    assert metrics["test"] == test
    assert test["trials"] == len((out / "manifests" / "trials.txt").read_text().splitlines())
    assert test["EER"] < 0.35, test  # chance level is 0.5
    assert 0.0 <= test["minDCF"] <= 1.0


def test_commonvoice_asr_learns_and_decodes(mini_corpora, tiny_encoder, tmp_path):
    out = tmp_path / "asr"
    metrics = run_recipe("asr_commonvoice", "mini.yaml", out,
                         data_folder=mini_corpora / "cv-corpus-mini" / "cy",
                         pretrained_path=tiny_encoder)
    test = check_outputs(out)["test"]
    assert metrics["test"] == test
    assert test["WER"] < 95.0 and test["CER"] < 70.0, test  # greedy decoding: it learns
    for key in ("WER_beam", "CER_beam"):  # the extra beam-search metric
        assert 0.0 <= test[key] < 1000.0, key  # percentages; insertions can exceed 100
    assert list((out / "save" / "tokenizer").glob("*.model"))


def load_iemocap_hparams(tiny_encoder, manifests, out, **overrides) -> dict:
    overrides = {"data_folder": "unused", "pretrained_path": str(tiny_encoder),
                 "prep_folder": str(manifests), "output_folder": str(out),
                 "number_of_epochs": 1, **overrides}
    with open(ROOT / "hparams" / "iemocap" / "mini.yaml", encoding="utf-8") as fin:
        return load_hyperpyyaml(fin, overrides)


def changed_parameters(encoder: torch.nn.Module, path: Path) -> int:
    reference = load_pretrained(path).state_dict()
    return sum(not torch.equal(v, reference[k]) for k, v in encoder.state_dict().items())


def test_frozen_mode_freezes_and_fine_tuning_updates(tiny_encoder, iemocap_manifests, tmp_path):
    frozen = load_iemocap_hparams(tiny_encoder, iemocap_manifests, tmp_path / "frozen")
    run_fold(frozen, {"device": "cpu"})
    encoder = frozen["pretrained"]
    assert changed_parameters(encoder, tiny_encoder) == 0
    assert all(not p.requires_grad and p.grad is None for p in encoder.parameters())
    assert not torch.equal(frozen["weighted_sum"].logits, torch.zeros(3))  # the head learned

    paused = load_iemocap_hparams(tiny_encoder, iemocap_manifests, tmp_path / "paused",
                                  freeze_encoder=False, freeze_encoder_steps=10_000)
    run_fold(paused, {"device": "cpu"})
    assert changed_parameters(paused["pretrained"], tiny_encoder) == 0

    tuned = load_iemocap_hparams(tiny_encoder, iemocap_manifests, tmp_path / "tuned",
                                 freeze_encoder=False, encoder_lr=0.001)
    metrics = run_fold(tuned, {"device": "cpu"})
    assert not metrics["frozen_encoder"]
    assert changed_parameters(tuned["pretrained"], tiny_encoder) > 0


@pytest.mark.parametrize("freeze_encoder", [True, False])
def test_a_nan_utterance_never_reaches_the_weights(tiny_encoder, iemocap_manifests, tmp_path,
                                                   freeze_encoder):
    """A training utterance with NaN samples: its step is skipped and counted, every weight
    (head, layer weights with their own optimizer, fine-tuned encoder) stays finite; past the
    patience, training stops naming it."""
    hparams = load_iemocap_hparams(tiny_encoder, iemocap_manifests, tmp_path / "run",
                                   freeze_encoder=freeze_encoder, encoder_lr=0.001)
    datasets, label_encoders = dataio_prepare(hparams)
    poisoned = datasets["train"].data_ids[3]

    class PoisonedBrain(ClassificationBrain):
        def compute_forward(self, batch, stage):
            if stage == sb.Stage.TRAIN and poisoned in batch.id:
                batch.sig.data[batch.id.index(poisoned)] = float("nan")
            return super().compute_forward(batch, stage)

    def brain(hparams: dict, **run_opts: object) -> PoisonedBrain:
        return PoisonedBrain(
            modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
            run_opts={"device": "cpu", **run_opts}, checkpointer=hparams["checkpointer"],
            label_encoders=label_encoders,
        )

    trained = brain(hparams)
    trained.fit_and_test(datasets)
    assert trained.nonfinite_count == 1 and trained.optimizer_step > 0
    assert set(trained.optimizers_dict) == {"head", "weights"} | (
        set() if freeze_encoder else {"encoder"})
    for name, param in [*trained.modules.named_parameters(),
                        *hparams["pretrained"].named_parameters()]:
        assert torch.isfinite(param).all(), name
    assert (changed_parameters(hparams["pretrained"], tiny_encoder) > 0) != freeze_encoder

    stopped = load_iemocap_hparams(tiny_encoder, iemocap_manifests, tmp_path / "stopped",
                                   freeze_encoder=freeze_encoder, encoder_lr=0.001)
    with pytest.raises(NonFiniteLossError, match=rf"nonfinite_patience=0.*{poisoned}"):
        brain(stopped, nonfinite_patience=0).fit_and_test(datasets)


def test_speechbrain_checkpoint_interval_applies_downstream(tiny_encoder, iemocap_manifests,
                                                            tmp_path):
    """Downstream recipes keep SpeechBrain's ``--ckpt_interval_steps`` (pre-training refuses it
    for its own ``ckpt_every_steps``, see tests/test_training.py)."""
    hparams = load_iemocap_hparams(tiny_encoder, iemocap_manifests, tmp_path)
    datasets, label_encoders = dataio_prepare(hparams)
    saved_at = []

    class Recording(ClassificationBrain):
        def _save_intra_epoch_ckpt(self):
            super()._save_intra_epoch_ckpt()
            saved_at.append(self.optimizer_step)

    brain = Recording(
        modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
        run_opts={"device": "cpu", "ckpt_interval_steps": 2},
        checkpointer=hparams["checkpointer"], label_encoders=label_encoders,
    )
    brain.fit_and_test(datasets)
    batches = -(-len(datasets["train"]) // hparams["batch_size"])  # one epoch
    assert batches >= 2 and saved_at == list(range(2, batches + 1, 2))


def test_cached_features_train_the_same_head(tiny_encoder, iemocap_manifests, tmp_path):
    hparams = load_iemocap_hparams(tiny_encoder, iemocap_manifests, tmp_path / "cached",
                                   cache_features=True, feat_augment=None, number_of_epochs=3)
    metrics = run_fold(hparams, {"device": "cpu"})
    cached = list((tmp_path / "cached" / "feature_cache").glob("*/*.pt"))
    assert len(cached) == sum(
        len((iemocap_manifests / "speaker" / "fold_1" / f"{s}.csv").read_text().splitlines()) - 1
        for s in ("train", "valid", "test")
    )
    assert metrics["test"]["emo_accuracy"] > 0.5


def test_cache_refuses_waveform_augmentation(tiny_encoder, iemocap_manifests, tmp_path):
    hparams = load_iemocap_hparams(tiny_encoder, iemocap_manifests, tmp_path,
                                   cache_features=True)
    hparams["wav_augment"] = torch.nn.Identity()  # stands for speed perturbation
    with pytest.raises(ValueError, match="wav_augment: null with cache_features"):
        run_fold(hparams, {"device": "cpu"})


def test_wrong_architecture_and_missing_encoder(tiny_encoder, iemocap_manifests, tmp_path):
    with pytest.raises(ValueError, match="key 'context.d_model': expected 64, found 32"):
        load_iemocap_hparams(tiny_encoder, iemocap_manifests, tmp_path,
                             expected_arch={"d_model": 64})
    with pytest.raises(FileNotFoundError, match="no_model"):
        load_iemocap_hparams(tmp_path / "no_model", iemocap_manifests, tmp_path)


def test_unseen_label_and_empty_manifest(tiny_encoder, iemocap_manifests, tmp_path):
    manifests = tmp_path / "manifests"
    shutil.copytree(iemocap_manifests / "speaker" / "fold_1", manifests / "speaker" / "fold_1")
    test_csv = manifests / "speaker" / "fold_1" / "test.csv"
    lines = test_csv.read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + ",fru"
    test_csv.write_text("\n".join(lines) + "\n")
    hparams = load_iemocap_hparams(tiny_encoder, manifests, tmp_path)
    with pytest.raises(ValueError, match="emo label 'fru' not seen in training"):
        dataio_prepare(hparams)
    test_csv.write_text(lines[0] + "\n")
    with pytest.raises(ValueError, match="test.csv: expected a manifest with at least one"):
        dataio_prepare(hparams)
