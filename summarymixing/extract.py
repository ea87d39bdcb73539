"""Write the hidden states of a pre-trained encoder for a set of audio files.

::

    python -m summarymixing.extract FOLDER_OR_CSV --model DIR --out DIR \
        [--layers 0,6,12] [--dtype float16] [--device cuda]

``FOLDER_OR_CSV`` is a folder (every ``.wav``, ``.flac``, ``.mp3``, ``.ogg`` and ``.opus`` file
below it, macOS ``._*`` companions skipped; the ID is the path relative to the folder without
its suffix) or a SpeechBrain manifest CSV with an ``ID`` column and an audio-path column
(``--audio-column``, default ``wav``; optional ``start`` / ``stop`` columns in samples read a
segment). ``--model`` is anything ``summarymixing.export.load_pretrained`` reads (an export
folder, a pre-training checkpoint, a Hugging Face wav2vec 2.0 checkpoint).

Each utterance gives ``OUT/<ID>.npy``: an array ``(num_layers, T, D)`` (the hidden states
selected by ``--layers``, all of them by default: the input embeddings, then each layer),
written to a temporary file and renamed, so a killed run leaves only complete files and a rerun
skips the utterances already done (resumable). ``OUT/features.csv`` lists ``ID, path, frames``
of every utterance once all are done. Files that cannot be read are reported at the end, named,
and make the command exit with an error.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data_prep.audio import read_audio
from data_prep.common import write_csv
from summarymixing.export import load_pretrained

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus")
DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass(frozen=True)
class Utterance:
    """One input: its ID, audio file and segment (samples at the file's rate)."""

    id: str
    path: str
    start: int = 0
    stop: int | None = None


def list_folder(folder: Path) -> list[Utterance]:
    """Every audio file below ``folder`` (sorted), its ID the relative path without suffix.

    Example
    -------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("b/1.flac", "a.wav", "a.txt", "b/._1.flac"):
    ...     (root / name).parent.mkdir(exist_ok=True)
    ...     (root / name).touch()
    >>> [u.id for u in list_folder(root)]
    ['a', 'b/1']
    """
    return [
        Utterance(path.relative_to(folder).with_suffix("").as_posix(), str(path))
        for path in sorted(folder.rglob("*"))
        if path.suffix.lower() in AUDIO_SUFFIXES
        and not path.name.startswith("._")
        and path.is_file()
    ]


def list_manifest(manifest: Path, audio_column: str = "wav") -> list[Utterance]:
    """The utterances of a manifest CSV (``ID``, ``audio_column``, optional ``start`` /
    ``stop``); relative audio paths are taken relative to the manifest's folder.

    Raises
    ------
    ValueError
        For a missing column, an empty field or a repeated ID, naming the file and line.
    """
    utterances, seen = [], set()
    with open(manifest, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        for column in ("ID", audio_column):
            if column not in (reader.fieldnames or []):
                raise ValueError(
                    f"{manifest}: expected a column {column!r}, found {reader.fieldnames}"
                )
        for line, row in enumerate(reader, start=2):
            uid, audio = row["ID"], row[audio_column]
            if not uid or not audio:
                raise ValueError(f"{manifest}:{line}: empty ID or {audio_column!r} field")
            if uid in seen:
                raise ValueError(f"{manifest}:{line}: repeated ID {uid!r}")
            seen.add(uid)
            path = Path(audio) if Path(audio).is_absolute() else manifest.parent / audio
            start = int(row.get("start") or 0)
            stop = int(row["stop"]) if row.get("stop") else None
            utterances.append(Utterance(uid, str(path), start, stop))
    return utterances


def output_path(out: Path, uid: str) -> Path:
    """``out/<uid>.npy``; IDs may contain ``/`` (sub-folders) but must stay inside ``out``."""
    path = out / f"{uid}.npy"
    if ".." in Path(uid).parts or Path(uid).is_absolute():
        raise ValueError(f"utterance ID {uid!r} would write outside {out}")
    return path


def save_array(array: np.ndarray, path: Path) -> None:
    """Write ``array`` to ``path`` through a temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            np.save(stream, array, allow_pickle=False)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def extract(
    utterances: Sequence[Utterance],
    model: str,
    out: Path,
    layers: Sequence[int] | None = None,
    dtype: str = "float32",
    device: str = "cpu",
) -> list[str]:
    """Write the features of every utterance not done yet; the IDs that failed.

    Arguments
    ---------
    utterances : sequence of Utterance
        The inputs.
    model : str
        What ``load_pretrained`` reads.
    out : Path
        Output folder.
    layers : sequence of int, optional
        Hidden states to keep (0 = input embeddings); ``None``: all.
    dtype : str
        ``float32`` or ``float16``.
    device : str
        Torch device.

    Returns
    -------
    list of str
        ``"<ID> (<path>): <error>"`` for each utterance that could not be read.
    """
    encoder = load_pretrained(model).to(device)
    sample_rate = getattr(getattr(encoder, "frontend", None), "init_arguments", {}).get(
        "sample_rate", 16000
    )
    if layers is not None:
        bad = [i for i in layers if not 0 <= i < encoder.num_hidden_states]
        if bad:
            raise ValueError(
                f"--layers {bad} out of range: the model has {encoder.num_hidden_states} "
                "hidden states (0 = input embeddings)"
            )
    failures, rows = [], []
    for utterance in tqdm(utterances, desc="extracting", unit="utt", dynamic_ncols=True):
        path = output_path(out, utterance.id)
        if not path.is_file():
            try:
                wav = read_audio(utterance.path, utterance.start, utterance.stop, sample_rate)
            except (OSError, RuntimeError, ValueError) as err:
                failures.append(f"{utterance.id} ({utterance.path}): {err}")
                continue
            with torch.no_grad():
                hidden = encoder(wav.unsqueeze(0).to(device), torch.ones(1, device=device))
            chosen = hidden if layers is None else [hidden[i] for i in layers]
            array = torch.stack([h[0] for h in chosen]).float().cpu().numpy()
            save_array(array.astype(DTYPES[dtype]), path)
            frames = array.shape[1]
        else:  # done by an earlier run
            frames = int(np.load(path, mmap_mode="r", allow_pickle=False).shape[1])
        rows.append({"ID": utterance.id, "path": str(path.relative_to(out)), "frames": frames})
    if not failures:
        write_csv(out / "features.csv", ["ID", "path", "frames"], rows)
    return failures


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring); returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path, help="audio folder or manifest CSV")
    parser.add_argument("--model", required=True, help="export folder, checkpoint or HF model")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--layers", default=None,
                        help="comma-separated hidden states to keep (default: all)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--audio-column", default="wav", help="manifest column of audio paths")
    args = parser.parse_args(argv)
    if args.input.is_dir():
        utterances = list_folder(args.input)
    elif args.input.is_file():
        utterances = list_manifest(args.input, args.audio_column)
    else:
        parser.error(f"no folder or manifest at {args.input}")
    if not utterances:
        parser.error(f"no audio files in {args.input}")
    layers = None if args.layers is None else [int(i) for i in args.layers.split(",")]
    failures = extract(utterances, args.model, args.out, layers, args.dtype, args.device)
    for failure in failures:
        logger.error("unreadable: %s", failure)
    if failures:
        logger.error("%d of %d utterances failed; rerun to retry them", len(failures),
                     len(utterances))
        return 1
    logger.info("Wrote the features of %d utterances to %s", len(utterances), args.out)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
