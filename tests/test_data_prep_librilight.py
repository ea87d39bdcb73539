"""Tests for data_prep.librilight on the mini LibriLight + LibriSpeech dev-clean."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from data_prep.audio import read_audio
from data_prep.common import DataPrepError
from data_prep.librilight import main, prepare_librilight, vad_segments

SR = 16000


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def truth(mini_corpora):
    return json.loads((mini_corpora / "ground_truth.json").read_text())


@pytest.fixture(scope="module")
def prepared(mini_corpora, tmp_path_factory):
    out = tmp_path_factory.mktemp("librilight")
    prepare_librilight(
        str(mini_corpora / "librilight"), str(out), split="small",
        valid_folder=str(mini_corpora / "LibriSpeech" / "dev-clean"),
        min_duration=2.0, max_duration=6.0,
    )
    return out


def test_columns(prepared):
    with open(prepared / "train.csv") as handle:
        assert handle.readline().strip() == "ID,duration,wav,start,stop,spk_id"
    with open(prepared / "valid.csv") as handle:
        assert handle.readline().strip() == "ID,duration,wav,start,stop,spk_id,wrd"


def test_segments_follow_voice_activity(prepared, mini_corpora, truth):
    rows = read_csv(prepared / "train.csv")
    by_file = {}
    for row in rows:
        rel = os.path.relpath(row["wav"], mini_corpora / "librilight")
        info = truth["librilight"][rel]
        start, stop = int(row["start"]), int(row["stop"])
        assert row["spk_id"] == info["spk"]
        assert 2.0 * SR <= stop - start <= 6.0 * SR
        assert float(row["duration"]) == pytest.approx((stop - start) / SR)
        span_starts = {a for a, _ in info["spans"]}
        span_stops = {b for _, b in info["spans"]}
        assert start in span_starts or any(a < start < b for a, b in info["spans"])
        assert stop in span_stops or any(a < stop < b for a, b in info["spans"])
        by_file.setdefault(rel, []).append((start, stop))
    assert set(by_file) == set(truth["librilight"])
    for rel, segments in by_file.items():
        segments.sort()
        assert all(a[1] <= b[0] for a, b in zip(segments, segments[1:], strict=False))
        # every speech span of an admissible length lies inside exactly one segment
        for a, b in truth["librilight"][rel]["spans"]:
            if 2.0 * SR <= b - a <= 6.0 * SR:
                assert sum(s <= a and b <= e for s, e in segments) == 1


def test_offsets_read_back_the_speech(prepared, mini_corpora, truth):
    rows = read_csv(prepared / "train.csv")[:8]
    for row in rows:
        full, _ = sf.read(row["wav"], dtype="float32")
        start, stop = int(row["start"]), int(row["stop"])
        wav = read_audio(row["wav"], start, stop)
        assert torch.equal(wav, torch.from_numpy(full[start:stop]))
        rel = os.path.relpath(row["wav"], mini_corpora / "librilight")
        if start in {a for a, _ in truth["librilight"][rel]["spans"]}:
            assert np.abs(full[start - 160 : start]).max() == 0.0  # silence just before
            assert wav[:800].abs().max() > 0.01  # speech right at the start


def test_valid_is_dev_clean(prepared, truth):
    rows = read_csv(prepared / "valid.csv")
    expected = {utt: info["wrd"] for utt, info in truth["librispeech"].items()}
    assert {r["ID"]: r["wrd"] for r in rows} == expected
    for row in rows:
        info = truth["librispeech"][row["ID"]]
        assert (row["start"], row["stop"]) == ("0", str(info["frames"]))
        assert row["spk_id"] == info["spk"]


def test_holdout_without_valid_folder(mini_corpora, prepared, tmp_path):
    prepare_librilight(str(mini_corpora / "librilight"), str(tmp_path), "small",
                       min_duration=2.0, max_duration=6.0, valid_fraction=0.1)
    train, valid = read_csv(tmp_path / "train.csv"), read_csv(tmp_path / "valid.csv")
    everything = {r["ID"] for r in read_csv(prepared / "train.csv")}
    assert {r["ID"] for r in train} | {r["ID"] for r in valid} == everything
    assert not {r["ID"] for r in train} & {r["ID"] for r in valid}
    assert len(valid) == round(0.1 * len(everything))
    assert all(r["wrd"] == "" for r in valid)


def test_pre_cut_folder_gives_whole_files(tmp_path):
    lengths = {"a_0": 3 * SR, "a_1": 5 * SR, "a_2": SR}  # the last is too short
    for name, n in lengths.items():
        path = tmp_path / "cut" / "42" / "book" / f"{name}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, np.full(n, 100, dtype=np.int16), SR)
    prepare_librilight(str(tmp_path / "cut"), str(tmp_path / "out"), split=None,
                       min_duration=2, max_duration=6, valid_fraction=0.0)
    rows = read_csv(tmp_path / "out" / "train.csv")
    assert [(r["start"], r["stop"], r["spk_id"]) for r in rows] == [
        ("0", str(3 * SR), "42"), ("0", str(5 * SR), "42"),
    ]


def test_paper_selection_by_default_and_hours_logged(tmp_path, caplog):
    # Pre-cut segments of 9, 10, 20.2 and 21 s: the paper keeps 10 to 20.2 s.
    for name, seconds in {"s_0": 9.0, "s_1": 10.0, "s_2": 20.2, "s_3": 21.0}.items():
        path = tmp_path / "cut" / "42" / "book" / f"{name}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, np.full(round(seconds * SR), 100, dtype=np.int16), SR)
    with caplog.at_level("INFO", logger="data_prep.librilight"):
        prepare_librilight(str(tmp_path / "cut"), str(tmp_path / "out"), split=None,
                           valid_fraction=0.0)
    rows = read_csv(tmp_path / "out" / "train.csv")
    assert sorted(float(r["duration"]) for r in rows) == [10.0, pytest.approx(20.2)]
    kept_h, dropped_h = (30.2 / 3600, 30.0 / 3600)
    assert f"2 segments kept ({kept_h:.2f} h)" in caplog.text
    assert f"2 outside [10.0, 20.2] s dropped ({dropped_h:.2f} h)" in caplog.text


def test_vad_segments_splits_long_spans():
    assert vad_segments([(0, 100)], min_len=10, max_len=40) == [(0, 33), (33, 66), (66, 100)]
    assert vad_segments([], min_len=1, max_len=2) == []


def test_idempotent_and_interrupted(mini_corpora, tmp_path):
    args = (str(mini_corpora / "librilight"), str(tmp_path), "small")
    prepare_librilight(*args, min_duration=2.0, max_duration=6.0)
    stamp = os.stat(tmp_path / "train.csv").st_mtime_ns
    prepare_librilight(*args, min_duration=2.0, max_duration=6.0)
    assert os.stat(tmp_path / "train.csv").st_mtime_ns == stamp
    (tmp_path / ".prep_done.json").unlink()  # interrupted before the marker
    (tmp_path / "valid.csv.partial").write_text("ID\n")
    prepare_librilight(*args, min_duration=2.0, max_duration=6.0)
    assert os.stat(tmp_path / "train.csv").st_mtime_ns != stamp
    assert not (tmp_path / "valid.csv.partial").exists()
    stamp = os.stat(tmp_path / "train.csv").st_mtime_ns
    prepare_librilight(*args, min_duration=2.0, max_duration=5.0)  # other options: redone
    assert os.stat(tmp_path / "train.csv").st_mtime_ns != stamp


@pytest.fixture
def corpus_copy(mini_corpora, tmp_path):
    speaker = mini_corpora / "librilight" / "small" / "100"
    shutil.copytree(speaker, tmp_path / "ll" / "small" / "100")
    shutil.copytree(mini_corpora / "LibriSpeech", tmp_path / "LibriSpeech")
    return tmp_path


def test_missing_folder(tmp_path):
    with pytest.raises(DataPrepError, match="nowhere.*not found"):
        prepare_librilight(str(tmp_path / "nowhere"), str(tmp_path / "out"))


def test_malformed_json_names_file_and_line(corpus_copy):
    json_path = next((corpus_copy / "ll").rglob("*.json"))
    json_path.write_text('{\n "speaker": "100",\n "voice_activity": [[0.1, 0.5],\n}')
    with pytest.raises(DataPrepError, match=rf"{json_path.name}:4: malformed JSON"):
        prepare_librilight(str(corpus_copy / "ll"), str(corpus_copy / "out"), "small")


def test_unreadable_audio_names_file(corpus_copy):
    flac = next((corpus_copy / "ll").rglob("[!.]*.flac"))
    flac.write_bytes(b"fLaC but truncated")
    with pytest.raises(DataPrepError, match=rf"{flac.name}: unreadable"):
        prepare_librilight(str(corpus_copy / "ll"), str(corpus_copy / "out"), "small")
    assert not (corpus_copy / "out" / "train.csv").exists()


def test_transcript_naming_missing_audio(corpus_copy):
    trans = next((corpus_copy / "LibriSpeech").rglob("[!.]*.trans.txt"))
    utt = trans.read_text().splitlines()[1].split()[0]
    (trans.parent / f"{utt}.flac").unlink()
    with pytest.raises(DataPrepError, match=rf"{trans.name}:2: audio .*{utt}.flac not found"):
        prepare_librilight(str(corpus_copy / "ll"), str(corpus_copy / "out"), "small",
                           valid_folder=str(corpus_copy / "LibriSpeech" / "dev-clean"),
                           min_duration=2.0, max_duration=6.0)


def test_cli(mini_corpora, tmp_path):
    main([str(mini_corpora / "librilight"), str(tmp_path), "--split", "small",
          "--min-duration", "2", "--max-duration", "6"])
    assert len(read_csv(tmp_path / "train.csv")) > 20
