"""Helpers shared by every corpus preparation.

* :class:`DataPrepError`: the one error every prep raises for bad input, always naming the file
  (and the line, where there is one).
* :func:`run_once`: idempotency. A save folder is reused only when its completion marker, written
  last, records the same options; otherwise the folder's manifests are rebuilt.
* :func:`write_csv` / :func:`write_text`: atomic writes (temporary file + ``os.replace``).
* :func:`audio_frames`: parallel, progress-barred reading of audio lengths.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import soundfile as sf
from tqdm import tqdm

from data_prep.files import PARTIAL_SUFFIX, atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

MARKER = ".prep_done.json"
# Below this many files a worker pool costs more than it saves.
PARALLEL_THRESHOLD = 256
# Workers are spawned, not forked: forking after torch has started its thread pools can hang.
POOL_CONTEXT = multiprocessing.get_context("spawn")


class DataPrepError(ValueError):
    """Bad or missing corpus input; the message names the file and, where known, the line."""


def where(path: str | os.PathLike, line: int | None = None) -> str:
    """Format a ``file:line`` location for error messages.

    Arguments
    ---------
    path : str or PathLike
        The file.
    line : int, optional
        Its 1-based line number, if known.

    Returns
    -------
    str
        ``path:line``, or ``path`` alone.

    Example
    -------
    >>> where("train.tsv", 3)
    'train.tsv:3'
    >>> where("a.flac")
    'a.flac'
    """
    return f"{path}:{line}" if line is not None else str(path)


def require_dir(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` as a ``Path``, raising :class:`DataPrepError` when it is not a folder.

    Arguments
    ---------
    path : str or PathLike
        The folder that must exist.
    what : str
        What the folder is, for the error message.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    DataPrepError
        Naming ``path`` and ``what`` when the folder does not exist.

    Example
    -------
    >>> require_dir("/no/such/folder", "LibriLight split")
    Traceback (most recent call last):
    ...
    data_prep.common.DataPrepError: /no/such/folder: LibriLight split folder not found
    """
    path = Path(path)
    if not path.is_dir():
        raise DataPrepError(f"{path}: {what} folder not found")
    return path


def require_file(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` as a ``Path``, raising :class:`DataPrepError` when it is not a file.

    Arguments
    ---------
    path : str or PathLike
        The file that must exist.
    what : str
        What the file is, for the error message.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    DataPrepError
        Naming ``path`` and ``what`` when the file does not exist.

    Example
    -------
    >>> require_file("/no/such/file.tsv", "CommonVoice split")
    Traceback (most recent call last):
    ...
    data_prep.common.DataPrepError: /no/such/file.tsv: CommonVoice split file not found
    """
    path = Path(path)
    if not path.is_file():
        raise DataPrepError(f"{path}: {what} file not found")
    return path


def utf8_lines(path: str | os.PathLike) -> Iterator[str]:
    """Yield the lines (with their line ends) of a UTF-8 text file.

    Arguments
    ---------
    path : str or PathLike
        The text file.

    Raises
    ------
    DataPrepError
        Naming the file and line of bytes that are not UTF-8.

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "t.txt")
    >>> _ = open(path, "wb").write(b"ok\\n\\xff\\n")
    >>> list(utf8_lines(path))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    data_prep.common.DataPrepError: ...t.txt:2: not UTF-8 text ...
    """
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataPrepError(f"{where(path, line_no)}: not UTF-8 text ({err})") from err


def write_csv(path: str | os.PathLike, fields: Sequence[str], rows: Iterable[Mapping]) -> int:
    """Atomically write a SpeechBrain-style CSV manifest (first column ``ID``).

    Arguments
    ---------
    path : str or PathLike
        The CSV file to write.
    fields : Sequence[str]
        Column names, in order (``ID`` first).
    rows : Iterable[Mapping]
        One mapping per row, keyed by ``fields`` (another key is a ``ValueError``).

    Returns
    -------
    int
        The number of rows written.

    Example
    -------
    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "m.csv")
    >>> write_csv(out, ["ID", "duration"], [{"ID": "a", "duration": 1.5}])
    1
    >>> open(out).read().splitlines()
    ['ID,duration', 'a,1.5']
    """
    rows = list(rows)

    def write(handle: Any) -> None:
        writer = csv.DictWriter(handle, fieldnames=list(fields), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)

    atomic_write(path, write)
    logger.info("Wrote %d rows to %s", len(rows), path)
    return len(rows)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write a text file.

    Arguments
    ---------
    path : str or PathLike
        The file to write.
    text : str
        Its whole content (UTF-8).

    Example
    -------
    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "t.txt")
    >>> write_text(out, "hello\\n")
    >>> open(out).read()
    'hello\\n'
    """
    atomic_write_text(path, text)


def run_once(
    save_folder: str | os.PathLike,
    options: Mapping[str, Any],
    outputs: Sequence[str],
    build: Callable[[Path], None],
) -> bool:
    """Run ``build(save_folder)`` unless a completed run with the same options is there.

    A run is complete when the marker file (written last, holding ``options``) matches and every
    name in ``outputs`` exists. Anything else (no marker, other options, a leftover temporary file
    from an interrupted run) is rebuilt from scratch.

    Arguments
    ---------
    save_folder : str or PathLike
        Folder receiving the manifests.
    options : Mapping
        JSON-serialisable options that determine the output.
    outputs : Sequence[str]
        Files (relative to ``save_folder``) that a complete run leaves.
    build : Callable[[Path], None]
        Writes the outputs into the folder it is given.

    Returns
    -------
    bool
        ``True`` if ``build`` ran, ``False`` if the folder was reused.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> build = lambda f: write_text(f / "out.txt", "x")
    >>> run_once(folder, {"a": 1}, ["out.txt"], build)
    True
    >>> run_once(folder, {"a": 1}, ["out.txt"], build)
    False
    >>> run_once(folder, {"a": 2}, ["out.txt"], build)
    True
    """
    folder = Path(save_folder)
    marker = folder / MARKER
    wanted = json.loads(json.dumps(dict(options), sort_keys=True, default=str))
    if marker.is_file() and all((folder / name).is_file() for name in outputs):
        try:
            done = json.loads(marker.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            done = None
        if done == wanted:
            logger.info("%s already prepared with these options; skipping", folder)
            return False
    folder.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    for name in [*outputs, MARKER]:  # leftovers of an interrupted write
        (folder / (name + PARTIAL_SUFFIX)).unlink(missing_ok=True)
    build(folder)
    write_text(marker, json.dumps(wanted, sort_keys=True, indent=1) + "\n")
    return True


def _frames(path: str) -> tuple[int, int]:
    """Return ``(num_frames, sample_rate)`` of one audio file, or raise :class:`DataPrepError`."""
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise DataPrepError(f"{path}: unreadable audio file ({err})") from err
    if info.frames <= 0:
        raise DataPrepError(f"{path}: empty audio file")
    return info.frames, info.samplerate


def audio_frames(
    paths: Sequence[str | os.PathLike], desc: str = "audio", num_workers: int | None = None
) -> list[tuple[int, int]]:
    """Read ``(num_frames, sample_rate)`` of many audio files, in parallel when there are many.

    Arguments
    ---------
    paths : Sequence
        Audio files.
    desc : str
        Label of the progress bar.
    num_workers : int or None
        Worker processes; ``None`` uses every CPU once there are more than
        ``PARALLEL_THRESHOLD`` files, ``0`` or ``1`` reads in this process.

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
    >>> import numpy as np, soundfile as sf
    >>> path = os.path.join(tempfile.mkdtemp(), "a.flac")
    >>> sf.write(path, np.zeros(1600, dtype="int16"), 16000)
    >>> audio_frames([path])
    [(1600, 16000)]
    """
    names = [str(p) for p in paths]
    if num_workers is None:
        num_workers = (os.cpu_count() or 1) if len(names) > PARALLEL_THRESHOLD else 0
    bar = dict(total=len(names), desc=f"Reading {desc} lengths", unit="file", leave=False)
    if num_workers <= 1:
        return [_frames(name) for name in tqdm(names, **bar)]
    with POOL_CONTEXT.Pool(num_workers) as pool:
        return list(tqdm(pool.imap(_frames, names, chunksize=64), **bar))


def holdout(keys: Sequence[str], fraction: float) -> set[str]:
    """Deterministically pick about ``fraction`` of ``keys`` (spread evenly in sorted order).

    At least one key is held out when ``fraction > 0`` and there are two or more keys, and never
    all of them.

    Arguments
    ---------
    keys : Sequence[str]
        Keys to pick from (duplicates count once).
    fraction : float
        Fraction to hold out, in ``[0, 1)``.

    Returns
    -------
    set of str
        The keys held out.

    Example
    -------
    >>> sorted(holdout([f"u{i}" for i in range(10)], 0.2))
    ['u2', 'u7']
    >>> holdout(["only"], 0.5)
    set()
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"expected 0 <= fraction < 1, got {fraction}")
    ordered = sorted(set(keys))
    if fraction == 0.0 or len(ordered) < 2:
        return set()
    count = min(max(1, round(len(ordered) * fraction)), len(ordered) - 1)
    step = len(ordered) / count
    return {ordered[int(step * i + step / 2)] for i in range(count)}
