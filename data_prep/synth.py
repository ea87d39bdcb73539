"""Speech synthesis with eSpeak NG through ctypes, for the mini corpora.

The shared library and its voice data come from the ``espeakng-loader`` wheel, so nothing needs to
be installed system-wide. eSpeak keeps global state, so one :class:`Voice` call at a time per
process; synthesis runs about 1000x faster than real time. The output depends on the engine's
history (its waveform generator's phase), so reproducible data needs a fresh process per
sequence of utterances. The breathy variants (``f2``, ``f3``, ``f5``, ...) mix in noise that
differs from run to run: use variants without ``breath`` (``m1``-``m6``, ``f1``, ``f4``,
``linda``, ``belinda``, ``aunty``, ``Andy``) where the output must be reproducible.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass

import espeakng_loader
import numpy as np

logger = logging.getLogger(__name__)

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM = {"rate": 1, "volume": 2, "pitch": 3, "range": 4}
_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _Engine:
    """The process-wide eSpeak NG instance (initialised on first use)."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        data = espeakng_loader.get_data_path().encode()
        self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed with {self.sample_rate}")
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: C holds the pointer
        lib.espeak_SetSynthCallback(self._callback)
        self.lib = lib

    def _collect(self, wav: ctypes.POINTER(ctypes.c_short), count: int, _events: int) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0  # 0 = continue synthesis

    def say(self, text: str, voice: str, params: dict[str, int]) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"expected an eSpeak voice name, got {voice!r}")
        for name, value in params.items():
            self.lib.espeak_SetParameter(_PARAM[name], int(value), 0)
        self._chunks = []
        text_bytes = text.encode("utf-8")
        status = self.lib.espeak_Synth(
            text_bytes, len(text_bytes) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed with {status} on {text!r}")
        self.lib.espeak_Synchronize()
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)


_engine: _Engine | None = None


def fft_resample(wav: np.ndarray, orig: int, new: int) -> np.ndarray:
    """Band-limited resampling of a short clip by truncating / zero-padding its spectrum.

    One FFT per clip: far cheaper than a sinc kernel for the awkward 22050 -> 16000 ratio.

    Arguments
    ---------
    wav : np.ndarray
        ``(S,)`` samples at ``orig`` Hz.
    orig : int
        Its sample rate.
    new : int
        The sample rate wanted.

    Returns
    -------
    np.ndarray
        ``(round(S * new / orig),)`` float32 samples at ``new`` Hz.

    Example
    -------
    >>> fft_resample(np.ones(22050, dtype=np.float32), 22050, 16000).shape
    (16000,)
    """
    n_new = round(len(wav) * new / orig)
    spectrum = np.fft.rfft(wav)
    size = n_new // 2 + 1
    if len(spectrum) >= size:
        spectrum = spectrum[:size]
    else:
        spectrum = np.concatenate([spectrum, np.zeros(size - len(spectrum), spectrum.dtype)])
    return (np.fft.irfft(spectrum, n_new) * (n_new / len(wav))).astype(np.float32)


@dataclass(frozen=True)
class Voice:
    """An eSpeak NG voice with prosody settings: one synthetic speaker (or emotion).

    Arguments
    ---------
    name : str
        eSpeak voice, optionally with a variant: ``"en"``, ``"en+f4"``, ``"cy+m2"``.
    rate : int
        Words per minute (eSpeak's default is 175).
    pitch : int
        Base pitch, 0-100.
    pitch_range : int
        Pitch range, 0-100 (0 = monotone).
    volume : int
        Amplitude, 0-200.

    Example
    -------
    >>> wav = Voice("en+f1", pitch=70).say("hello world", sample_rate=16000)
    >>> wav.dtype, 0.3 < len(wav) / 16000 < 3.0
    (dtype('float32'), True)
    """

    name: str
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50
    volume: int = 100

    def say(self, text: str, sample_rate: int = 16000, trim: bool = True) -> np.ndarray:
        """Synthesise ``text``; return float32 samples in [-1, 1] at ``sample_rate``.

        With ``trim`` the leading and trailing silence eSpeak adds is cut off, so the whole
        returned signal is speech (used to place exact voice-activity spans).

        Arguments
        ---------
        text : str
            What to say.
        sample_rate : int
            Sample rate of the returned signal.
        trim : bool
            Cut the leading and trailing silence off.

        Returns
        -------
        np.ndarray
            ``(S,)`` float32 samples.

        Raises
        ------
        RuntimeError
            If eSpeak produced no audio.
        """
        global _engine
        if _engine is None:
            _engine = _Engine()
        params = {
            "rate": self.rate, "pitch": self.pitch, "range": self.pitch_range,
            "volume": self.volume,
        }
        raw = _engine.say(text, self.name, params).astype(np.float32) / 32768.0
        if trim:
            loud = np.flatnonzero(np.abs(raw) > 0.01)
            raw = raw[loud[0] : loud[-1] + 1] if loud.size else raw[:0]
        if raw.size == 0:
            raise RuntimeError(f"eSpeak produced no audio for {text!r} with {self.name}")
        if _engine.sample_rate != sample_rate:
            raw = fft_resample(raw, _engine.sample_rate, sample_rate)
        return np.clip(raw, -1.0, 1.0)
