"""LibriLight pre-training manifests (train.csv, valid.csv).

Training rows are voice-activity segments addressed by sample offsets into the long FLAC files, so
no audio is rewritten. Each ``<file>.flac`` with a ``<file>.json`` beside it is cut by packing its
consecutive ``voice_activity`` spans into contiguous ``[start, stop)`` ranges of at most
``max_duration`` seconds (the official ``cut_by_vad.py`` packs the same spans but concatenates
them; here the short pauses between packed spans stay in); a single span longer than
``max_duration`` is split evenly. A FLAC without a JSON is taken as already cut (``cut_by_vad.py``
output) and gives one row for the whole file. Segments shorter than ``min_duration`` (or, for
pre-cut files, longer than ``max_duration``) are dropped, with a logged count.

Validation is LibriSpeech dev-clean when ``valid_folder`` is given (rows carry ``wrd``); otherwise
``valid_fraction`` of the segments, spread evenly over the sorted segment IDs, is held out (``wrd``
empty).

Columns: ``ID,duration,wav,start,stop,spk_id`` (train) and the same plus ``wrd`` (valid).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

from data_prep.audio_files import audio_frames, verify_audio_files
from data_prep.common import (
    DataPrepError,
    corpus_listing,
    holdout,
    list_files,
    require_dir,
    run_command,
    run_once,
    utf8_lines,
    where,
    write_csv,
)

logger = logging.getLogger(__name__)

TRAIN_FIELDS = ["ID", "duration", "wav", "start", "stop", "spk_id"]
VALID_FIELDS = [*TRAIN_FIELDS, "wrd"]


def vad_segments(
    spans: list[tuple[int, int]], min_len: int, max_len: int
) -> list[tuple[int, int]]:
    """Pack consecutive voice-activity spans (in samples) into ``[start, stop)`` segments.

    Arguments
    ---------
    spans : list of (int, int)
        Sorted speech spans, in samples.
    min_len, max_len : int
        Segment length bounds, in samples; shorter segments are dropped, longer spans split.

    Returns
    -------
    list of (int, int)

    Example
    -------
    >>> vad_segments([(0, 3), (4, 6), (8, 9), (20, 31)], min_len=2, max_len=6)
    [(0, 6), (20, 25), (25, 31)]
    """
    segments, current = [], None
    for start, stop in spans:
        if current is not None and stop - current[0] <= max_len:
            current = (current[0], stop)
            continue
        if current is not None:
            segments.append(current)
        current = (start, stop)
    if current is not None:
        segments.append(current)
    result = []
    for start, stop in segments:
        pieces = math.ceil((stop - start) / max_len)
        bounds = [start + (stop - start) * i // pieces for i in range(pieces + 1)]
        result += [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b - a >= min_len]
    return result


def _read_vad(json_path: Path, sample_rate: int, frames: int) -> list[tuple[int, int]]:
    """Read ``voice_activity`` from a LibriLight JSON as sample spans clipped to the file."""
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataPrepError(f"{where(json_path, err.lineno)}: malformed JSON ({err.msg})") from err
    except UnicodeDecodeError as err:
        raise DataPrepError(f"{json_path}: not UTF-8 text ({err})") from err
    vad = meta.get("voice_activity") if isinstance(meta, dict) else None
    if not isinstance(vad, list):
        raise DataPrepError(f"{json_path}: no 'voice_activity' list")
    spans = []
    for k, span in enumerate(vad):
        ok = isinstance(span, list | tuple) and len(span) == 2
        if not ok or not all(isinstance(x, int | float) for x in span) or span[1] < span[0]:
            raise DataPrepError(f"{json_path}: voice_activity[{k}] is not [start_s, end_s]: {span}")
        start, stop = round(span[0] * sample_rate), min(round(span[1] * sample_rate), frames)
        if stop > start:
            spans.append((start, stop))
    return sorted(spans)


def _librispeech_rows(folder: Path, num_workers: int | None) -> list[dict]:
    """Rows for a LibriSpeech split (e.g. dev-clean): one per transcript line."""
    utts = []
    for trans in list_files(folder, "**/*.trans.txt"):
        for line_no, line in enumerate(utf8_lines(trans), start=1):
            if not line.strip():
                continue
            utt, _, words = line.strip().partition(" ")
            flac = trans.parent / f"{utt}.flac"
            if not words or utt.count("-") != 2:
                raise DataPrepError(f"{where(trans, line_no)}: expected '<utt_id> TRANSCRIPT'")
            if not flac.is_file():
                raise DataPrepError(f"{where(trans, line_no)}: audio {flac} not found")
            utts.append((utt, flac.resolve(), words.strip()))
    if not utts:
        raise DataPrepError(f"{folder}: no *.trans.txt transcripts found")
    infos = audio_frames([u[1] for u in utts], "LibriSpeech", num_workers)
    return [
        {"ID": utt, "duration": frames / rate, "wav": str(flac), "start": 0, "stop": frames,
         "spk_id": utt.split("-")[0], "wrd": words}
        for (utt, flac, words), (frames, rate) in zip(utts, infos, strict=True)
    ]


def _segment_rows(
    split_dir: Path, flacs: list[Path], min_duration: float, max_duration: float,
    num_workers: int | None,
) -> list[dict]:
    rows, dropped, dropped_seconds = [], 0, 0.0
    infos = audio_frames(flacs, "LibriLight", num_workers)
    for flac, (frames, rate) in zip(flacs, infos, strict=True):
        rel = flac.relative_to(split_dir).with_suffix("")
        json_path = flac.with_suffix(".json")
        if json_path.is_file():
            spans = _read_vad(json_path, rate, frames)
            packed = vad_segments(spans, 0, round(max_duration * rate))
            kept = [(a, b) for a, b in packed if b - a >= min_duration * rate]
        else:  # already cut by cut_by_vad.py
            packed = [(0, frames)]
            kept = packed if min_duration <= frames / rate <= max_duration else []
        dropped += len(packed) - len(kept)
        dropped_seconds += (sum(b - a for a, b in packed) - sum(b - a for a, b in kept)) / rate
        for k, (start, stop) in enumerate(kept):
            rows.append({
                "ID": f"{'-'.join(rel.parts)}-{k}", "duration": (stop - start) / rate,
                "wav": str(flac.resolve()), "start": start, "stop": stop, "spk_id": rel.parts[0],
            })
    kept_hours = sum(row["duration"] for row in rows) / 3600
    logger.info(
        "LibriLight: %d segments kept (%.2f h), %d outside [%s, %s] s dropped (%.2f h)",
        len(rows), kept_hours, dropped, min_duration, max_duration, dropped_seconds / 3600,
    )
    if not rows:
        raise DataPrepError(f"{split_dir}: no segment within [{min_duration}, {max_duration}] s")
    return rows


def prepare_librilight(
    data_folder: str,
    save_folder: str,
    split: str | None = "medium",
    valid_folder: str | None = None,
    min_duration: float = 10.0,
    max_duration: float = 20.2,
    valid_fraction: float = 0.01,
    skip_prep: bool = False,
    num_workers: int | None = None,
    verify_audio: bool = False,
) -> None:
    """Write ``train.csv`` and ``valid.csv`` for wav2vec 2.0 pre-training on LibriLight.

    A completed save folder is reused while the options and the files read (every
    ``<speaker>/<book>/*.flac`` with its ``.json``, and the validation folder's ``*.trans.txt``
    and ``*.flac``: paths, sizes, modification times) are unchanged. macOS ``._*`` companion files
    are ignored.

    Arguments
    ---------
    data_folder : str
        LibriLight root holding the split folders (or, with ``split=None``, a split folder itself,
        e.g. ``cut_by_vad.py`` output).
    save_folder : str
        Where the manifests go.
    split : str or None
        Split sub-folder: ``small``, ``medium`` (the paper's) or ``large``.
    valid_folder : str or None
        LibriSpeech ``dev-clean`` folder; ``None`` holds out ``valid_fraction`` of the segments.
    min_duration, max_duration : float
        Segment length bounds, in seconds. The defaults are the paper's selection (10 to 20.2 s
        after voice-activity cutting, about 4.3k hours of LibriLight medium); the mini corpora
        use 2 and 6. The hours kept and dropped are logged.
    valid_fraction : float
        Fraction of segments held out when ``valid_folder`` is ``None``.
    skip_prep : bool
        Do nothing.
    num_workers : int or None
        Processes reading audio lengths (see :func:`data_prep.audio_files.audio_frames`) and, with
        ``verify_audio``, decoding.
    verify_audio : bool
        Decode every file kept and refuse if one is unreadable or shorter than its header says
        (:func:`data_prep.audio_files.verify_audio_files`), before writing any manifest.

    Raises
    ------
    DataPrepError
        On bad input (naming the file and line), when no segment is kept, or when verification
        fails.

    Example
    -------
    >>> import tempfile, json, numpy as np, soundfile as sf
    >>> root = Path(tempfile.mkdtemp())
    >>> book = root / "small" / "7" / "book"
    >>> book.mkdir(parents=True)
    >>> sf.write(book / "a.flac", np.zeros(16000 * 8, dtype="int16"), 16000)
    >>> _ = (book / "a.json").write_text(json.dumps({"voice_activity": [[0.5, 3.0], [4.0, 7.5]]}))
    >>> prepare_librilight(str(root), str(root / "out"), "small", min_duration=2, max_duration=4)
    >>> print((root / "out" / "train.csv").read_text().splitlines()[1].split(",")[3:])
    ['8000', '48000', '7']
    """
    if skip_prep:
        return
    if min_duration <= 0 or max_duration < min_duration:
        raise ValueError(
            f"expected 0 < min_duration <= max_duration, got {min_duration}, {max_duration}"
        )
    split_dir = require_dir(Path(data_folder) / split if split else data_folder, "LibriLight split")
    valid_dir = Path(valid_folder).resolve() if valid_folder is not None else None
    options = {
        "data_folder": str(split_dir.resolve()), "valid_folder": valid_dir,
        "min_duration": min_duration, "max_duration": max_duration,
        "valid_fraction": valid_fraction,
    }
    flacs = list_files(split_dir, "*/*/*.flac")
    if not flacs:
        raise DataPrepError(f"{split_dir}: no <speaker>/<book>/*.flac files found")
    inputs = [*flacs, *(f.with_suffix(".json") for f in flacs if f.with_suffix(".json").is_file())]
    if valid_dir is not None:
        require_dir(valid_dir, "LibriSpeech validation")
        inputs += list_files(valid_dir, "**/*.trans.txt") + list_files(valid_dir, "**/*.flac")
    listing = corpus_listing(split_dir, inputs)

    def build(out: Path) -> None:
        rows = _segment_rows(split_dir, flacs, min_duration, max_duration, num_workers)
        if valid_dir is not None:
            valid = _librispeech_rows(valid_dir, num_workers)
        else:
            held = holdout([r["ID"] for r in rows], valid_fraction)
            valid = [{**r, "wrd": ""} for r in rows if r["ID"] in held]
            rows = [r for r in rows if r["ID"] not in held]
        if verify_audio:
            verify_audio_files([r["wav"] for r in rows + valid], "LibriLight", num_workers)
        write_csv(out / "train.csv", TRAIN_FIELDS, rows)
        write_csv(out / "valid.csv", VALID_FIELDS, valid)

    run_once(save_folder, options, ["train.csv", "valid.csv"], build, listing, verify_audio)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m data_prep.librilight DATA_FOLDER SAVE_FOLDER [options]``.

    Arguments
    ---------
    argv : list of str, optional
        The command-line arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description="Prepare LibriLight pre-training manifests.")
    parser.add_argument("data_folder")
    parser.add_argument("save_folder")
    parser.add_argument("--split", default="medium", help="'' when DATA_FOLDER is the split")
    parser.add_argument("--valid-folder", default=None, help="LibriSpeech dev-clean folder")
    parser.add_argument("--min-duration", type=float, default=10.0)
    parser.add_argument("--max-duration", type=float, default=20.2)
    parser.add_argument("--valid-fraction", type=float, default=0.01)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--verify-audio", action="store_true",
                        help="decode every kept file; refuse unreadable or truncated ones")
    args = parser.parse_args(argv)
    run_command(
        prepare_librilight, data_folder=args.data_folder, save_folder=args.save_folder,
        split=args.split or None, valid_folder=args.valid_folder,
        min_duration=args.min_duration, max_duration=args.max_duration,
        valid_fraction=args.valid_fraction, num_workers=args.num_workers,
        verify_audio=args.verify_audio,
    )


if __name__ == "__main__":
    main()
