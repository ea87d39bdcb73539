"""Tests for data_prep.audio.read_audio."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from data_prep.audio import AudioReadError, read_audio


def _ramp(n: int) -> np.ndarray:
    return ((np.arange(n) % 2000) - 1000).astype(np.int16)


def test_slice_reads_exact_samples(tmp_path):
    data = _ramp(16000)
    path = tmp_path / "a.flac"
    sf.write(path, data, 16000)
    wav = read_audio(str(path), start=1234, stop=5678)
    assert wav.dtype == torch.float32 and wav.shape == (5678 - 1234,)
    assert torch.equal(wav, torch.from_numpy(data[1234:5678] / 32768.0).float())


def test_default_reads_whole_file(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, _ramp(3000), 16000)
    assert read_audio(str(path)).shape == (3000,)


def test_stereo_is_mixed_to_mono(tmp_path):
    path = tmp_path / "stereo.wav"
    left, right = np.full(800, 0.5), np.full(800, -0.25)
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    assert torch.allclose(read_audio(str(path)), torch.full((800,), 0.125))


@pytest.mark.parametrize("fmt,rate", [("WAV", 48000), ("MP3", 48000), ("FLAC", 8000)])
def test_resamples_to_target_rate(tmp_path, fmt, rate):
    t = np.arange(rate) / rate
    path = tmp_path / f"tone.{fmt.lower()}"
    sf.write(path, 0.5 * np.sin(2 * np.pi * 440 * t), rate, format=fmt)
    wav = read_audio(str(path), sample_rate=16000)
    # MP3 decoders add a few ms of padding; WAV/FLAC resample to exactly one second.
    assert abs(wav.shape[0] - 16000) <= (1200 if fmt == "MP3" else 0)
    spectrum = torch.fft.rfft(wav[2000:14000]).abs()
    peak_hz = spectrum.argmax().item() * 16000 / 12000
    assert abs(peak_hz - 440) < 5


def test_missing_file_names_the_file_and_says_it_does_not_exist(tmp_path):
    # libsndfile itself says only "System error."
    path = tmp_path / "nope.flac"
    with pytest.raises(AudioReadError) as error:
        read_audio(str(path))
    assert str(error.value) == f"{path}: cannot read audio (file does not exist)"
    (tmp_path / "folder.wav").mkdir()
    with pytest.raises(AudioReadError, match=r"folder.wav: cannot read audio \(a folder, not a"):
        read_audio(str(tmp_path / "folder.wav"))


def test_garbage_file_names_the_file_and_keeps_the_reason(tmp_path):
    path = tmp_path / "junk.wav"
    path.write_bytes(b"\x00\x05\x16\x07 not audio at all")
    with pytest.raises(AudioReadError) as error:
        read_audio(str(path))
    assert str(error.value) == f"{path}: cannot read audio (Format not recognised.)"
    truncated = tmp_path / "half.flac"
    sf.write(truncated, _ramp(48000), 16000)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(AudioReadError, match=r"half.flac: cannot read audio \(.*flac decoder"):
        read_audio(str(truncated))


def test_empty_file_or_slice_is_an_error(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.int16), 16000)
    with pytest.raises(AudioReadError, match="empty.wav"):
        read_audio(str(path))
    full = tmp_path / "short.wav"
    sf.write(full, _ramp(100), 16000)
    with pytest.raises(AudioReadError, match="short.wav"):
        read_audio(str(full), start=500, stop=600)
    with pytest.raises(AudioReadError, match="start < stop"):
        read_audio(str(full), start=50, stop=50)
