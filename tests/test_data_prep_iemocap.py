"""Tests for data_prep.iemocap on the mini IEMOCAP."""

from __future__ import annotations

import csv
import json
import os
import shutil

import pytest

from data_prep.common import DataPrepError
from data_prep.iemocap import EMOTION_MAP, main, parse_emo_evaluation, prepare_iemocap

FIELDS = "ID,duration,wav,spk_id,emo"
FOUR_CLASS = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"}


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_four_class_mapping():
    assert EMOTION_MAP == FOUR_CLASS
    for dropped in ("fru", "sur", "fea", "dis", "oth", "xxx"):
        assert dropped not in EMOTION_MAP


@pytest.fixture(scope="module")
def truth(mini_corpora):
    return json.loads((mini_corpora / "ground_truth.json").read_text())["iemocap"]


@pytest.fixture(scope="module")
def prepared(mini_corpora, tmp_path_factory):
    out = tmp_path_factory.mktemp("iemocap")
    prepare_iemocap(str(mini_corpora / "IEMOCAP_full_release"), str(out))
    return out


@pytest.mark.parametrize("fold", [1, 2, 3, 4, 5])
def test_leave_one_session_out(prepared, truth, fold):
    splits = {}
    for name in ("train", "valid", "test"):
        with open(prepared / f"fold_{fold}" / f"{name}.csv") as handle:
            assert handle.readline().strip() == FIELDS
        splits[name] = read_csv(prepared / f"fold_{fold}" / f"{name}.csv")
    kept = {u: t for u, t in truth.items() if t["code"] in FOUR_CLASS}
    test_ids = {r["ID"] for r in splits["test"]}
    assert test_ids == {u for u, t in kept.items() if t["session"] == fold}
    train_ids, valid_ids = {r["ID"] for r in splits["train"]}, {r["ID"] for r in splits["valid"]}
    assert train_ids | valid_ids == {u for u, t in kept.items() if t["session"] != fold}
    assert not train_ids & valid_ids
    assert {r["emo"] for r in splits["valid"]} == {"neu", "hap", "ang", "sad"}
    assert 0.05 < len(valid_ids) / (len(train_ids) + len(valid_ids)) < 0.15
    for row in splits["train"] + splits["valid"] + splits["test"]:
        info = kept[row["ID"]]
        assert row["emo"] == FOUR_CLASS[info["code"]]
        assert row["spk_id"] == info["spk"]
        assert float(row["duration"]) == pytest.approx(info["frames"] / 16000)
        assert os.path.basename(row["wav"]) == row["ID"] + ".wav"


def test_class_counts(prepared, truth):
    rows = read_csv(prepared / "fold_1" / "test.csv")
    counts = {e: sum(r["emo"] == e for r in rows) for e in ("neu", "hap", "ang", "sad")}
    assert counts == {"neu": 10, "hap": 10, "ang": 10, "sad": 10}


def test_parse_skips_annotator_lines_and_junk(mini_corpora):
    emo_dir = mini_corpora / "IEMOCAP_full_release" / "Session1" / "dialog" / "EmoEvaluation"
    assert any(p.name.startswith("._") for p in emo_dir.iterdir())
    labels = parse_emo_evaluation(emo_dir / "Ses01F_impro01.txt")
    assert labels and all(utt.startswith("Ses01F_impro01_") for _, utt, _ in labels)
    lines = (emo_dir / "Ses01F_impro01.txt").read_text().splitlines()
    assert all(lines[n - 1].startswith("[") and utt in lines[n - 1] for n, utt, _ in labels)


@pytest.fixture
def corpus_copy(mini_corpora, tmp_path):
    shutil.copytree(mini_corpora / "IEMOCAP_full_release", tmp_path / "IEMOCAP_full_release")
    return tmp_path / "IEMOCAP_full_release"


def test_malformed_summary_line(corpus_copy, tmp_path):
    path = corpus_copy / "Session3" / "dialog" / "EmoEvaluation" / "Ses03M_script01_1.txt"
    lines = path.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("[") and i > 5)
    lines[index] = lines[index].split("\t")[0] + "\t" + lines[index].split("\t")[1]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataPrepError, match=rf"Ses03M_script01_1.txt:{index + 1}: malformed"):
        prepare_iemocap(str(corpus_copy), str(tmp_path / "out"))
    assert not (tmp_path / "out" / ".prep_done.json").exists()


def test_missing_wav(corpus_copy, tmp_path, truth):
    utt = next(u for u, t in sorted(truth.items()) if t["session"] == 2 and t["code"] == "sad")
    dialog = utt.rsplit("_", 1)[0]
    (corpus_copy / "Session2" / "sentences" / "wav" / dialog / f"{utt}.wav").unlink()
    path = corpus_copy / "Session2" / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if f"\t{utt}\t" in t)
    with pytest.raises(DataPrepError, match=rf"{dialog}.txt:{line}: audio .*{utt}.wav not found"):
        prepare_iemocap(str(corpus_copy), str(tmp_path / "out"))


def test_missing_session(corpus_copy, tmp_path):
    shutil.rmtree(corpus_copy / "Session5")
    with pytest.raises(DataPrepError, match=r"Session5: IEMOCAP session folder not found"):
        prepare_iemocap(str(corpus_copy), str(tmp_path / "out"))


def test_unreadable_wav(corpus_copy, tmp_path, truth):
    utt = next(u for u, t in sorted(truth.items()) if t["session"] == 4 and t["code"] == "ang")
    wav = corpus_copy / "Session4" / "sentences" / "wav" / utt.rsplit("_", 1)[0] / f"{utt}.wav"
    wav.write_bytes(b"RIFF")
    with pytest.raises(DataPrepError, match=rf"{utt}.wav: unreadable"):
        prepare_iemocap(str(corpus_copy), str(tmp_path / "out"))


def test_idempotent_and_cli(mini_corpora, tmp_path):
    data = str(mini_corpora / "IEMOCAP_full_release")
    main([data, str(tmp_path)])
    stamp = os.stat(tmp_path / "fold_3" / "valid.csv").st_mtime_ns
    main([data, str(tmp_path)])
    assert os.stat(tmp_path / "fold_3" / "valid.csv").st_mtime_ns == stamp
    main([data, str(tmp_path), "--valid-fraction", "0.2"])
    assert os.stat(tmp_path / "fold_3" / "valid.csv").st_mtime_ns != stamp
