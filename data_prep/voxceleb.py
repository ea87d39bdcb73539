"""VoxCeleb speaker-verification manifests.

* ``train.csv``: every utterance whose speaker does not appear in the trial list, listed once per
  whole ``crop_seconds`` it holds (``floor(duration / crop_seconds)`` rows ``<path>_<k>``, as the
  SpeechBrain VoxCeleb preparation the authors used); each row spans the whole file
  (``start = 0``, ``stop`` = its length), and the recipe reads a new random ``crop_seconds`` crop
  of it every time the row is read. Utterances shorter than one crop are dropped (logged); if
  that leaves no training or no validation row, the preparation refuses, saying how many
  utterances were dropped and how long the longest one is.
* ``valid.csv``: the same rows for ``valid_fraction`` of each training speaker's utterances
  (picked evenly over the sorted paths; speakers with one utterance keep it in train).
* ``enrol.csv`` / ``test.csv``: whole files named in the first / second path column of the trial
  list, ``ID`` = the path relative to ``wav/`` exactly as the trial list writes it.
* ``trials.txt``: a copy of the trial list.

Columns (all four CSVs): ``ID,duration,wav,start,stop,spk_id``; ``duration`` is the file's length
in seconds, ``start``/``stop`` sample offsets in the file's own rate.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from data_prep.audio_files import audio_frames, verify_audio_files
from data_prep.common import (
    DataPrepError,
    corpus_listing,
    holdout,
    list_files,
    require_dir,
    require_file,
    run_command,
    run_once,
    utf8_lines,
    where,
    write_csv,
)
from data_prep.files import atomic_write_text

logger = logging.getLogger(__name__)

FIELDS = ["ID", "duration", "wav", "start", "stop", "spk_id"]
OUTPUTS = ["train.csv", "valid.csv", "enrol.csv", "test.csv", "trials.txt"]


def read_trials(path: str | Path, wav_dir: str | Path) -> list[tuple[int, str, str]]:
    """Parse a VoxCeleb trial list (``<label> <enrol path> <test path>`` per line).

    Arguments
    ---------
    path : str or Path
        The trial list.
    wav_dir : str or Path
        The ``wav/`` folder its paths are relative to.

    Returns
    -------
    list of (int, str, str)
        ``(label, enrol path, test path)`` per trial, in file order.

    Raises
    ------
    DataPrepError
        Naming the trial file and line of a malformed line or of a path missing under ``wav_dir``.

    Example
    -------
    >>> import tempfile, os
    >>> root = tempfile.mkdtemp()
    >>> trials = os.path.join(root, "veri_test2.txt")
    >>> _ = open(trials, "w").write("1 id1/v/00001.wav id1/w/00002.wav\\n")
    >>> read_trials(trials, root)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    data_prep.common.DataPrepError: ...veri_test2.txt:1: id1/v/00001.wav not found under ...
    """
    trials, wav_dir = [], Path(wav_dir)
    for line_no, line in enumerate(utf8_lines(path), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or parts[0] not in ("0", "1"):
            raise DataPrepError(
                f"{where(path, line_no)}: expected '<0|1> <enrol> <test>', got {line!r}"
            )
        for rel in parts[1:]:
            if not (wav_dir / rel).is_file():
                raise DataPrepError(f"{where(path, line_no)}: {rel} not found under {wav_dir}")
        trials.append((int(parts[0]), parts[1], parts[2]))
    if not trials:
        raise DataPrepError(f"{path}: empty trial list")
    return trials


def _crop_rows(rel: str, wav: str, frames: int, rate: int, crop_seconds: float) -> list[dict]:
    """One row per whole crop the file holds, each spanning the whole file."""
    size, stem = round(crop_seconds * rate), rel.removesuffix(".wav")
    return [
        {"ID": f"{stem}_{k}", "duration": frames / rate, "wav": wav, "start": 0, "stop": frames,
         "spk_id": rel.split("/")[0]}
        for k in range(frames // size)
    ]


def prepare_voxceleb(
    data_folder: str,
    save_folder: str,
    trial_list: str = "veri_test2.txt",
    crop_seconds: float = 3.0,
    valid_fraction: float = 0.1,
    skip_prep: bool = False,
    num_workers: int | None = None,
    verify_audio: bool = False,
) -> None:
    """Write VoxCeleb train/valid chunks, enrol/test files and the trial list.

    A completed save folder is reused while the options and the corpus (the trial list and every
    ``wav/*/*/*.wav``: paths, sizes, modification times) are unchanged. macOS ``._*`` companion
    files are ignored.

    Arguments
    ---------
    data_folder : str
        VoxCeleb1 root holding ``wav/<speaker>/<video>/<n>.wav``.
    save_folder : str
        Where the manifests go.
    trial_list : str
        Trial file, relative to ``data_folder`` (or absolute): ``veri_test2.txt`` (VoxCeleb1-O
        cleaned), ``list_test_hard2.txt``, ...
    crop_seconds : float
        Length of the random training crops, in seconds: a file gets one row per whole crop it
        holds; shorter files are left out.
    valid_fraction : float
        Fraction of each training speaker's utterances held out for validation.
    skip_prep : bool
        Do nothing.
    num_workers : int or None
        Processes reading audio lengths (and decoding, with ``verify_audio``).
    verify_audio : bool
        Decode every file kept and refuse if one is unreadable or shorter than its header says
        (:func:`data_prep.audio_files.verify_audio_files`), before writing any manifest.

    Raises
    ------
    DataPrepError
        On bad input (naming the file), when no training or no validation chunk remains, or when
        verification fails.

    Example
    -------
    >>> import tempfile, numpy as np, soundfile as sf
    >>> root = Path(tempfile.mkdtemp())
    >>> for rel in ["id1/v/00001.wav", "id2/v/00001.wav", "id3/a/00001.wav", "id3/b/00001.wav"]:
    ...     (root / "wav" / rel).parent.mkdir(parents=True, exist_ok=True)
    ...     sf.write(root / "wav" / rel, np.zeros(16000 * 7, dtype="int16"), 16000)
    >>> _ = (root / "veri_test2.txt").write_text("0 id1/v/00001.wav id2/v/00001.wav\\n")
    >>> prepare_voxceleb(str(root), str(root / "out"))
    >>> [line.split(",")[::3] for line in (root / "out" / "train.csv").read_text().splitlines()]
    [['ID', 'start'], ['id3/a/00001_0', '0'], ['id3/a/00001_1', '0']]
    >>> [line.split(",")[4:] for line in (root / "out" / "train.csv").read_text().splitlines()]
    [['stop', 'spk_id'], ['112000', 'id3'], ['112000', 'id3']]
    """
    if skip_prep:
        return
    folder = require_dir(data_folder, "VoxCeleb")
    wav_dir = require_dir(folder / "wav", "VoxCeleb wav")
    trial_path = require_file(folder / trial_list, "VoxCeleb trial list")
    options = {"data_folder": str(folder.resolve()), "trial_list": str(trial_path.resolve()),
               "crop_seconds": crop_seconds, "valid_fraction": valid_fraction}
    files = [p.relative_to(wav_dir).as_posix() for p in list_files(wav_dir, "*/*/*.wav")]
    listing = corpus_listing(folder, [trial_path, *(wav_dir / rel for rel in files)])

    def build(out: Path) -> None:
        trials = read_trials(trial_path, wav_dir)
        enrol = sorted({t[1] for t in trials})
        test = sorted({t[2] for t in trials})
        test_speakers = {rel.split("/")[0] for rel in enrol + test}
        train = [rel for rel in files if rel.split("/")[0] not in test_speakers]
        if not train:
            raise DataPrepError(f"{wav_dir}: no training speakers outside {trial_path}")
        held = set()
        for spk in sorted({rel.split("/")[0] for rel in train}):
            held |= holdout([rel for rel in train if rel.startswith(spk + "/")], valid_fraction)
        every = sorted(set(train) | set(enrol) | set(test))
        lengths = audio_frames([wav_dir / rel for rel in every], "VoxCeleb", num_workers)
        infos = dict(zip(every, lengths, strict=True))
        rows = {"train": [], "valid": []}
        short = {"train": 0, "valid": 0}
        for rel in train:
            split = "valid" if rel in held else "train"
            crops = _crop_rows(rel, str((wav_dir / rel).resolve()), *infos[rel], crop_seconds)
            short[split] += not crops
            rows[split] += crops
        logger.info("VoxCeleb: %d training utterances, %d shorter than %s s dropped",
                    len(train), sum(short.values()), crop_seconds)
        _refuse_empty(rows, short, len(train), len(held), crop_seconds, valid_fraction,
                      max(infos[rel][0] / infos[rel][1] for rel in train), wav_dir)
        for name, rels in (("enrol", enrol), ("test", test)):
            rows[name] = [
                {"ID": rel, "duration": infos[rel][0] / infos[rel][1],
                 "wav": str((wav_dir / rel).resolve()), "start": 0, "stop": infos[rel][0],
                 "spk_id": rel.split("/")[0]}
                for rel in rels
            ]
        if verify_audio:
            verify_audio_files([row["wav"] for split in rows.values() for row in split],
                               "VoxCeleb", num_workers)
        for name, chunk_rows in rows.items():
            write_csv(out / f"{name}.csv", FIELDS, chunk_rows)
        atomic_write_text(out / "trials.txt", trial_path.read_text(encoding="utf-8"))

    run_once(save_folder, options, OUTPUTS, build, listing, verify_audio)


def _refuse_empty(
    rows: dict[str, list], short: dict[str, int], utterances: int, held: int,
    crop_seconds: float, valid_fraction: float, longest: float, wav_dir: Path,
) -> None:
    """Raise :class:`DataPrepError` when no training or no validation chunk is left, saying how
    many utterances were dropped and why."""
    dropped = (f"{sum(short.values())} of the {utterances} utterances of training speakers are "
               f"shorter than crop_seconds = {crop_seconds} s and were dropped (the longest is "
               f"{longest:.2f} s)")
    if not rows["train"]:
        raise DataPrepError(
            f"{wav_dir}: no training chunk: {dropped}, among them all {short['train']} not held "
            f"out for validation; lower crop_seconds"
        )
    if rows["valid"]:
        return
    if held:
        why = f"{dropped}, among them all {held} held out for validation; lower crop_seconds"
    elif valid_fraction > 0:
        why = (f"valid_fraction = {valid_fraction} holds out nothing (a speaker needs two "
               f"utterances to lend one to validation)")
    else:
        why = "valid_fraction is 0, and the recipe validates on valid.csv"
    raise DataPrepError(f"{wav_dir}: no validation chunk: {why}")


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m data_prep.voxceleb DATA_FOLDER SAVE_FOLDER [options]``.

    Arguments
    ---------
    argv : list of str, optional
        The command-line arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description="Prepare VoxCeleb verification manifests.")
    parser.add_argument("data_folder", help="VoxCeleb1 root holding wav/")
    parser.add_argument("save_folder")
    parser.add_argument("--trial-list", default="veri_test2.txt")
    parser.add_argument("--crop-seconds", type=float, default=3.0)
    parser.add_argument("--valid-fraction", type=float, default=0.1)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--verify-audio", action="store_true",
                        help="decode every kept file; refuse unreadable or truncated ones")
    args = parser.parse_args(argv)
    run_command(prepare_voxceleb, data_folder=args.data_folder, save_folder=args.save_folder,
                trial_list=args.trial_list, crop_seconds=args.crop_seconds,
                valid_fraction=args.valid_fraction, num_workers=args.num_workers,
                verify_audio=args.verify_audio)


if __name__ == "__main__":
    main()
