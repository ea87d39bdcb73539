"""Tests for the mini corpora generator (data_prep.mini) and its eSpeak NG synthesiser."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import soundfile as sf

from data_prep.mini import build_librispeech, main
from data_prep.synth import Voice, fft_resample

SR = 16000


@pytest.fixture(scope="module")
def truth(mini_corpora):
    return json.loads((mini_corpora / "ground_truth.json").read_text())


def test_cli_build_is_deterministic(mini_corpora, tmp_path, capsys):
    main(["--out", str(tmp_path), "--seed", "0"])
    assert "voxceleb" in capsys.readouterr().out
    assert (tmp_path / "ground_truth.json").read_bytes() == (
        mini_corpora / "ground_truth.json"
    ).read_bytes()
    for rel in ["slurp/dataset/slurp/train.jsonl", "cv-corpus-mini/cy/train.tsv",
                "IEMOCAP_full_release/Session2/dialog/EmoEvaluation/Ses02F_impro01.txt",
                "voxceleb1/veri_test2.txt"]:
        assert (tmp_path / rel).read_bytes() == (mini_corpora / rel).read_bytes()


def test_seed_changes_the_data(tmp_path):
    assert build_librispeech(tmp_path / "a", random.Random(0)) != build_librispeech(
        tmp_path / "b", random.Random(1)
    )


def test_sample_rates_and_formats(mini_corpora):
    clips = sorted((mini_corpora / "cv-corpus-mini" / "cy" / "clips").glob("*.mp3"))
    rates = [sf.info(str(c)).samplerate for c in clips]
    assert len(clips) == 60 and set(rates) == {48000, 32000} and rates.count(48000) > 40
    assert {sf.info(str(c)).format for c in clips} == {"MP3"}
    for pattern in ["librilight/small/*/*/[!.]*.flac", "slurp/slurp_real/*.flac",
                    "IEMOCAP_full_release/Session1/sentences/wav/*/Ses*.wav",
                    "voxceleb1/wav/*/*/[!.]*.wav", "LibriSpeech/dev-clean/*/*/*.flac"]:
        files = list(mini_corpora.glob(pattern))
        assert files and all(sf.info(str(f)).samplerate == SR for f in files), pattern


def test_macos_companion_files_sit_beside_the_audio(mini_corpora):
    # A corpus copied from a Mac has a "._<name>" beside its files; the preps must skip them.
    for pattern in ["librilight/small/*/*/._*.flac", "voxceleb1/wav/*/*/._*.wav",
                    "LibriSpeech/dev-clean/*/*/._*.trans.txt",
                    "IEMOCAP_full_release/Session1/sentences/wav/*/._*.wav"]:
        files = list(mini_corpora.glob(pattern))
        assert files, pattern
        with pytest.raises(sf.LibsndfileError):
            sf.info(str(files[0]))


def test_librilight_json_matches_speech(mini_corpora, truth):
    for rel, info in truth["librilight"].items():
        flac = mini_corpora / "librilight" / rel
        meta = json.loads(flac.with_suffix(".json").read_text())
        assert meta["speaker"] == info["spk"] and {"snr", "book_meta"} <= set(meta)
        assert meta["voice_activity"] == [[a / SR, b / SR] for a, b in info["spans"]]
        audio, _ = sf.read(str(flac), dtype="float32")
        assert len(audio) == info["frames"] and 20 * SR <= len(audio) <= 33 * SR
        speech = np.zeros(len(audio), dtype=bool)
        for a, b in info["spans"]:
            speech[a:b] = True
            assert np.abs(audio[a : a + 400]).max() > 0.005
        assert np.abs(audio[~speech]).max() == 0.0


def test_iemocap_holds_junk_and_dropped_classes(mini_corpora, truth):
    root = mini_corpora / "IEMOCAP_full_release"
    assert list(root.glob("Session*/sentences/wav/*/._*")) and list(
        root.glob("Session*/dialog/EmoEvaluation/._*")
    )
    codes = [t["code"] for t in truth["iemocap"].values()]
    assert {"fru", "xxx", "exc"} <= set(codes)
    text = (root / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt").read_text()
    assert text.startswith("% [START_TIME - END_TIME]") and "\nC-E1:\t" in text
    assert "\nA-E1:\t" in text and "\n\n[" in text


def _rms(paths):
    return np.mean([np.sqrt(np.mean(sf.read(str(p))[0] ** 2)) for p in paths])


def test_emotions_differ_in_prosody(mini_corpora, truth):
    root = mini_corpora / "IEMOCAP_full_release"
    by_code = {}
    for utt, info in truth["iemocap"].items():
        wav = root / f"Session{info['session']}/sentences/wav/{utt.rsplit('_', 1)[0]}/{utt}.wav"
        by_code.setdefault(info["code"], []).append((wav, info["frames"]))
    sad, ang = by_code["sad"], by_code["ang"]
    assert np.mean([f for _, f in sad]) > 1.5 * np.mean([f for _, f in ang])  # slower
    assert _rms([w for w, _ in ang]) > 2 * _rms([w for w, _ in sad])  # louder


def _pitch_hz(wav):
    """Median autocorrelation pitch over the loudest 40 ms frames (70-400 Hz search)."""
    frames = wav[: len(wav) // 640 * 640].reshape(-1, 640)
    loud = frames[np.argsort((frames**2).sum(axis=1))[-10:]]
    lags = np.arange(SR // 400, SR // 70)
    estimates = []
    for frame in loud:
        corr = [np.dot(frame[:-lag], frame[lag:]) for lag in lags]
        estimates.append(SR / lags[int(np.argmax(corr))])
    return float(np.median(estimates))


def test_voice_pitch_follows_setting():
    text = "the birch canoe slid on the smooth planks"
    low, high = (_pitch_hz(Voice("en+m1", pitch=p).say(text)) for p in (15, 85))
    assert high > 1.3 * low


def test_welsh_voice_and_fft_resample():
    wav = Voice("cy").say("Mae'r tŷ ar ben y bryn.", sample_rate=48000)
    assert wav.dtype == np.float32 and 0.5 < len(wav) / 48000 < 4.0
    tone = np.sin(2 * np.pi * 300 * np.arange(22050) / 22050).astype(np.float32)
    out = fft_resample(tone, 22050, SR)
    assert np.allclose(out, np.sin(2 * np.pi * 300 * np.arange(SR) / SR), atol=1e-3)
    with pytest.raises(ValueError, match="voice"):
        Voice("no-such-voice").say("x")
