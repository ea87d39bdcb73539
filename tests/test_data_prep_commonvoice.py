"""Tests for data_prep.commonvoice on the mini Welsh CommonVoice release."""

from __future__ import annotations

import csv
import json
import os
import shutil

import pytest
import soundfile as sf

from data_prep.audio import read_audio
from data_prep.common import DataPrepError
from data_prep.commonvoice import main, normalize_welsh, prepare_commonvoice

FIELDS = "ID,duration,wav,spk_id,wrd"


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("Mae'n braf heddiw yn Aberystwyth.", "mae'n braf heddiw yn aberystwyth"),
        ('Dywedodd hi, "Croeso i Gymru!"', "dywedodd hi croeso i gymru"),
        ("Mae'r TŶ ar ben y bryn.", "mae'r tŷ ar ben y bryn"),
        ("ŴYL, Ŷd, Dŵr, lôn, gân, Bûm, gêm, î", "ŵyl ŷd dŵr lôn gân bûm gêm î"),
        ("Copïo'r storïau; casáu, glòs, ẅ ẃ ẁ ỳ ÿ ý", "copïo'r storïau casáu glòs ẅ ẃ ẁ ỳ ÿ ý"),
        ("Mae 'Hen Wlad Fy Nhadau' yn anthem", "mae hen wlad fy nhadau yn anthem"),
        ("Dw i’n hoffi—llyfrau… (Cymraeg)", "dw i'n hoffi llyfrau cymraeg"),
        ("a\u0302 e\u0302", "â ê"),  # combining circumflex composes
        ("  ...  !!  ", ""),
        ("i'r  ' n'", "i'r n"),
    ],
)
def test_normalize_welsh(raw, expected):
    assert normalize_welsh(raw) == expected


@pytest.fixture(scope="module")
def truth(mini_corpora):
    return json.loads((mini_corpora / "ground_truth.json").read_text())["commonvoice"]


@pytest.fixture(scope="module")
def prepared(mini_corpora, tmp_path_factory):
    out = tmp_path_factory.mktemp("cv")
    prepare_commonvoice(str(mini_corpora / "cv-corpus-mini" / "cy"), str(out))
    return out


def _expected(truth, split, max_duration=float("inf")):
    return {
        clip.removesuffix(".mp3"): info for clip, info in truth.items()
        if info["split"] == split and info["sentence"] and info["seconds"] <= max_duration
    }


def test_rows_and_labels(prepared, truth):
    for name, split in (("train", "train"), ("valid", "dev"), ("test", "test")):
        with open(prepared / f"{name}.csv") as handle:
            assert handle.readline().strip() == FIELDS
        rows = read_csv(prepared / f"{name}.csv")
        expected = _expected(truth, split)
        assert {r["ID"] for r in rows} == set(expected)
        for row in rows:
            info = expected[row["ID"]]
            assert row["spk_id"] == info["client_id"]
            assert float(row["duration"]) == pytest.approx(info["seconds"], abs=0.08)
            assert row["wrd"] and row["wrd"] == row["wrd"].lower()
            assert not set(row["wrd"]) & set('.,!?";:—')
            assert row["wav"].endswith(".mp3") and os.path.isabs(row["wav"])
    assert len(read_csv(prepared / "train.csv")) == 39  # 40 minus one empty (no duration limit)


def test_quoted_sentence_is_read_literally(prepared, truth):
    quoted = [c.removesuffix(".mp3") for c, i in truth.items() if '"' in i["sentence"]]
    rows = {r["ID"]: r["wrd"] for name in ("train", "valid", "test")
            for r in read_csv(prepared / f"{name}.csv")}
    assert quoted and all(rows[c] == "dywedodd hi croeso i gymru" for c in quoted if c in rows)


def test_mp3_is_resampled_at_load(prepared, truth):
    row = read_csv(prepared / "test.csv")[0]
    info = truth[os.path.basename(row["wav"])]
    assert sf.info(row["wav"]).samplerate == info["sample_rate"]
    wav = read_audio(row["wav"])
    assert abs(len(wav) - info["seconds"] * 16000) < 0.08 * 16000


def test_convert_to_wav(mini_corpora, tmp_path, truth):
    prepare_commonvoice(str(mini_corpora / "cv-corpus-mini" / "cy"), str(tmp_path),
                        convert_to_wav=True, num_workers=2)
    rows = read_csv(tmp_path / "valid.csv")
    assert {r["ID"] for r in rows} == set(_expected(truth, "dev"))
    for row in rows:
        info = sf.info(row["wav"])
        assert row["wav"].startswith(str(tmp_path / "wav16k"))
        assert (info.samplerate, info.channels, info.format) == (16000, 1, "WAV")
        assert float(row["duration"]) == pytest.approx(info.frames / 16000)


def test_max_duration_filter(mini_corpora, tmp_path, truth):
    prepare_commonvoice(str(mini_corpora / "cv-corpus-mini" / "cy"), str(tmp_path),
                        max_duration=2.0)
    kept = {r["ID"] for r in read_csv(tmp_path / "test.csv")}
    expected = _expected(truth, "test")
    # mp3 encoding pads a few tens of ms: judge only clips clearly on one side of 2 s
    assert {c for c, i in expected.items() if i["seconds"] < 1.9} <= kept
    assert not {c for c, i in expected.items() if i["seconds"] > 2.1} & kept
    assert 0 < len(kept) < len(expected)


def test_authors_text_protocol(corpus_copy, tmp_path):
    """text_normalization=none, min_words=3: sentences as written (spaces collapsed), fewer than
    3 words dropped from every split (the authors' MP3S preparation), no duration limit."""
    for split, sentence in (("dev", "Bore  da!"), ("test", "  Nos   da,  Cymru. ")):
        lines = (corpus_copy / f"{split}.tsv").read_text().splitlines()
        fields = lines[1].split("\t")
        fields[3] = sentence
        lines[1] = "\t".join(fields)
        (corpus_copy / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    prepare_commonvoice(str(corpus_copy), str(tmp_path), text_normalization="none", min_words=3)
    for name in ("train", "valid", "test"):
        split = {"valid": "dev"}.get(name, name)
        written = {r["path"].removesuffix(".mp3"): r["sentence"]
                   for r in read_csv_tsv(corpus_copy / f"{split}.tsv")}
        expected = {clip: " ".join(text.split()) for clip, text in written.items()
                    if len(text.split()) >= 3}
        rows = {r["ID"]: r["wrd"] for r in read_csv(tmp_path / f"{name}.csv")}
        assert rows == expected, name
    assert "Nos da, Cymru." in rows.values()  # case and punctuation kept
    assert all(r["wrd"] != "Bore da!" for r in read_csv(tmp_path / "valid.csv"))


def test_unknown_text_normalization(mini_corpora, tmp_path):
    with pytest.raises(ValueError, match=r"text_normalization in \['none', 'welsh'\], got 'upper'"):
        prepare_commonvoice(str(mini_corpora / "cv-corpus-mini" / "cy"), str(tmp_path),
                            text_normalization="upper")


@pytest.fixture
def corpus_copy(mini_corpora, tmp_path):
    shutil.copytree(mini_corpora / "cv-corpus-mini" / "cy", tmp_path / "cy")
    return tmp_path / "cy"


def test_older_header_and_no_clip_durations(corpus_copy, truth, tmp_path):
    for split in ("train", "dev", "test"):
        rows = read_csv_tsv(corpus_copy / f"{split}.tsv")
        old = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender",
               "accents", "locale", "segment"]
        lines = ["\t".join(old)] + ["\t".join(r[c] for c in old) for r in rows]
        (corpus_copy / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    (corpus_copy / "clip_durations.tsv").unlink()
    prepare_commonvoice(str(corpus_copy), str(tmp_path / "out"))
    rows = read_csv(tmp_path / "out" / "train.csv")
    assert len(rows) == 39
    for row in rows:
        seconds = truth[os.path.basename(row["wav"])]["seconds"]
        assert float(row["duration"]) == pytest.approx(seconds, abs=0.08)


def read_csv_tsv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_malformed_tsv_line(corpus_copy, tmp_path):
    lines = (corpus_copy / "dev.tsv").read_text().splitlines()
    lines[4] = lines[4].replace("\t", " ", 2)
    (corpus_copy / "dev.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataPrepError, match=r"dev.tsv:5: expected 13 tab-separated fields"):
        prepare_commonvoice(str(corpus_copy), str(tmp_path / "out"))
    assert not (tmp_path / "out" / ".prep_done.json").exists()


def test_missing_clip(corpus_copy, tmp_path):
    clip = read_csv_tsv(corpus_copy / "test.tsv")[2]["path"]
    (corpus_copy / "clips" / clip).unlink()
    with pytest.raises(DataPrepError, match=rf"test.tsv:4: clip .*{clip} not found"):
        prepare_commonvoice(str(corpus_copy), str(tmp_path / "out"))


def test_bad_clip_duration(corpus_copy, tmp_path):
    path = corpus_copy / "clip_durations.tsv"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].split("\t")[0] + "\tlong"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataPrepError, match=r"clip_durations.tsv:3: bad duration"):
        prepare_commonvoice(str(corpus_copy), str(tmp_path / "out"))


def test_missing_header_column(corpus_copy, tmp_path):
    text = (corpus_copy / "train.tsv").read_text()
    (corpus_copy / "train.tsv").write_text(text.replace("sentence\t", "text\t", 1))
    with pytest.raises(DataPrepError, match=r"train.tsv:1: header lacks .*sentence"):
        prepare_commonvoice(str(corpus_copy), str(tmp_path / "out"))


def test_empty_clip_is_an_error(corpus_copy, tmp_path):
    (corpus_copy / "clip_durations.tsv").unlink()
    clip = read_csv_tsv(corpus_copy / "train.tsv")[0]["path"]
    (corpus_copy / "clips" / clip).write_bytes(b"")
    with pytest.raises(DataPrepError, match=rf"{clip}: unreadable"):
        prepare_commonvoice(str(corpus_copy), str(tmp_path / "out"))


def test_idempotent_and_cli(mini_corpora, tmp_path):
    data = str(mini_corpora / "cv-corpus-mini" / "cy")
    main([data, str(tmp_path)])
    stamp = os.stat(tmp_path / "train.csv").st_mtime_ns
    main([data, str(tmp_path)])
    assert os.stat(tmp_path / "train.csv").st_mtime_ns == stamp
    main([data, str(tmp_path), "--max-duration", "5"])
    assert os.stat(tmp_path / "train.csv").st_mtime_ns != stamp


def test_non_utf8_tsv_line(corpus_copy, tmp_path):
    path = corpus_copy / "test.tsv"
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b"\tcy\t", b"\tc\xff\t")
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataPrepError, match=r"test.tsv:4: not UTF-8"):
        prepare_commonvoice(str(corpus_copy), str(tmp_path / "out"))
