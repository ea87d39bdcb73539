"""Audio loading shared by the data preparation and every recipe's data pipeline.

All reading goes through :mod:`soundfile` (libsndfile reads FLAC, WAV and MP3); ``torchaudio.load``
is not used because torchaudio 2.9 delegates it to torchcodec, which this project does not install.
"""

from __future__ import annotations

import logging

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from data_prep.audio_files import audio_error_reason

logger = logging.getLogger(__name__)


class AudioReadError(ValueError):
    """An audio file could not be read, or the requested slice holds no samples."""


def read_audio(
    path: str, start: int = 0, stop: int | None = None, sample_rate: int = 16000
) -> torch.Tensor:
    """Read the ``[start, stop)`` sample slice of an audio file as a mono 16 kHz-style waveform.

    Only the requested slice is decoded (soundfile's ``start``/``stop``), multi-channel audio is
    averaged to mono, and the result is resampled to ``sample_rate`` when the file's own rate
    differs.

    Arguments
    ---------
    path : str
        Audio file (FLAC, WAV, MP3, ... anything libsndfile reads).
    start : int
        First sample to read, counted in the file's own sample rate.
    stop : int or None
        One past the last sample to read (file's own rate); ``None`` reads to the end.
    sample_rate : int
        Rate of the returned waveform, in Hz.

    Returns
    -------
    torch.Tensor
        shape: [time], float32.

    Raises
    ------
    AudioReadError
        If the file cannot be decoded or the slice is empty; the message names the file and
        says why (``file does not exist``, or soundfile's reason).

    Example
    -------
    >>> import tempfile, os
    >>> import numpy as np, soundfile as sf
    >>> path = os.path.join(tempfile.mkdtemp(), "tone.wav")
    >>> sf.write(path, np.ones((8000, 2), dtype="float32") * 0.5, 8000)
    >>> read_audio(path, start=100, stop=4100, sample_rate=8000).shape
    torch.Size([4000])
    >>> read_audio(path).shape  # 1 s at 8 kHz resampled to 16 kHz
    torch.Size([16000])
    >>> read_audio(path + ".missing")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    data_prep.audio.AudioReadError: ...tone.wav.missing: cannot read audio (file does not exist)
    """
    if start < 0 or (stop is not None and stop <= start):
        raise AudioReadError(f"{path}: expected 0 <= start < stop, got start={start}, stop={stop}")
    try:
        data, file_rate = sf.read(path, start=start, stop=stop, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        reason = audio_error_reason(path, err)
        raise AudioReadError(f"{path}: cannot read audio ({reason})") from err
    if data.shape[0] == 0:
        raise AudioReadError(f"{path}: no samples in slice [{start}, {stop})")
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))  # (T,)
    if file_rate != sample_rate:
        wav = AF.resample(wav, file_rate, sample_rate)
    return wav
