"""IEMOCAP emotion-recognition manifests for 5-fold leave-one-session-out evaluation.

Labels are the summary lines of ``Session{n}/dialog/EmoEvaluation/<dialog>.txt``
(``[start - end]<TAB>utt_id<TAB>emotion<TAB>[v, a, d]``); annotator lines, blank lines and the
header are skipped, and ``._*`` resource-fork files are ignored. The standard 4-class protocol
keeps neutral, happy (``hap`` and ``exc`` merged), angry and sad; other codes are dropped with a
logged count.

Fold ``k`` (``fold_<k>/``) tests on session ``k``; its validation set is ``valid_fraction`` of the
other four sessions' utterances, picked per emotion evenly over the sorted utterance IDs (so the
split is deterministic and class-balanced); the rest is training data.

Columns: ``ID,duration,wav,spk_id,emo`` with ``emo`` in ``neu, hap, ang, sad``.
"""

from __future__ import annotations

import argparse
import logging
import re
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
    where,
    write_csv,
)

logger = logging.getLogger(__name__)

FIELDS = ["ID", "duration", "wav", "spk_id", "emo"]
EMOTION_MAP = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"}
SESSIONS = range(1, 6)
_SUMMARY = re.compile(
    r"^\[(?P<start>\d+(?:\.\d*)?) - (?P<end>\d+(?:\.\d*)?)\]\t(?P<utt>Ses\d\d[FM]_\S+_[FM]\d+)"
    r"\t(?P<emo>[a-z]{3})\t\[[^\]]*\]\s*$"
)


def parse_emo_evaluation(path: str | Path) -> list[tuple[int, str, str]]:
    """Read ``(line_no, utt_id, emotion_code)`` from the summary lines of an EmoEvaluation file.

    Lines starting with ``[`` must be summary lines; anything else (header, annotator lines,
    blank lines) is skipped.

    Arguments
    ---------
    path : str or Path
        An ``EmoEvaluation/<dialog>.txt`` file.

    Returns
    -------
    list of (int, str, str)
        ``(line_no, utt_id, emotion_code)`` per summary line, in file order.

    Raises
    ------
    DataPrepError
        Naming the file and line of a malformed summary line.

    Example
    -------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "Ses01F_impro01.txt")
    >>> _ = open(path, "w").write("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\\n\\n"
    ...     "[6.2901 - 8.2357]\\tSes01F_impro01_F000\\tneu\\t[2.5000, 2.5000, 2.5000]\\n"
    ...     "C-E2:\\tNeutral;\\t()\\n")
    >>> parse_emo_evaluation(path)
    [(3, 'Ses01F_impro01_F000', 'neu')]
    """
    labels = []
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    for line_no, line in enumerate(lines, start=1):
        if not line.startswith("["):
            continue
        match = _SUMMARY.match(line)
        if match is None:
            raise DataPrepError(f"{where(path, line_no)}: malformed summary line {line!r}")
        labels.append((line_no, match["utt"], match["emo"]))
    return labels


def _session_rows(data_folder: Path, session: int) -> tuple[list[dict], list[Path]]:
    """4-class rows (without durations) of one session, and the label files read."""
    root = require_dir(data_folder / f"Session{session}", "IEMOCAP session")
    emo_dir = require_dir(root / "dialog" / "EmoEvaluation", "IEMOCAP EmoEvaluation")
    rows, dropped = [], 0
    label_files = list_files(emo_dir, "*.txt")
    for txt in label_files:
        for line_no, utt, code in parse_emo_evaluation(txt):
            if code not in EMOTION_MAP:
                dropped += 1
                continue
            wav = root / "sentences" / "wav" / utt.rsplit("_", 1)[0] / f"{utt}.wav"
            if not wav.is_file():
                raise DataPrepError(f"{where(txt, line_no)}: audio {wav} not found")
            speaker = utt[:5] + utt.rsplit("_", 1)[1][0]  # Ses01 + F/M of the speaking actor
            rows.append({"ID": utt, "wav": str(wav.resolve()), "spk_id": speaker,
                         "emo": EMOTION_MAP[code]})
    if not rows:
        raise DataPrepError(f"{emo_dir}: no 4-class utterances found")
    logger.info(
        "Session%d: %d utterances kept, %d of other classes dropped", session, len(rows), dropped
    )
    return rows, label_files


def prepare_iemocap(
    data_folder: str,
    save_folder: str,
    valid_fraction: float = 0.1,
    skip_prep: bool = False,
    num_workers: int | None = None,
    verify_audio: bool = False,
) -> None:
    """Write ``fold_<k>/{train,valid,test}.csv`` for k = 1..5 (test session = k).

    A completed save folder is reused while the options and the files read (the EmoEvaluation
    files and the utterances they label: paths, sizes, modification times) are unchanged.

    Arguments
    ---------
    data_folder : str
        ``IEMOCAP_full_release`` (holding ``Session1`` ... ``Session5``).
    save_folder : str
        Where the fold folders go.
    valid_fraction : float
        Fraction of each fold's training-session utterances held out for validation.
    skip_prep : bool
        Do nothing.
    num_workers : int or None
        Processes reading audio lengths (and decoding, with ``verify_audio``).
    verify_audio : bool
        Decode every utterance kept and refuse if one is unreadable or shorter than its header
        says (:func:`data_prep.audio_files.verify_audio_files`), before writing any manifest.

    Raises
    ------
    DataPrepError
        On bad input (naming the file and line), or when verification fails.

    Example
    -------
    >>> import tempfile, numpy as np, soundfile as sf
    >>> root = Path(tempfile.mkdtemp())
    >>> for n in range(1, 6):
    ...     emo = root / f"Session{n}" / "dialog" / "EmoEvaluation"
    ...     emo.mkdir(parents=True)
    ...     wav = root / f"Session{n}" / "sentences" / "wav" / f"Ses0{n}F_impro01"
    ...     wav.mkdir(parents=True)
    ...     lines = ""
    ...     for i, code in enumerate(["neu", "exc", "fru"]):
    ...         utt = f"Ses0{n}F_impro01_F00{i}"
    ...         sf.write(wav / f"{utt}.wav", np.zeros(1600, dtype="int16"), 16000)
    ...         lines += f"[1.0 - 2.0]\\t{utt}\\t{code}\\t[2.0, 2.0, 2.0]\\n"
    ...     _ = (emo / f"Ses0{n}F_impro01.txt").write_text(lines)
    >>> prepare_iemocap(str(root), str(root / "out"))
    >>> (root / "out" / "fold_2" / "test.csv").read_text().splitlines()[2].split(",")[3:]
    ['Ses02F', 'hap']
    """
    if skip_prep:
        return
    folder = require_dir(data_folder, "IEMOCAP_full_release")
    options = {"data_folder": str(folder.resolve()), "valid_fraction": valid_fraction}
    outputs = [f"fold_{k}/{name}.csv" for k in SESSIONS for name in ("train", "valid", "test")]

    sessions, inputs = {}, []
    for n in SESSIONS:
        sessions[n], label_files = _session_rows(folder, n)
        inputs += label_files + [Path(row["wav"]) for row in sessions[n]]
    listing = corpus_listing(folder, inputs)

    def build(out: Path) -> None:
        every = [row for n in SESSIONS for row in sessions[n]]
        infos = audio_frames([row["wav"] for row in every], "IEMOCAP", num_workers)
        for row, (frames, rate) in zip(every, infos, strict=True):
            row["duration"] = frames / rate
        if verify_audio:
            verify_audio_files([row["wav"] for row in every], "IEMOCAP", num_workers)
        for k in SESSIONS:
            train = [r for n in SESSIONS if n != k for r in sessions[n]]
            held = set()
            for emo in sorted(set(EMOTION_MAP.values())):
                held |= holdout([r["ID"] for r in train if r["emo"] == emo], valid_fraction)
            write_csv(out / f"fold_{k}" / "train.csv", FIELDS,
                      [r for r in train if r["ID"] not in held])
            write_csv(out / f"fold_{k}" / "valid.csv", FIELDS,
                      [r for r in train if r["ID"] in held])
            write_csv(out / f"fold_{k}" / "test.csv", FIELDS, sessions[k])

    run_once(save_folder, options, outputs, build, listing, verify_audio)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m data_prep.iemocap DATA_FOLDER SAVE_FOLDER [options]``.

    Arguments
    ---------
    argv : list of str, optional
        The command-line arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description="Prepare IEMOCAP 5-fold emotion manifests.")
    parser.add_argument("data_folder", help="IEMOCAP_full_release folder")
    parser.add_argument("save_folder")
    parser.add_argument("--valid-fraction", type=float, default=0.1)
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--verify-audio", action="store_true",
                        help="decode every kept utterance; refuse unreadable or truncated ones")
    args = parser.parse_args(argv)
    run_command(prepare_iemocap, data_folder=args.data_folder, save_folder=args.save_folder,
                valid_fraction=args.valid_fraction, num_workers=args.num_workers,
                verify_audio=args.verify_audio)


if __name__ == "__main__":
    main()
