"""CommonVoice Welsh ASR manifests (train.csv, valid.csv, test.csv from train/dev/test.tsv).

The split TSVs are read with quoting disabled and their columns looked up by header name, so every
release's header works. Transcripts go through ``text_normalization``: ``welsh``
(:func:`normalize_welsh`: lower case, punctuation removed) or ``none`` (the sentence as the release
writes it, runs of spaces collapsed: what the authors' MP3S preparation does for Welsh). Rows whose
transcript has fewer than ``min_words`` words after that (the authors drop sentences of fewer than
3 words from every split), or whose clip is longer than ``max_duration`` (``None``: no limit; the
MP3S protocol keeps every clip here and drops long ones from training only, in the recipe), are
dropped, with a logged count. Durations come from ``clip_durations.tsv`` when the release has it
(and lists the clip), otherwise from the audio. With ``convert_to_wav`` every kept clip is
resampled once to a 16 kHz WAV cache under ``<save_folder>/wav16k`` and ``wav`` points there;
otherwise ``wav`` is the mp3 and :func:`data_prep.audio.read_audio` resamples at load time.

Columns: ``ID,duration,wav,spk_id,wrd``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import re
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path

import soundfile as sf

from data_prep.audio import AudioReadError, read_audio
from data_prep.audio_files import audio_frames, verify_audio_files
from data_prep.common import (
    DataPrepError,
    corpus_listing,
    parallel_map,
    require_dir,
    require_file,
    run_command,
    run_once,
    utf8_lines,
    where,
    write_csv,
)

logger = logging.getLogger(__name__)

FIELDS = ["ID", "duration", "wav", "spk_id", "wrd"]
SPLITS = {"train": "train.tsv", "valid": "dev.tsv", "test": "test.tsv"}
WAV_RATE = 16000

# Welsh vowels with circumflex, diaeresis, acute and grave (lower case), besides a-z.
WELSH_ACCENTED = "âêîôûŵŷäëïöüẅÿáéíóúẃýàèìòùẁỳ"
_LETTER = f"a-z0-9{WELSH_ACCENTED}"
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "ʼ": "'", "`": "'"})
_NOT_KEPT = re.compile(f"[^{_LETTER}' ]")
_LOOSE_APOSTROPHE = re.compile(f"(?<![{_LETTER}])'|'(?![{_LETTER}])")


def normalize_welsh(text: str) -> str:
    """Lower-case a Welsh transcript, keeping its letters and word-internal apostrophes.

    All Welsh letters (including the circumflex, diaeresis, acute and grave vowels) and digits are
    kept; apostrophes are kept only inside words (``i'r``, ``mae'n``); every other character
    becomes a space, and runs of spaces collapse.

    Arguments
    ---------
    text : str
        A CommonVoice ``sentence``.

    Returns
    -------
    str
        The normalised transcript.

    Example
    -------
    >>> normalize_welsh('Dywedodd hi, "Croeso i Gymru!"')
    'dywedodd hi croeso i gymru'
    >>> normalize_welsh("Mae'r ŴYL yn Nhŷ'r Cyffredin — 'Hen Wlad'…")
    "mae'r ŵyl yn nhŷ'r cyffredin hen wlad"
    """
    text = unicodedata.normalize("NFC", text).lower().translate(_APOSTROPHES)
    text = _LOOSE_APOSTROPHE.sub(" ", _NOT_KEPT.sub(" ", text))
    return " ".join(text.split())


def _tsv_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line_no, row)`` of a CommonVoice TSV, checking columns by header name."""
    reader = csv.reader(utf8_lines(path), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader, None)
    missing = [c for c in required if header is None or c not in header]
    if missing:
        raise DataPrepError(f"{where(path, 1)}: header lacks column(s) {missing}")
    for fields in reader:
        if not fields:
            continue
        if len(fields) != len(header):
            raise DataPrepError(f"{where(path, reader.line_num)}: expected {len(header)} "
                                f"tab-separated fields, got {len(fields)}")
        yield reader.line_num, dict(zip(header, fields, strict=True))


def _clip_durations(path: Path) -> dict[str, float]:
    """Read ``clip_durations.tsv`` (``clip``, ``duration[ms]``) as seconds per clip file name."""
    durations = {}
    for line_no, row in _tsv_rows(path, ("clip", "duration[ms]")):
        try:
            durations[row["clip"]] = float(row["duration[ms]"]) / 1000.0
        except ValueError as err:
            raise DataPrepError(f"{where(path, line_no)}: bad duration[ms] "
                                f"{row['duration[ms]']!r}") from err
    return durations


def _convert(job: tuple[str, str]) -> int:
    """Resample one clip to a 16 kHz WAV (atomically); return its number of samples."""
    src, dst = job
    try:
        wav = read_audio(src, sample_rate=WAV_RATE)
    except AudioReadError as err:
        raise DataPrepError(str(err)) from err
    tmp = dst + ".partial"
    sf.write(tmp, wav.numpy(), WAV_RATE, format="WAV", subtype="PCM_16")
    os.replace(tmp, dst)
    return len(wav)


def collapse_spaces(text: str) -> str:
    """A transcript as CommonVoice writes it (case, punctuation kept), runs of spaces collapsed
    and the ends stripped: the text of the authors' MP3S preparation for Welsh.

    Arguments
    ---------
    text : str
        A CommonVoice ``sentence``.

    Returns
    -------
    str
        The transcript with single spaces and no leading or trailing space.

    Example
    -------
    >>> collapse_spaces('  Dywedodd hi,  "Croeso i Gymru!" ')
    'Dywedodd hi, "Croeso i Gymru!"'
    """
    return re.sub(" +", " ", text).strip()


NORMALIZERS = {"welsh": normalize_welsh, "none": collapse_spaces}


def _read_split(tsv: Path, clips: Path, normalize: Callable[[str], str]) -> list[dict]:
    """Rows (without duration) of one split TSV; ``clip`` is the file name in ``clips/``."""
    rows = []
    for line_no, row in _tsv_rows(tsv, ("client_id", "path", "sentence")):
        audio = clips / row["path"]
        if not audio.is_file():
            raise DataPrepError(f"{where(tsv, line_no)}: clip {audio} not found")
        rows.append({"ID": Path(row["path"]).stem, "wav": str(audio.resolve()),
                     "spk_id": row["client_id"], "wrd": normalize(row["sentence"]),
                     "clip": row["path"]})
    return rows


def _kept_rows(
    tsv: Path, rows: list[dict], known: dict[str, float], options: dict, workers: int | None
) -> list[dict]:
    """The rows of one split kept by ``min_words`` and ``max_duration``, with durations."""
    min_words, max_duration = options["min_words"], options["max_duration"]
    unknown = [r for r in rows if r["clip"] not in known]
    for r, (frames, rate) in zip(unknown, audio_frames([r["wav"] for r in unknown], tsv.name,
                                                       workers), strict=True):
        known[r["clip"]] = frames / rate
    short = [len(r["wrd"].split()) < max(min_words, 1) for r in rows]
    long = [max_duration is not None and known[r["clip"]] > max_duration for r in rows]
    kept = [dict(r) for r, s, g in zip(rows, short, long, strict=True) if not (s or g)]
    logger.info("%s: kept %d of %d clips (%d with fewer than %d words, %d longer than %s s)",
                tsv, len(kept), len(rows), sum(short), max(min_words, 1), sum(long),
                max_duration)
    for r in kept:
        r["duration"] = known[r.pop("clip")]
    return kept


def prepare_commonvoice(
    data_folder: str,
    save_folder: str,
    max_duration: float | None = None,
    convert_to_wav: bool = False,
    skip_prep: bool = False,
    num_workers: int | None = None,
    text_normalization: str = "welsh",
    min_words: int = 1,
    verify_audio: bool = False,
) -> None:
    """Write ``train.csv``, ``valid.csv`` and ``test.csv`` from a CommonVoice language folder.

    A completed save folder is reused while the options and the files read (the split TSVs,
    ``clip_durations.tsv`` and the clips they name: paths, sizes, modification times) are
    unchanged.

    Arguments
    ---------
    data_folder : str
        The language folder, e.g. ``cv-corpus-15.0-2023-09-08/cy`` (holding ``clips/`` and TSVs).
    save_folder : str
        Where the manifests (and the WAV cache) go.
    max_duration : float or None
        Longest clip kept in every split, in seconds (``None``: keep all).
    convert_to_wav : bool
        Resample kept clips once to 16 kHz WAV under ``<save_folder>/wav16k``.
    skip_prep : bool
        Do nothing.
    num_workers : int or None
        Processes reading lengths / converting (``None``: all CPUs for large corpora).
    text_normalization : str
        ``welsh`` (:func:`normalize_welsh`) or ``none`` (the sentence as written, spaces
        collapsed; the authors' MP3S preparation).
    min_words : int
        Drop transcripts with fewer words (the authors: 3); empty ones are always dropped.
    verify_audio : bool
        Decode every clip kept and refuse if one is unreadable or shorter than its header says
        (:func:`data_prep.audio_files.verify_audio_files`), before converting or writing anything.

    Raises
    ------
    DataPrepError
        On bad input (naming the file and line), or when verification fails.

    Example
    -------
    >>> import tempfile, numpy as np, soundfile as sf
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "clips").mkdir()
    >>> sf.write(root / "clips" / "c1.mp3", np.zeros(48000) + 0.1, 48000)
    >>> for split in ("train", "dev", "test"):
    ...     _ = (root / f"{split}.tsv").write_text(
    ...         "client_id\\tpath\\tsentence\\nspk\\tc1.mp3\\tMae'n braf!\\n")
    >>> prepare_commonvoice(str(root), str(root / "out"))
    >>> (root / "out" / "test.csv").read_text().splitlines()[1].split(",")[3:]
    ['spk', "mae'n braf"]
    """
    if skip_prep:
        return
    folder = require_dir(data_folder, "CommonVoice language")
    clips = require_dir(folder / "clips", "CommonVoice clips")
    tsvs = {name: require_file(folder / tsv, "CommonVoice split") for name, tsv in SPLITS.items()}
    if text_normalization not in NORMALIZERS:
        raise ValueError(f"expected text_normalization in {sorted(NORMALIZERS)}, got "
                         f"{text_normalization!r}")
    options = {"data_folder": str(folder.resolve()), "max_duration": max_duration,
               "convert_to_wav": convert_to_wav, "text_normalization": text_normalization,
               "min_words": min_words}

    durations_tsv = folder / "clip_durations.tsv"
    normalize = NORMALIZERS[text_normalization]
    parsed = {name: _read_split(tsv, clips, normalize) for name, tsv in tsvs.items()}
    inputs = [*tsvs.values(), *(Path(r["wav"]) for rows in parsed.values() for r in rows)]
    if durations_tsv.is_file():
        inputs.append(durations_tsv)
    listing = corpus_listing(folder, inputs)

    def build(out: Path) -> None:
        known = _clip_durations(durations_tsv) if durations_tsv.is_file() else {}
        splits = {name: _kept_rows(tsvs[name], rows, known, options, num_workers)
                  for name, rows in parsed.items()}
        if verify_audio:
            verify_audio_files([r["wav"] for rows in splits.values() for r in rows],
                               "CommonVoice", num_workers)
        if convert_to_wav:
            cache = out / "wav16k"
            cache.mkdir(exist_ok=True)
            rows = [r for rows in splits.values() for r in rows]
            jobs = [(r["wav"], str((cache / f"{r['ID']}.wav").resolve())) for r in rows]
            lengths = parallel_map(_convert, jobs, "Converting to 16 kHz WAV", num_workers, "clip")
            for r, (_, dst), frames in zip(rows, jobs, lengths, strict=True):
                r["wav"], r["duration"] = dst, frames / WAV_RATE
        for name, rows in splits.items():
            write_csv(out / f"{name}.csv", FIELDS, rows)

    run_once(save_folder, options, [f"{name}.csv" for name in SPLITS], build, listing,
             verify_audio)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m data_prep.commonvoice DATA_FOLDER SAVE_FOLDER [options]``.

    Arguments
    ---------
    argv : list of str, optional
        The command-line arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description="Prepare CommonVoice ASR manifests.")
    parser.add_argument("data_folder", help="language folder, e.g. cv-corpus-.../cy")
    parser.add_argument("save_folder")
    parser.add_argument("--max-duration", type=float, default=None,
                        help="drop longer clips from every split (default: keep all)")
    parser.add_argument("--convert-to-wav", action="store_true")
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--text-normalization", choices=sorted(NORMALIZERS), default="welsh")
    parser.add_argument("--min-words", type=int, default=1)
    parser.add_argument("--verify-audio", action="store_true",
                        help="decode every kept clip; refuse unreadable or truncated ones")
    args = parser.parse_args(argv)
    run_command(prepare_commonvoice, data_folder=args.data_folder, save_folder=args.save_folder,
                max_duration=args.max_duration, convert_to_wav=args.convert_to_wav,
                num_workers=args.num_workers, text_normalization=args.text_normalization,
                min_words=args.min_words, verify_audio=args.verify_audio)


if __name__ == "__main__":
    main()
