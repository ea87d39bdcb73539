"""Tests for data_prep.common: atomic writes, idempotency, parallel length reading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from speechbrain.dataio.dataset import DynamicItemDataset

from data_prep.audio_files import audio_frames
from data_prep.common import MARKER, DataPrepError, holdout, run_once, write_csv


def test_write_csv_loads_in_speechbrain(tmp_path):
    rows = [{"ID": "u1", "duration": 1.5, "wav": "/a b/c.flac", "wrd": 'say "hi", then'}]
    write_csv(tmp_path / "m.csv", ["ID", "duration", "wav", "wrd"], rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]  # no temporary left behind
    data = DynamicItemDataset.from_csv(str(tmp_path / "m.csv"))
    data.set_output_keys(["id", "duration", "wav", "wrd"])
    assert data[0] == {"id": "u1", "duration": 1.5, "wav": "/a b/c.flac", "wrd": 'say "hi", then'}


def _counting_build(calls):
    def build(folder):
        calls.append(folder)
        write_csv(folder / "out.csv", ["ID"], [{"ID": str(len(calls))}])

    return build


def test_run_once_reuses_only_a_complete_matching_run(tmp_path):
    calls = []
    build = _counting_build(calls)
    assert run_once(tmp_path, {"x": 1}, ["out.csv"], build)
    assert json.loads((tmp_path / MARKER).read_text()) == {
        "options": {"x": 1}, "inputs": None, "verified_audio": False
    }
    assert not run_once(tmp_path, {"x": 1}, ["out.csv"], build)
    assert len(calls) == 1
    assert run_once(tmp_path, {"x": 2}, ["out.csv"], build)  # other options: redone
    (tmp_path / "out.csv").unlink()
    assert run_once(tmp_path, {"x": 2}, ["out.csv"], build)  # an output missing: redone
    (tmp_path / MARKER).write_text("{not json")
    assert run_once(tmp_path, {"x": 2}, ["out.csv"], build)  # corrupt marker: redone
    assert len(calls) == 4


def test_run_once_redoes_an_interrupted_run(tmp_path):
    calls = []
    build = _counting_build(calls)
    (tmp_path / "out.csv").write_text("ID\nhalf")
    (tmp_path / "out.csv.partial").write_text("ID\n")
    assert run_once(tmp_path, {"x": 1}, ["out.csv"], build)  # no marker
    assert not (tmp_path / "out.csv.partial").exists()
    assert (tmp_path / "out.csv").read_text() == "ID\n1\n"


def test_failed_build_leaves_no_marker(tmp_path):
    def build(folder):
        write_csv(folder / "out.csv", ["ID"], [{"ID": "a"}])
        raise DataPrepError("boom")

    with pytest.raises(DataPrepError):
        run_once(tmp_path, {}, ["out.csv"], build)
    assert not (tmp_path / MARKER).exists()


def test_audio_frames_parallel_matches_serial(tmp_path):
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"{i}.flac")
        sf.write(paths[-1], np.zeros(100 * (i + 1), dtype=np.int16), 16000)
    expected = [(100 * (i + 1), 16000) for i in range(6)]
    assert audio_frames(paths, num_workers=0) == expected
    assert audio_frames(paths, num_workers=2) == expected


@pytest.mark.parametrize("workers", [0, 2])
def test_audio_frames_names_bad_file(tmp_path, workers):
    good, bad, empty = tmp_path / "good.wav", tmp_path / "bad.wav", tmp_path / "empty.wav"
    sf.write(good, np.zeros(10, dtype=np.int16), 16000)
    sf.write(empty, np.zeros(0, dtype=np.int16), 16000)
    bad.write_bytes(b"garbage")
    with pytest.raises(DataPrepError, match="bad.wav: unreadable"):
        audio_frames([good, bad], num_workers=workers)
    with pytest.raises(DataPrepError, match="empty.wav: empty"):
        audio_frames([good, empty], num_workers=workers)


def test_holdout_is_deterministic_and_proper():
    keys = [f"k{i:03d}" for i in range(100)]
    held = holdout(keys, 0.1)
    assert len(held) == 10 and held <= set(keys)
    assert holdout(list(reversed(keys)), 0.1) == held
    assert len(holdout(keys[:2], 0.9)) == 1
    assert holdout(keys, 0.0) == set()
    with pytest.raises(ValueError, match="fraction"):
        holdout(keys, 1.0)
