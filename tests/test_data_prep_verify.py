"""What every preparation command shares, tested on copies of the mini corpora (real layouts):
the ``--verify-audio`` decode pass, reuse keyed on the corpus listing, and one-line errors."""

from __future__ import annotations

import csv
import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_prep.audio_files import REPORT_LIMIT, decode_problem, verify_audio_files
from data_prep.common import MARKER, DataPrepError, run_once, write_csv

ROOT = Path(__file__).resolve().parents[1]
CORPORA = {  # command: (corpus folder in the mini corpora, extra command-line arguments)
    "voxceleb": ("voxceleb1", []),
    "librilight": ("librilight", ["--split", "small", "--min-duration", "2",
                                  "--max-duration", "6", "--valid-fraction", "0.1"]),
    "commonvoice": ("cv-corpus-mini/cy", []),
    "slurp": ("slurp", []),
    "iemocap": ("IEMOCAP_full_release", []),
}


def _kept_audio(corpus: Path, name: str) -> Path:
    """An audio file that the preparation keeps in a manifest."""
    if name == "voxceleb":
        return corpus / "wav" / (corpus / "veri_test2.txt").read_text().split()[1]
    if name == "librilight":
        return sorted(corpus.glob("small/*/*/[!.]*.flac"))[0]
    if name == "commonvoice":
        with open(corpus / "test.tsv", newline="") as handle:
            row = next(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
        return corpus / "clips" / row["path"]
    if name == "slurp":
        record = json.loads((corpus / "dataset/slurp/test.jsonl").read_text().splitlines()[0])
        return corpus / "slurp_real" / record["recordings"][0]["file"]
    line = next(line for line in
                (corpus / "Session2/dialog/EmoEvaluation/Ses02F_impro01.txt").read_text()
                .splitlines() if line.startswith("[") and "\tneu\t" in line)
    utt = line.split("\t")[1]
    return corpus / "Session2/sentences/wav" / utt.rsplit("_", 1)[0] / f"{utt}.wav"


@pytest.fixture(params=sorted(CORPORA))
def command(request, mini_corpora, tmp_path):
    """(command name, its module, a copy of its corpus, extra arguments, a kept audio file)."""
    name = request.param
    folder, extra = CORPORA[name]
    corpus = tmp_path / "corpus" / Path(folder).name
    shutil.copytree(mini_corpora / folder, corpus)
    if name == "librilight":
        extra = [*extra, "--valid-folder", str(mini_corpora / "LibriSpeech" / "dev-clean")]
    module = importlib.import_module(f"data_prep.{name}")
    return name, module, corpus, extra, _kept_audio(corpus, name)


def _manifests(folder: Path) -> str:
    return "".join(path.read_text() for path in sorted(folder.rglob("*.csv")))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_verify_audio_refuses_a_truncated_file(command, tmp_path, caplog):
    name, module, corpus, extra, audio = command
    _truncate(audio)
    # Without verification the header's duration is believed: the preparation passes.
    module.main([str(corpus), str(tmp_path / "unverified"), *extra])
    assert audio.name in _manifests(tmp_path / "unverified")
    for out in ("out", "unverified"):  # an unverified preparation is not reused either
        caplog.clear()
        with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
            module.main([str(corpus), str(tmp_path / out), *extra, "--verify-audio"])
        assert exit_info.value.code == 1
        assert f"{audio}: " in caplog.text and "failed verification" in caplog.text
    assert not (tmp_path / "out" / MARKER).exists() and not _manifests(tmp_path / "out")
    options = {"split": "small", "min_duration": 2, "max_duration": 6}
    options = options if name == "librilight" else {}
    with pytest.raises(DataPrepError, match=r"1 of \d+ \w+ files failed verification:\n  /"):
        getattr(module, f"prepare_{name}")(str(corpus), str(tmp_path / "api"),
                                           verify_audio=True, num_workers=2, **options)


def test_verified_preparation_is_reused_by_an_unverified_request(command, tmp_path):
    _, module, corpus, extra, _ = command
    out = tmp_path / "out"
    module.main([str(corpus), str(out), *extra, "--verify-audio"])
    assert json.loads((out / MARKER).read_text())["verified_audio"] is True
    stamp = (out / MARKER).stat().st_mtime_ns
    module.main([str(corpus), str(out), *extra])
    module.main([str(corpus), str(out), *extra, "--verify-audio"])
    assert (out / MARKER).stat().st_mtime_ns == stamp


def test_changed_corpus_is_not_reused(command, tmp_path):
    name, module, corpus, extra, audio = command
    out = tmp_path / "out"
    module.main([str(corpus), str(out), *extra])
    assert audio.name in _manifests(out)
    stamp = (out / MARKER).stat().st_mtime_ns
    module.main([str(corpus), str(out), *extra])
    assert (out / MARKER).stat().st_mtime_ns == stamp  # unchanged corpus: reused
    os.utime(audio, ns=(audio.stat().st_atime_ns, audio.stat().st_mtime_ns + 10**9))
    module.main([str(corpus), str(out), *extra])  # the same file rewritten: prepared again
    assert (out / MARKER).stat().st_mtime_ns != stamp
    audio.unlink()
    if name == "librilight":  # found by listing the folder: left out
        module.main([str(corpus), str(out), *extra])
        assert audio.name not in _manifests(out) and (out / MARKER).exists()
    else:  # named by a transcript or trial list: the preparation says it is missing
        with pytest.raises(SystemExit, match="1"):
            module.main([str(corpus), str(out), *extra])


def test_macos_companion_files_are_ignored(command, tmp_path):
    # A corpus copied from a Mac holds "._<name>" (AppleDouble, not audio, not text) beside
    # every file and folder.
    _, module, corpus, extra, _ = command
    module.main([str(corpus), str(tmp_path / "clean"), *extra])
    for path in list(corpus.rglob("*")):
        if not path.name.startswith("._"):
            (path.parent / f"._{path.name}").write_bytes(b"\x00\x05\x16\x07\x00\x02\xff\xfe")
    module.main([str(corpus), str(tmp_path / "out"), *extra])
    assert _manifests(tmp_path / "out") == _manifests(tmp_path / "clean")


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_command_line_error_is_one_line(name, tmp_path, caplog):
    module = importlib.import_module(f"data_prep.{name}")
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        module.main([str(tmp_path / "nowhere"), str(tmp_path / "out")])
    assert exit_info.value.code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "nowhere" in errors[0] and "not found" in errors[0]
    assert "\n" not in errors[0]


def test_command_line_error_has_no_traceback(mini_corpora, tmp_path):
    corpus = tmp_path / "voxceleb1"
    shutil.copytree(mini_corpora / "voxceleb1", corpus)
    (corpus / "veri_test2.txt").write_text("1 id10270/NOSUCH/00001.wav id10270/x/00002.wav\n")
    result = subprocess.run(
        [sys.executable, "-m", "data_prep.voxceleb", str(corpus), str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [result.stderr.strip().splitlines()[-1]]
    assert "veri_test2.txt:1: id10270/NOSUCH/00001.wav not found" in errors[0]


def _write(path: Path, data: np.ndarray, rate: int = 16000, **kwargs: str) -> Path:
    sf.write(path, data, rate, **kwargs)
    return path


@pytest.fixture
def tone():
    t = np.arange(3 * 16000) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


@pytest.mark.parametrize("fmt", ["FLAC", "MP3", "WAV"])
def test_decode_problem_finds_truncation(tmp_path, tone, fmt):
    path = _write(tmp_path / f"a.{fmt.lower()}", tone, format=fmt)
    assert decode_problem(str(path)) is None
    _truncate(path)
    problem = decode_problem(str(path))
    assert problem is not None and problem.startswith(f"{path}: ")
    assert "truncated" in problem or "cannot decode" in problem


def test_decode_problem_other_faults(tmp_path, tone):
    missing = tmp_path / "missing.flac"
    assert decode_problem(str(missing)) == f"{missing}: cannot decode (file does not exist)"
    junk = tmp_path / "._a.wav"
    junk.write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    assert "Format not recognised" in decode_problem(str(junk))
    tone[1000] = np.nan
    nan = _write(tmp_path / "nan.wav", tone, subtype="FLOAT")
    assert decode_problem(str(nan)) == f"{nan}: 1 samples are NaN or infinite"
    empty = _write(tmp_path / "empty.wav", np.zeros(0, dtype=np.int16))
    assert decode_problem(str(empty)) == f"{empty}: no samples"


@pytest.mark.parametrize("workers", [0, 2])
def test_verify_audio_lists_the_first_failures_and_counts_the_rest(tmp_path, tone, workers):
    good = [_write(tmp_path / f"good{i}.flac", tone) for i in range(3)]
    bad = []
    for i in range(REPORT_LIMIT + 3):
        bad.append(tmp_path / f"bad{i:02d}.flac")
        bad[-1].write_bytes(b"fLaC")
    verify_audio_files(good, num_workers=workers)
    with pytest.raises(DataPrepError) as error:
        verify_audio_files(good + bad + bad[:1], "test", num_workers=workers)
    message = str(error.value)
    assert message.startswith(f"{REPORT_LIMIT + 3} of {REPORT_LIMIT + 6} test files failed")
    assert all(str(path) in message for path in bad[:REPORT_LIMIT])
    assert str(bad[-1]) not in message and "... and 3 more" in message


def test_run_once_reuses_a_verified_run_only_for_verified_requests(tmp_path):
    calls = []

    def build(folder):
        calls.append(folder)
        write_csv(folder / "out.csv", ["ID"], [{"ID": "a"}])

    assert run_once(tmp_path, {"x": 1}, ["out.csv"], build, {"files": 1})
    assert run_once(tmp_path, {"x": 1}, ["out.csv"], build, {"files": 1}, verify_audio=True)
    assert not run_once(tmp_path, {"x": 1}, ["out.csv"], build, {"files": 1})
    assert not run_once(tmp_path, {"x": 1}, ["out.csv"], build, {"files": 1}, verify_audio=True)
    assert run_once(tmp_path, {"x": 1}, ["out.csv"], build, {"files": 2})
    assert len(calls) == 3
