"""Helpers shared by every corpus preparation.

* :class:`DataPrepError`: the one error every prep raises for bad input, always naming the file
  (and the line, where there is one); :func:`run_command` turns it into a one-line message and
  exit status 1 on the command line.
* :func:`run_once`: idempotency. A save folder is reused only when its completion marker, written
  last, records the same options and the same corpus listing (:func:`corpus_listing`: relative
  paths, sizes and modification times of the files read); otherwise the manifests are rebuilt.
* :func:`list_files`: corpus files matching a pattern, without macOS ``._*`` companion files.
* :func:`write_csv` (and ``data_prep.files.atomic_write_text``): atomic writes (temporary file
  + ``os.replace``).
* :func:`parallel_map`: a progress-barred map, in spawned worker processes for large corpora
  (:mod:`data_prep.audio_files` reads audio lengths and verifies the audio with it).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_prep.files import PARTIAL_SUFFIX, atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

MARKER = ".prep_done.json"
# Below this many files a worker pool costs more than it saves.
PARALLEL_THRESHOLD = 256
# Workers are spawned, not forked: forking after torch has started its thread pools can hang.
POOL_CONTEXT = multiprocessing.get_context("spawn")
# macOS writes an AppleDouble companion "._<name>" (not audio, not text) beside every file it
# copies to a foreign file system; corpora copied from a Mac carry thousands of them.
RESOURCE_FORK_PREFIX = "._"


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


def list_files(folder: str | os.PathLike, pattern: str) -> list[Path]:
    """The files under ``folder`` matching the glob ``pattern``, sorted, without macOS ``._*``
    companion files (their count is logged).

    Arguments
    ---------
    folder : str or PathLike
        The folder to search.
    pattern : str
        A :meth:`pathlib.Path.glob` pattern, e.g. ``*/*/*.wav`` or ``**/*.trans.txt``.

    Returns
    -------
    list of Path
        The matching files, sorted.

    Example
    -------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "id1" / "v").mkdir(parents=True)
    >>> for name in ("00001.wav", "._00001.wav"):
    ...     _ = (root / "id1" / "v" / name).write_bytes(b"")
    >>> [p.relative_to(root).as_posix() for p in list_files(root, "*/*/*.wav")]
    ['id1/v/00001.wav']
    """
    found = sorted(p for p in Path(folder).glob(pattern) if p.is_file())
    kept = [p for p in found if not p.name.startswith(RESOURCE_FORK_PREFIX)]
    if len(kept) < len(found):
        logger.info("%s: skipped %d macOS '%s*' companion files", folder, len(found) - len(kept),
                    RESOURCE_FORK_PREFIX)
    return kept


def corpus_listing(root: str | os.PathLike, files: Iterable[str | os.PathLike]) -> dict:
    """A fingerprint of the files a preparation reads: their paths relative to ``root``, sizes
    and modification times, hashed (SHA-256) with their count and total size.

    Any file added, deleted, replaced, grown or touched changes the fingerprint; reading a file
    does not.

    Arguments
    ---------
    root : str or PathLike
        The corpus folder the paths are made relative to (so that the same corpus gives the same
        listing wherever it sits: the manifests' absolute paths are keyed by the options).
    files : Iterable
        The files the preparation reads (duplicates count once).

    Returns
    -------
    dict
        ``{"files": count, "bytes": total size, "sha256": hex digest}``.

    Raises
    ------
    DataPrepError
        Naming a file that does not exist.

    Example
    -------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "a.txt").write_text("abc")
    >>> listing = corpus_listing(root, [root / "a.txt"])
    >>> listing["files"], listing["bytes"]
    (1, 3)
    >>> _ = (root / "b.txt").write_text("")
    >>> corpus_listing(root, [root / "a.txt", root / "b.txt"]) == listing
    False
    """
    digest, count, total = hashlib.sha256(), 0, 0
    entries = sorted({os.path.relpath(path, root): Path(path) for path in files}.items())
    for rel, path in entries:
        try:
            stat = path.stat()
        except OSError as err:
            raise DataPrepError(f"{path}: cannot read file ({err.strerror})") from err
        digest.update(f"{rel}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        count, total = count + 1, total + stat.st_size
    return {"files": count, "bytes": total, "sha256": digest.hexdigest()}


def run_once(
    save_folder: str | os.PathLike,
    options: Mapping[str, Any],
    outputs: Sequence[str],
    build: Callable[[Path], None],
    listing: Mapping[str, Any] | None = None,
    verify_audio: bool = False,
) -> bool:
    """Run ``build(save_folder)`` unless a completed run of the same options on the same corpus
    is there.

    A run is complete when the marker file (written last) matches and every name in ``outputs``
    exists. The marker records ``options``, ``listing`` (the corpus fingerprint of
    :func:`corpus_listing`: a file of the corpus deleted, added or changed since the run forces a
    rebuild) and whether ``build`` verified the audio: a request with ``verify_audio`` reuses only
    a verified run, a request without it reuses either. Anything else (no marker, other options,
    another corpus, a leftover temporary file from an interrupted run) is rebuilt from scratch,
    and the reason is logged.

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
    listing : Mapping or None
        Fingerprint of the files ``build`` reads (:func:`corpus_listing`).
    verify_audio : bool
        Whether ``build`` decodes every audio file it keeps
        (:func:`data_prep.audio_files.verify_audio_files`).

    Returns
    -------
    bool
        ``True`` if ``build`` ran, ``False`` if the folder was reused.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> build = lambda f: atomic_write_text(f / "out.txt", "x")
    >>> run_once(folder, {"a": 1}, ["out.txt"], build)
    True
    >>> run_once(folder, {"a": 1}, ["out.txt"], build)
    False
    >>> run_once(folder, {"a": 2}, ["out.txt"], build)
    True
    >>> run_once(folder, {"a": 2}, ["out.txt"], build, listing={"files": 3})
    True
    """
    folder = Path(save_folder)
    marker = folder / MARKER
    wanted = json.loads(json.dumps(
        {"options": dict(options), "inputs": listing}, sort_keys=True, default=str
    ))
    if marker.is_file() and all((folder / name).is_file() for name in outputs):
        try:
            done = json.loads(marker.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            done = None
        done = done if isinstance(done, dict) else {}
        if done.get("options") != wanted["options"]:
            logger.info("%s: prepared with other options; preparing again", folder)
        elif done.get("inputs") != wanted["inputs"]:
            then, now = done.get("inputs") or {}, wanted["inputs"] or {}
            logger.info("%s: the corpus files changed since it was prepared (then %s files, %s "
                        "bytes; now %s files, %s bytes; or a file was modified); preparing again",
                        folder, then.get("files"), then.get("bytes"), now.get("files"),
                        now.get("bytes"))
        elif verify_audio and not done.get("verified_audio"):
            logger.info("%s: prepared without verifying the audio; preparing again", folder)
        else:
            logger.info("%s already prepared with these options and this corpus; skipping", folder)
            return False
    folder.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    for name in [*outputs, MARKER]:  # leftovers of an interrupted write
        (folder / (name + PARTIAL_SUFFIX)).unlink(missing_ok=True)
    build(folder)
    done = {**wanted, "verified_audio": verify_audio}
    atomic_write_text(marker, json.dumps(done, sort_keys=True, indent=1) + "\n")
    return True


def parallel_map(
    func: Callable[[Any], Any],
    items: Sequence[Any],
    desc: str,
    num_workers: int | None = None,
    unit: str = "file",
    chunksize: int = 16,
) -> list[Any]:
    """``[func(item) for item in items]`` with a progress bar, in worker processes when there are
    many items.

    Arguments
    ---------
    func : Callable
        A module-level function (workers are spawned and import it).
    items : Sequence
        Its arguments.
    desc : str
        Label of the progress bar.
    num_workers : int or None
        Worker processes; ``None`` uses every CPU once there are more than
        ``PARALLEL_THRESHOLD`` items, ``0`` or ``1`` runs in this process.
    unit : str
        What an item is, for the progress bar.
    chunksize : int
        Items sent to a worker at a time.

    Returns
    -------
    list
        The results, in the order of ``items``.

    Example
    -------
    >>> parallel_map(abs, [-1, 2, -3], "absolute values", num_workers=0)
    [1, 2, 3]
    """
    if num_workers is None:
        num_workers = (os.cpu_count() or 1) if len(items) > PARALLEL_THRESHOLD else 0
    bar = dict(total=len(items), desc=desc, unit=unit, leave=False)
    if num_workers <= 1:
        return [func(item) for item in tqdm(items, **bar)]
    with POOL_CONTEXT.Pool(num_workers) as pool:
        return list(tqdm(pool.imap(func, items, chunksize=chunksize), **bar))


def run_command(prepare: Callable[..., Any], **kwargs: Any) -> None:
    """Run a preparation from the command line: log to stderr, and report a
    :class:`DataPrepError` as its one-line message (no traceback) with exit status 1.

    Arguments
    ---------
    prepare : Callable
        The ``prepare_*`` function.
    **kwargs
        Its arguments.

    Raises
    ------
    SystemExit
        With status 1 on a :class:`DataPrepError`.

    Example
    -------
    >>> def prepare(folder):
    ...     raise DataPrepError(f"{folder}: corpus folder not found")
    >>> run_command(prepare, folder="/no/corpus")
    Traceback (most recent call last):
    ...
    SystemExit: 1
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        prepare(**kwargs)
    except DataPrepError as err:
        logger.error("Error: %s", err)
        raise SystemExit(1) from None


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
