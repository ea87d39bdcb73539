"""Tests for data_prep.voxceleb on the mini VoxCeleb1."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from data_prep.common import DataPrepError
from data_prep.voxceleb import main, prepare_voxceleb

FIELDS = "ID,duration,wav,start,stop,spk_id"


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def truth(mini_corpora):
    return json.loads((mini_corpora / "ground_truth.json").read_text())["voxceleb"]


@pytest.fixture(scope="module")
def prepared(mini_corpora, tmp_path_factory):
    out = tmp_path_factory.mktemp("vox")
    prepare_voxceleb(str(mini_corpora / "voxceleb1"), str(out), valid_fraction=0.2)
    return out


def test_columns(prepared):
    for name in ("train", "valid", "enrol", "test"):
        with open(prepared / f"{name}.csv") as handle:
            assert handle.readline().strip() == FIELDS


def test_train_and_valid_list_each_file_once_per_whole_crop(prepared, mini_corpora, truth):
    wav_dir = mini_corpora / "voxceleb1" / "wav"
    train, valid = read_csv(prepared / "train.csv"), read_csv(prepared / "valid.csv")
    dev = {rel: t for rel, t in truth.items() if t["set"] == "dev"}
    rows = {}
    for row in train + valid:
        rows.setdefault(os.path.relpath(row["wav"], wav_dir), []).append(row)
    # floor(duration / 3 s) rows per file (SpeechBrain's VoxCeleb prep); shorter files left out
    assert {rel: len(r) for rel, r in rows.items()} == {
        rel: t["frames"] // 48000 for rel, t in dev.items() if t["frames"] >= 48000
    }
    for rel, file_rows in rows.items():
        stem = rel.removesuffix(".wav")
        assert [r["ID"] for r in file_rows] == [f"{stem}_{k}" for k in range(len(file_rows))]
        for row in file_rows:  # each row spans the whole file: the recipe crops at random
            assert (row["start"], row["stop"]) == ("0", str(dev[rel]["frames"]))
            assert float(row["duration"]) == dev[rel]["frames"] / 16000
            assert row["spk_id"] == dev[rel]["spk"]
    utt = {s: {os.path.relpath(r["wav"], wav_dir) for r in split_rows}
           for s, split_rows in (("train", train), ("valid", valid))}
    assert not utt["train"] & utt["valid"] and utt["valid"]
    assert {dev[rel]["spk"] for rel in utt["valid"]} <= {dev[rel]["spk"] for rel in utt["train"]}
    assert len({dev[rel]["spk"] for rel in utt["train"]}) == 8


def test_enrol_test_cover_trials(prepared, mini_corpora, truth):
    trials = (mini_corpora / "voxceleb1" / "veri_test2.txt").read_text()
    assert (prepared / "trials.txt").read_text() == trials
    lines = [line.split() for line in trials.splitlines()]
    enrol = {r["ID"]: r for r in read_csv(prepared / "enrol.csv")}
    test = {r["ID"]: r for r in read_csv(prepared / "test.csv")}
    assert set(enrol) == {e for _, e, _ in lines} and set(test) == {t for _, _, t in lines}
    for rel, row in {**enrol, **test}.items():
        assert truth[rel]["set"] == "test" and row["spk_id"] == truth[rel]["spk"]
        assert (row["start"], row["stop"]) == ("0", str(truth[rel]["frames"]))
    for label, e, t in lines:
        assert (enrol[e]["spk_id"] == test[t]["spk_id"]) == (label == "1")


@pytest.fixture
def corpus_copy(mini_corpora, tmp_path):
    shutil.copytree(mini_corpora / "voxceleb1", tmp_path / "voxceleb1")
    return tmp_path / "voxceleb1"


def test_trial_naming_missing_file(corpus_copy, tmp_path):
    path = corpus_copy / "veri_test2.txt"
    lines = path.read_text().splitlines()
    lines[6] = lines[6].rsplit(" ", 1)[0] + " id10272/NOSUCHVIDEO/00001.wav"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataPrepError, match=r"veri_test2.txt:7: id10272/NOSUCHVIDEO/00001.wav not"):
        prepare_voxceleb(str(corpus_copy), str(tmp_path / "out"))
    assert not (tmp_path / "out" / ".prep_done.json").exists()


def test_malformed_trial_line(corpus_copy, tmp_path):
    path = corpus_copy / "veri_test2.txt"
    path.write_text(path.read_text() + "yes id10270/a.wav\n")
    count = len(path.read_text().splitlines())
    with pytest.raises(DataPrepError, match=rf"veri_test2.txt:{count}: expected"):
        prepare_voxceleb(str(corpus_copy), str(tmp_path / "out"))


def test_missing_trial_list(corpus_copy, tmp_path):
    with pytest.raises(DataPrepError, match=r"list_test_hard2.txt: VoxCeleb trial list file"):
        prepare_voxceleb(str(corpus_copy), str(tmp_path / "out"), "list_test_hard2.txt")


def test_idempotent_and_cli(mini_corpora, tmp_path):
    data = str(mini_corpora / "voxceleb1")
    main([data, str(tmp_path)])
    stamp = os.stat(tmp_path / "train.csv").st_mtime_ns
    main([data, str(tmp_path)])
    assert os.stat(tmp_path / "train.csv").st_mtime_ns == stamp
    rows = len(read_csv(tmp_path / "train.csv"))
    main([data, str(tmp_path), "--crop-seconds", "1.5"])
    assert os.stat(tmp_path / "train.csv").st_mtime_ns != stamp
    assert len(read_csv(tmp_path / "train.csv")) > rows  # more whole 1.5 s crops than 3 s ones


def _small_corpus(root, seconds):
    """A VoxCeleb1 layout: ``wav/<id>/<video>/<n>.wav`` of the given lengths, two test speakers
    (1 s utterances) in ``veri_test2.txt``."""
    seconds = {**seconds, "id10270/a/00001.wav": 1.0, "id10270/b/00001.wav": 1.0,
               "id10271/c/00001.wav": 1.0}
    for rel, length in seconds.items():
        (root / "wav" / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / "wav" / rel, np.full(round(length * 16000), 100, dtype=np.int16), 16000)
    (root / "veri_test2.txt").write_text("1 id10270/a/00001.wav id10270/b/00001.wav\n"
                                         "0 id10270/a/00001.wav id10271/c/00001.wav\n")
    return root


def test_every_training_utterance_shorter_than_a_crop_is_refused(tmp_path, caplog):
    train = {f"id1000{s}/v{s}/0000{u}.wav": 1.5 + 0.25 * u for s in range(3) for u in (1, 2)}
    corpus = _small_corpus(tmp_path / "vox", train)
    with pytest.raises(DataPrepError, match=(
        r"wav: no training chunk: 6 of the 6 utterances of training speakers are shorter than "
        r"crop_seconds = 3.0 s and were dropped \(the longest is 2.00 s\), among them all 3 not "
        r"held out for validation; lower crop_seconds"
    )):
        prepare_voxceleb(str(corpus), str(tmp_path / "out"), valid_fraction=0.5)
    assert not (tmp_path / "out" / "train.csv").exists()
    with caplog.at_level("ERROR"), pytest.raises(SystemExit, match="1"):
        main([str(corpus), str(tmp_path / "out")])
    assert "no training chunk" in caplog.text
    prepare_voxceleb(str(corpus), str(tmp_path / "out"), crop_seconds=1.5, valid_fraction=0.5)
    assert len(read_csv(tmp_path / "out" / "train.csv")) == 3


def test_no_validation_chunk_is_refused(tmp_path):
    # holdout() lends the second of each speaker's two utterances to validation: make it short.
    train = {f"id1000{s}/v{s}/0000{u}.wav": 4.0 if u == 1 else 2.0 for s in range(3)
             for u in (1, 2)}
    corpus = _small_corpus(tmp_path / "vox", train)
    with pytest.raises(DataPrepError, match=(
        r"no validation chunk: 3 of the 6 utterances of training speakers are shorter than "
        r"crop_seconds = 3.0 s and were dropped \(the longest is 4.00 s\), among them all 3 held "
        r"out for validation"
    )):
        prepare_voxceleb(str(corpus), str(tmp_path / "out"), valid_fraction=0.5)
    with pytest.raises(DataPrepError, match="no validation chunk: valid_fraction is 0"):
        prepare_voxceleb(str(corpus), str(tmp_path / "out"), valid_fraction=0.0)
    single = _small_corpus(tmp_path / "single", {f"id1000{s}/v/00001.wav": 4.0 for s in range(3)})
    with pytest.raises(DataPrepError, match="valid_fraction = 0.1 holds out nothing"):
        prepare_voxceleb(str(single), str(tmp_path / "out"))


def test_deleted_training_file_is_not_reused(corpus_copy, tmp_path, truth):
    def listed():
        return {r["wav"] for name in ("train", "valid")
                for r in read_csv(tmp_path / "out" / f"{name}.csv")}

    rel = next(rel for rel, t in sorted(truth.items()) if t["set"] == "dev" and
               t["frames"] >= 48000)
    wav = str((corpus_copy / "wav" / rel).resolve())
    prepare_voxceleb(str(corpus_copy), str(tmp_path / "out"))
    assert wav in listed()
    (corpus_copy / "wav" / rel).unlink()
    prepare_voxceleb(str(corpus_copy), str(tmp_path / "out"))
    assert listed() and wav not in listed()
