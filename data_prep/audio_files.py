"""Many audio files at once (torch-free): their lengths, and whether they decode to the end.

* :func:`audio_frames`: every file's ``(frames, sample rate)`` from its header, in parallel.
* :func:`verify_audio_files`: the ``--verify-audio`` pass of every preparation, decoding every file
  (in parallel, with a progress bar) and refusing unreadable, truncated or non-finite ones.
* :func:`audio_error_reason`: why soundfile could not open a file, in words (also used by
  :func:`data_prep.audio.read_audio`).

This module imports neither torch nor torchaudio, so that the spawned workers start quickly.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np
import soundfile as sf

from data_prep.common import DataPrepError, parallel_map

logger = logging.getLogger(__name__)

# Frames decoded per read in the verification pass (bounded memory for hour-long chapters).
DECODE_BLOCK = 1 << 16
# An MP3 header's length may exceed what decodes by up to two MPEG frames of padding.
MP3_SLACK_FRAMES = 2 * 1152
# How many failed files a verification error lists before giving a count of the rest.
REPORT_LIMIT = 20
# The data size a WAV writer puts in its header when it cannot seek back (streaming).
STREAMED_WAV_SIZE = 0xFFFFFFFF
# libsndfile's log line for a WAV whose header announces more audio data than the file holds.
_WAV_DATA_SIZE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def audio_error_reason(path: str | os.PathLike, err: Exception) -> str:
    """Why an audio file could not be opened, in words: ``file does not exist``, ``a folder, not
    a file``, or the reason soundfile (libsndfile) gives.

    libsndfile reports every operating-system failure as ``System error.``; for those the
    operating system's own reason (e.g. permission denied) is given instead.

    Arguments
    ---------
    path : str or PathLike
        The file that failed.
    err : Exception
        The error soundfile raised.

    Returns
    -------
    str
        The reason, without the path.

    Example
    -------
    >>> try:
    ...     sf.info("/no/such.flac")
    ... except sf.LibsndfileError as err:
    ...     audio_error_reason("/no/such.flac", err)
    'file does not exist'
    """
    if not os.path.lexists(path):
        return "file does not exist"
    if os.path.isdir(path):
        return "a folder, not a file"
    reason = getattr(err, "error_string", None) or str(err)
    if reason.strip() == "System error.":
        try:
            with open(path, "rb"):
                pass
        except OSError as os_err:
            reason = os_err.strerror or str(os_err)
    return reason


def _frames(path: str) -> tuple[int, int]:
    """Return ``(num_frames, sample_rate)`` of one audio file, or raise :class:`DataPrepError`."""
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise DataPrepError(
            f"{path}: unreadable audio file ({audio_error_reason(path, err)})"
        ) from err
    if info.frames <= 0:
        raise DataPrepError(f"{path}: empty audio file")
    return info.frames, info.samplerate


def audio_frames(
    paths: Sequence[str | os.PathLike], desc: str = "audio", num_workers: int | None = None
) -> list[tuple[int, int]]:
    """Read ``(num_frames, sample_rate)`` of many audio files, in parallel when there are many.

    The lengths are the files' headers' (nothing is decoded): :func:`verify_audio_files` checks
    that the audio is all there.

    Arguments
    ---------
    paths : Sequence
        Audio files.
    desc : str
        Label of the progress bar.
    num_workers : int or None
        Worker processes (see :func:`data_prep.common.parallel_map`).

    Returns
    -------
    list of (int, int)
        ``(num_frames, sample_rate)`` per path, in order.

    Raises
    ------
    DataPrepError
        Naming the first unreadable or empty file.

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.flac")
    >>> sf.write(path, np.zeros(1600, dtype="int16"), 16000)
    >>> audio_frames([path])
    [(1600, 16000)]
    """
    names = [str(p) for p in paths]
    return parallel_map(_frames, names, f"Reading {desc} lengths", num_workers, chunksize=64)


def decode_problem(path: str) -> str | None:
    """Decode a whole audio file; say what is wrong with it, or return ``None``.

    A file is wrong when it cannot be opened or decoded to its end, when it decodes to fewer
    frames than its header announces (a truncated FLAC or MP3; an MP3 may fall short by up to
    ``MP3_SLACK_FRAMES`` of encoder padding), when a WAV header's data size exceeds the file
    (a truncated WAV), when it has no samples, or when a sample is not finite (NaN or infinity
    in a float file).

    Arguments
    ---------
    path : str
        The audio file.

    Returns
    -------
    str or None
        ``"<path>: <what is wrong>"``, or ``None`` for a sound file.

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.flac")
    >>> sf.write(path, np.zeros(48000, dtype="int16"), 16000)
    >>> decode_problem(path) is None
    True
    >>> _ = open(path, "r+b").truncate(os.path.getsize(path) // 2)
    >>> decode_problem(path)  # doctest: +ELLIPSIS
    '...a.flac: cannot decode ...'
    """
    decoded, non_finite = 0, 0
    try:
        info = sf.info(path)
        with sf.SoundFile(path) as handle:
            while True:
                block = handle.read(DECODE_BLOCK, dtype="float32", always_2d=True)
                decoded += len(block)
                non_finite += int(block.size - np.count_nonzero(np.isfinite(block)))
                if len(block) < DECODE_BLOCK:
                    break
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        where_ = f" after {decoded} frames" if decoded else ""
        return f"{path}: cannot decode{where_} ({audio_error_reason(path, err)})"
    wav_data = _WAV_DATA_SIZE.search(info.extra_info) if info.format.startswith("WAV") else None
    if wav_data is not None and not int(wav_data[2]) < int(wav_data[1]) < STREAMED_WAV_SIZE:
        wav_data = None  # not short, or a streamed WAV (size unknown when its header was written)
    slack = MP3_SLACK_FRAMES if info.format == "MP3" else 0
    if decoded == 0:
        return f"{path}: no samples"
    if decoded < info.frames - slack:
        return (f"{path}: truncated: decoded {decoded} of the {info.frames} frames its header "
                f"announces ({decoded / info.samplerate:.2f} of "
                f"{info.frames / info.samplerate:.2f} s)")
    if wav_data is not None:
        return (f"{path}: truncated: its header announces {wav_data[1]} bytes of audio data, the "
                f"file holds {wav_data[2]}")
    if non_finite:
        return f"{path}: {non_finite} samples are NaN or infinite"
    return None


def verify_audio_files(
    paths: Iterable[str | os.PathLike], desc: str = "audio", num_workers: int | None = None
) -> None:
    """Decode every file (:func:`decode_problem`), in parallel with a progress bar; log each
    problem and refuse if there is any.

    Arguments
    ---------
    paths : Iterable
        Audio files (duplicates are decoded once).
    desc : str
        What the files are, for the progress bar and the messages.
    num_workers : int or None
        Worker processes (see :func:`data_prep.common.parallel_map`).

    Raises
    ------
    DataPrepError
        Listing the failed files (the first ``REPORT_LIMIT``, then a count of the rest).

    Example
    -------
    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> good, bad = os.path.join(folder, "good.wav"), os.path.join(folder, "bad.wav")
    >>> sf.write(good, np.zeros(1600, dtype="int16"), 16000)
    >>> _ = open(bad, "wb").write(b"not audio")
    >>> verify_audio_files([good])
    >>> verify_audio_files([good, bad])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    data_prep.common.DataPrepError: 1 of 2 audio files failed verification:
      ...bad.wav: cannot decode (Format not recognised.)
    """
    names = sorted({str(p) for p in paths})
    results = parallel_map(decode_problem, names, f"Verifying {desc} audio", num_workers)
    problems = [problem for problem in results if problem is not None]
    for problem in problems:
        logger.error("%s", problem)
    if problems:
        listed = problems[:REPORT_LIMIT]
        more = len(problems) - len(listed)
        raise DataPrepError(
            f"{len(problems)} of {len(names)} {desc} files failed verification:\n  "
            + "\n  ".join(listed) + (f"\n  ... and {more} more (all logged above)" if more else "")
        )
    logger.info("Verified %d %s files: all decode to their full length", len(names), desc)
