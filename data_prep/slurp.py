"""SLURP intent-classification manifests (train.csv, valid.csv, test.csv).

One row per recording: an utterance with a headset and a far-field recording gives two rows with
the same labels. ``train.jsonl``, ``devel.jsonl`` and ``test.jsonl`` come from
``<data_folder>/dataset/slurp``; their audio from ``<audio_folder>/slurp_real``. With
``use_synthetic`` the rows of ``train_synthetic.jsonl`` (audio in ``slurp_synth``) are added to
train only.

Columns: ``ID,duration,wav,scenario,action,intent,transcript`` (``ID`` = recording file stem).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from data_prep.audio_files import audio_frames, verify_audio_files
from data_prep.common import (
    DataPrepError,
    corpus_listing,
    require_dir,
    require_file,
    run_command,
    run_once,
    where,
    write_csv,
)

logger = logging.getLogger(__name__)

FIELDS = ["ID", "duration", "wav", "scenario", "action", "intent", "transcript"]
SPLITS = {"train": "train.jsonl", "valid": "devel.jsonl", "test": "test.jsonl"}
SYNTHETIC = "train_synthetic.jsonl"


def _jsonl_rows(path: Path, audio_dir: Path) -> list[dict]:
    """Rows (without duration) of one SLURP jsonl file, one per recording."""
    rows = []
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
                intent, sentence = record["intent"], record["sentence"]
                scenario = record.get("scenario") or intent.split("_", 1)[0]
                action = record.get("action") or intent.split("_", 1)[1]
                files = [rec["file"] for rec in record["recordings"]]
            except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
                raise DataPrepError(
                    f"{where(path, line_no)}: malformed SLURP record ({type(err).__name__}: {err})"
                ) from err
            for name in files:
                audio = audio_dir / name
                if not audio.is_file():
                    raise DataPrepError(f"{where(path, line_no)}: recording {audio} not found")
                rows.append({"ID": Path(name).stem, "wav": str(audio.resolve()),
                             "scenario": scenario, "action": action, "intent": intent,
                             "transcript": sentence})
    return rows


def prepare_slurp(
    data_folder: str,
    save_folder: str,
    audio_folder: str | None = None,
    use_synthetic: bool = False,
    skip_prep: bool = False,
    num_workers: int | None = None,
    verify_audio: bool = False,
) -> None:
    """Write ``train.csv``, ``valid.csv`` (from ``devel.jsonl``) and ``test.csv`` for SLURP.

    A completed save folder is reused while the options and the files read (the jsonl files and
    the recordings they name: paths, sizes, modification times) are unchanged.

    Arguments
    ---------
    data_folder : str
        SLURP root holding ``dataset/slurp/*.jsonl``.
    save_folder : str
        Where the manifests go.
    audio_folder : str or None
        Folder holding ``slurp_real/`` (and ``slurp_synth/``); defaults to ``data_folder``.
    use_synthetic : bool
        Add ``train_synthetic.jsonl`` (``slurp_synth`` audio) to the training set.
    skip_prep : bool
        Do nothing.
    num_workers : int or None
        Processes reading audio lengths (and decoding, with ``verify_audio``).
    verify_audio : bool
        Decode every recording and refuse if one is unreadable or shorter than its header says
        (:func:`data_prep.audio_files.verify_audio_files`), before writing any manifest.

    Raises
    ------
    DataPrepError
        On bad input (naming the file and line), or when verification fails.

    Example
    -------
    >>> import tempfile, json, numpy as np, soundfile as sf
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "dataset" / "slurp").mkdir(parents=True)
    >>> (root / "slurp_real").mkdir()
    >>> sf.write(root / "slurp_real" / "a-headset.flac", np.zeros(8000, dtype="int16"), 16000)
    >>> rec = {"sentence": "wake me up", "intent": "alarm_set", "scenario": "alarm",
    ...        "action": "set", "recordings": [{"file": "a-headset.flac"}]}
    >>> for name in ("train", "devel", "test"):
    ...     _ = (root / "dataset" / "slurp" / f"{name}.jsonl").write_text(json.dumps(rec) + "\\n")
    >>> prepare_slurp(str(root), str(root / "out"))
    >>> (root / "out" / "valid.csv").read_text().splitlines()[1].split(",")[3:]
    ['alarm', 'set', 'alarm_set', 'wake me up']
    """
    if skip_prep:
        return
    text_dir = require_dir(Path(data_folder) / "dataset" / "slurp", "SLURP text")
    audio_root = Path(audio_folder) if audio_folder is not None else Path(data_folder)
    real = require_dir(audio_root / "slurp_real", "SLURP audio")
    synth = require_dir(audio_root / "slurp_synth", "SLURP audio") if use_synthetic else None
    options = {"text": str(text_dir.resolve()), "audio": str(audio_root.resolve()),
               "use_synthetic": use_synthetic}

    jsonls = {name: require_file(text_dir / jsonl, "SLURP split") for name, jsonl in SPLITS.items()}
    splits = {name: _jsonl_rows(jsonl, real) for name, jsonl in jsonls.items()}
    if synth is not None:
        jsonls["synthetic"] = require_file(text_dir / SYNTHETIC, "SLURP")
        splits["train"] += _jsonl_rows(jsonls["synthetic"], synth)
    inputs = [*jsonls.values(), *(row["wav"] for rows in splits.values() for row in rows)]
    listing = corpus_listing(Path(data_folder), inputs)

    def build(out: Path) -> None:
        for name, rows in splits.items():
            infos = audio_frames([r["wav"] for r in rows], f"SLURP {name}", num_workers)
            for row, (frames, rate) in zip(rows, infos, strict=True):
                row["duration"] = frames / rate
        if verify_audio:
            verify_audio_files([r["wav"] for rows in splits.values() for r in rows], "SLURP",
                               num_workers)
        for name, rows in splits.items():
            write_csv(out / f"{name}.csv", FIELDS, rows)

    run_once(save_folder, options, [f"{name}.csv" for name in SPLITS], build, listing,
             verify_audio)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m data_prep.slurp DATA_FOLDER SAVE_FOLDER [options]``.

    Arguments
    ---------
    argv : list of str, optional
        The command-line arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description="Prepare SLURP intent manifests.")
    parser.add_argument("data_folder", help="SLURP root holding dataset/slurp/*.jsonl")
    parser.add_argument("save_folder")
    parser.add_argument("--audio-folder", default=None, help="folder holding slurp_real/")
    parser.add_argument("--use-synthetic", action="store_true")
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--verify-audio", action="store_true",
                        help="decode every recording; refuse unreadable or truncated ones")
    args = parser.parse_args(argv)
    run_command(prepare_slurp, data_folder=args.data_folder, save_folder=args.save_folder,
                audio_folder=args.audio_folder, use_synthetic=args.use_synthetic,
                num_workers=args.num_workers, verify_audio=args.verify_audio)


if __name__ == "__main__":
    main()
