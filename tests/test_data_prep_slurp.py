"""Tests for data_prep.slurp on the mini SLURP."""

from __future__ import annotations

import csv
import json
import os
import shutil

import pytest

from data_prep.audio import read_audio
from data_prep.common import DataPrepError
from data_prep.slurp import main, prepare_slurp

FIELDS = "ID,duration,wav,scenario,action,intent,transcript"
SPLITS = {"train": "train", "valid": "devel", "test": "test"}


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def truth(mini_corpora):
    return json.loads((mini_corpora / "ground_truth.json").read_text())["slurp"]


@pytest.fixture(scope="module")
def prepared(mini_corpora, tmp_path_factory):
    out = tmp_path_factory.mktemp("slurp")
    prepare_slurp(str(mini_corpora / "slurp"), str(out))
    return out


def test_one_row_per_recording_with_labels(prepared, truth):
    for name, split in SPLITS.items():
        with open(prepared / f"{name}.csv") as handle:
            assert handle.readline().strip() == FIELDS
        rows = read_csv(prepared / f"{name}.csv")
        expected = {f: t for f, t in truth.items() if t["split"] == split}
        assert sorted(os.path.basename(r["wav"]) for r in rows) == sorted(expected)
        for row in rows:
            info = expected[os.path.basename(row["wav"])]
            assert row["intent"] == info["intent"]
            assert f"{row['scenario']}_{row['action']}" == info["intent"]
            assert row["transcript"] == info["sentence"]
            assert row["ID"] == os.path.basename(row["wav"]).removesuffix(".flac")
            assert float(row["duration"]) == pytest.approx(len(read_audio(row["wav"])) / 16000)


def test_far_field_pairs_share_labels(prepared):
    rows = read_csv(prepared / "train.csv")
    headset = [r for r in rows if r["ID"].endswith("-headset")]
    far = [r for r in rows if not r["ID"].endswith("-headset")]
    assert far and len(headset) > len(far)
    assert {r["transcript"] for r in far} <= {r["transcript"] for r in headset}


def test_intents_balanced_enough_to_learn(prepared, truth):
    intents = {t["intent"] for t in truth.values()}
    assert len(intents) >= 6 and len({i.split("_")[0] for i in intents}) >= 4
    counts = {}
    for name in SPLITS:
        for row in read_csv(prepared / f"{name}.csv"):
            counts[row["intent"]] = counts.get(row["intent"], 0) + 1
    assert set(counts) == intents and min(counts.values()) >= 18


def test_synthetic_goes_to_train_only(mini_corpora, prepared, tmp_path, truth):
    prepare_slurp(str(mini_corpora / "slurp"), str(tmp_path), use_synthetic=True)
    train = read_csv(tmp_path / "train.csv")
    synth = {f for f, t in truth.items() if t["split"] == "train_synthetic"}
    assert {os.path.basename(r["wav"]) for r in train} >= synth
    assert len(train) == len(read_csv(prepared / "train.csv")) + len(synth)
    assert read_csv(tmp_path / "test.csv") == read_csv(prepared / "test.csv")


@pytest.fixture
def corpus_copy(mini_corpora, tmp_path):
    shutil.copytree(mini_corpora / "slurp", tmp_path / "slurp")
    return tmp_path / "slurp"


def _rewrite_line(path, index, change):
    lines = path.read_text().splitlines()
    lines[index] = change(lines[index])
    path.write_text("\n".join(lines) + "\n")


def test_malformed_jsonl_line(corpus_copy, tmp_path):
    path = corpus_copy / "dataset" / "slurp" / "devel.jsonl"
    _rewrite_line(path, 2, lambda line: line[:-5])
    with pytest.raises(DataPrepError, match=r"devel.jsonl:3: malformed SLURP record"):
        prepare_slurp(str(corpus_copy), str(tmp_path / "out"))


def test_record_without_intent(corpus_copy, tmp_path):
    path = corpus_copy / "dataset" / "slurp" / "test.jsonl"
    _rewrite_line(path, 0, lambda line: line.replace('"intent"', '"intnet"'))
    with pytest.raises(DataPrepError, match=r"test.jsonl:1: malformed .*KeyError.*intent"):
        prepare_slurp(str(corpus_copy), str(tmp_path / "out"))


def test_missing_recording(corpus_copy, tmp_path):
    path = corpus_copy / "dataset" / "slurp" / "train.jsonl"
    name = json.loads(path.read_text().splitlines()[4])["recordings"][0]["file"]
    (corpus_copy / "slurp_real" / name).unlink()
    with pytest.raises(DataPrepError, match=rf"train.jsonl:5: recording .*{name} not found"):
        prepare_slurp(str(corpus_copy), str(tmp_path / "out"))
    assert not (tmp_path / "out" / ".prep_done.json").exists()


def test_missing_audio_folder(corpus_copy, tmp_path):
    shutil.rmtree(corpus_copy / "slurp_synth")
    with pytest.raises(DataPrepError, match=r"slurp_synth: SLURP audio folder not found"):
        prepare_slurp(str(corpus_copy), str(tmp_path / "out"), use_synthetic=True)


def test_idempotent_and_cli(mini_corpora, tmp_path):
    data = str(mini_corpora / "slurp")
    main([data, str(tmp_path)])
    stamp = os.stat(tmp_path / "valid.csv").st_mtime_ns
    main([data, str(tmp_path)])
    assert os.stat(tmp_path / "valid.csv").st_mtime_ns == stamp
    (tmp_path / ".prep_done.json").unlink()
    main([data, str(tmp_path)])
    assert os.stat(tmp_path / "valid.csv").st_mtime_ns != stamp


def test_non_utf8_jsonl_line(corpus_copy, tmp_path):
    path = corpus_copy / "dataset" / "slurp" / "test.jsonl"
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"sentence", b"sent\xffence", 1)
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataPrepError, match=r"test.jsonl:2: malformed .*UnicodeDecodeError"):
        prepare_slurp(str(corpus_copy), str(tmp_path / "out"))
