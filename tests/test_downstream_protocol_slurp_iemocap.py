"""The shipped SLURP and IEMOCAP ``train.yaml`` are the published protocols value for value
(SLURP: the authors' MP3S config; IEMOCAP: SpeechBrain's MP3S IEMOCAP benchmark), their
``train_extended.yaml`` keep our extensions, and the MP3S speaker folds of IEMOCAP are right."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.lobes.models.ECAPA_TDNN import Classifier
from speechbrain.nnet.pooling import StatisticsPooling
from speechbrain.nnet.schedulers import NewBobScheduler
from tiny_models import tiny_export

from data_prep.iemocap import prepare_iemocap
from recipes.iemocap.train import prepare_speaker_folds, speaker_of_fold
from summarymixing.downstream.classification import build_classifiers

ROOT = Path(__file__).resolve().parents[1]


def encoder_file(folder: Path, d_model: int) -> Path:
    torch.manual_seed(0)
    return tiny_export(folder / f"enc_{d_model}", d_model=d_model, num_layers=1, d_ffn=32,
                       latent_dim=16, local_proj_hid_dim=[16], summary_hid_dim=[16])


@pytest.fixture(scope="module")
def paper_width_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One layer at the paper's width (768): the head sizes follow ``d_model``."""
    return encoder_file(tmp_path_factory.mktemp("enc"), 768)


def load(task: str, name: str, encoder: Path, out: Path, **overrides) -> dict:
    overrides = {"data_folder": str(out), "pretrained_path": str(encoder),
                 "output_folder": str(out), **overrides}
    with open(ROOT / "hparams" / task / name, encoding="utf-8") as fin:
        return load_hyperpyyaml(fin, overrides)


def labels(n: int) -> CategoricalEncoder:
    encoder = CategoricalEncoder()
    encoder.update_from_iterable([f"class{i}" for i in range(n)])
    return encoder


def check_newbob(scheduler, initial: float, factor: float) -> None:
    assert isinstance(scheduler, NewBobScheduler)
    assert scheduler.hyperparam_value == initial and scheduler.annealing_factor == factor
    assert scheduler.improvement_threshold == 0.0025 and scheduler.patient == 0


def check_optimizers(hparams: dict, lr: float, weights_lr: float) -> None:
    params = [torch.nn.Parameter(torch.zeros(1))]
    for key, expected in (("opt_class", lr), ("weights_opt_class", weights_lr)):
        optimizer = hparams[key](params)
        assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["lr"] == expected


def check_shared_protocol(hparams: dict) -> None:
    """What MP3S does for every task: frozen encoder, plain softmax layer sum, no augmentation."""
    assert hparams["freeze_encoder"] and hparams["encoder"].freeze
    assert not hparams["weighted_sum"].layer_norm
    assert hparams["weighted_sum"].logits.numel() == hparams["num_hidden_states"]
    assert hparams["wav_augment"] is None and hparams["feat_augment"] is None
    assert hparams["sorting"] == "original" and hparams["dynamic_batching"] is None
    assert hparams["train_dataloader_opts"]["shuffle"] is True
    assert hparams["epoch_counter"].limit == hparams["number_of_epochs"]


def test_slurp_train_yaml_is_the_authors_protocol(paper_width_encoder, tmp_path):
    hparams = load("slurp", "train.yaml", paper_width_encoder, tmp_path)
    check_shared_protocol(hparams)
    assert hparams["label_keys"] == ["scenario"] and not hparams["use_synthetic"]
    assert hparams["train_dataloader_opts"]["batch_size"] == 2
    assert hparams["valid_dataloader_opts"]["batch_size"] == 2
    assert hparams["test_dataloader_opts"]["batch_size"] == 2
    assert hparams["number_of_epochs"] == 20
    check_optimizers(hparams, lr=0.0002, weights_lr=0.01)
    check_newbob(hparams["lr_annealing"], 0.0002, 0.8)
    check_newbob(hparams["lr_annealing_weights"], 0.01, 0.9)
    assert hparams["lr_annealing_metric"] == "scenario_error_rate"
    # BiLSTM 768 x 2 layers, no dropout -> Linear 1536 -> 768 -> mean -> Linear 768 -> 18, no bias
    head = hparams["head"]
    lstm = head.lstm.rnn
    assert (lstm.input_size, lstm.hidden_size, lstm.num_layers) == (768, 768, 2)
    assert lstm.bidirectional and lstm.dropout == 0.0
    assert tuple(head.linear.w.weight.shape) == (768, 1536)
    assert isinstance(head.pooling, StatisticsPooling)
    assert head.pooling.return_mean and not head.pooling.return_std
    assert list(head._modules) == ["lstm", "linear", "pooling"]
    classifiers = build_classifiers(
        hparams["classifier"], {"scenario": labels(18)}, hparams["classifier_size_argument"]
    )
    out = classifiers["scenario"].w
    assert tuple(out.weight.shape) == (18, 768) and out.bias is None
    assert head(torch.randn(2, 9, 768), torch.tensor([1.0, 0.5])).shape == (2, 1, 768)


def test_slurp_head_ignores_padded_frames(tmp_path):
    """The BiLSTM runs on each utterance's valid frames and the mean skips padding."""
    hparams = load("slurp", "mini.yaml", encoder_file(tmp_path, 16), tmp_path)
    head = hparams["head"].eval()
    short, long = torch.randn(1, 6, 16), torch.randn(1, 10, 16)
    batch = torch.cat([torch.cat([short, 100 * torch.randn(1, 4, 16)], dim=1), long])
    padded = head(batch, torch.tensor([0.6, 1.0]))
    noise = 2e-4  # SpeechBrain's StatisticsPooling adds noise in [1e-5, 9e-5] to every mean
    assert torch.allclose(padded[0], head(short, torch.ones(1))[0], atol=noise)
    assert torch.allclose(padded[1], head(long, torch.ones(1))[0], atol=noise)


def test_iemocap_train_yaml_is_the_mp3s_benchmark(paper_width_encoder, tmp_path):
    hparams = load("iemocap", "train.yaml", paper_width_encoder, tmp_path)
    check_shared_protocol(hparams)
    assert hparams["label_keys"] == ["emo"]
    assert hparams["fold_protocol"] == "speaker" and hparams["folds"] == list(range(1, 11))
    assert hparams["train_csv"].endswith("speaker/fold_1/train.csv")
    assert hparams["train_dataloader_opts"]["batch_size"] == 2
    assert hparams["valid_dataloader_opts"]["batch_size"] == 2
    assert hparams["test_dataloader_opts"]["batch_size"] == 1
    assert hparams["number_of_epochs"] == 30
    check_optimizers(hparams, lr=0.0002, weights_lr=0.01)
    check_newbob(hparams["lr_annealing"], 0.0002, 0.9)
    check_newbob(hparams["lr_annealing_weights"], 0.01, 0.9)
    assert hparams["lr_annealing_metric"] == "emo_error_rate"
    ecapa = hparams["head"]
    assert ecapa.channels == [512, 512, 512, 512, 1536]
    assert ecapa.blocks[0].conv.conv.in_channels == 768
    assert [ecapa.blocks[0].conv.conv.kernel_size[0]] == [5]
    assert ecapa.asp.tdnn.conv.conv.out_channels == 64  # attention channels
    assert ecapa.fc.conv.out_channels == 96  # embedding
    classifiers = build_classifiers(
        hparams["classifier"], {"emo": labels(4)}, hparams["classifier_size_argument"]
    )
    assert isinstance(classifiers["emo"], Classifier)
    assert tuple(classifiers["emo"].weight.shape) == (4, 96)


def test_extended_yamls_keep_our_extensions(tmp_path):
    encoder = encoder_file(tmp_path, 16)
    slurp = load("slurp", "train_extended.yaml", encoder, tmp_path)
    assert slurp["label_keys"] == ["scenario", "action", "intent"] and slurp["use_synthetic"]
    assert slurp["wav_augment"] is not None and slurp["feat_augment"] is not None
    assert slurp["weighted_sum"].layer_norm and slurp["head"].lstm.rnn.hidden_size == 1024
    iemocap = load("iemocap", "train_extended.yaml", encoder, tmp_path)
    assert iemocap["fold_protocol"] == "session" and iemocap["folds"] == [1, 2, 3, 4, 5]
    assert iemocap["head"].channels == [1024, 1024, 1024, 1024, 3072]
    assert iemocap["weighted_sum"].layer_norm and iemocap["wav_augment"] is not None
    for hparams in (slurp, iemocap):
        assert hparams["weights_opt_class"]([torch.zeros(1)]).defaults["lr"] == 0.01


def read_ids(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return [(row["ID"], row["spk_id"]) for row in csv.DictReader(handle)]


def test_speaker_folds_leave_two_speakers_out(mini_corpora, tmp_path):
    """Fold k tests on speaker k, validates on its session partner, trains on the rest."""
    prepare_iemocap(str(mini_corpora / "IEMOCAP_full_release"), str(tmp_path / "session"))
    prepare_speaker_folds(str(tmp_path / "session"), str(tmp_path / "speaker"))
    everything = set()
    for split in ("train", "valid", "test"):
        everything |= set(read_ids(tmp_path / "session" / "fold_1" / f"{split}.csv"))
    for fold in range(1, 11):
        session, speaker = speaker_of_fold(fold)
        partner = f"Ses{session:02d}{'M' if speaker.endswith('F') else 'F'}"
        rows = {s: read_ids(tmp_path / "speaker" / f"fold_{fold}" / f"{s}.csv")
                for s in ("train", "valid", "test")}
        assert rows["test"] and {spk for _, spk in rows["test"]} == {speaker}
        assert rows["valid"] and {spk for _, spk in rows["valid"]} == {partner}
        assert all(not spk.startswith(f"Ses{session:02d}") for _, spk in rows["train"])
        assert sorted(rows["train"] + rows["valid"] + rows["test"]) == sorted(everything)
    # a session whose test split lacks one speaker is refused, naming the file
    test_csv = tmp_path / "session" / "fold_3" / "test.csv"
    lines = test_csv.read_text().splitlines()
    test_csv.write_text("\n".join([lines[0], *(x for x in lines[1:] if "Ses03F," not in x)]))
    (tmp_path / "session" / ".prep_done.json").write_text('{"changed": true}')
    with pytest.raises(ValueError, match=r"fold_3/test.csv: expected utterances of both"):
        prepare_speaker_folds(str(tmp_path / "session"), str(tmp_path / "speaker"))
