"""IEMOCAP emotion recognition (4 classes) with a frozen (or fine-tuned) wav2vec 2.0 encoder.

MP3S protocol: a learned softmax-weighted sum of all hidden states feeds an ECAPA-TDNN and a
classifier over neutral / happy (+ excited) / angry / sad; every fold trains a fresh head and the
accuracy of each fold and their mean are written to ``summary_file``. Two fold protocols
(``fold_protocol``):

- ``speaker`` (``hparams/iemocap/train.yaml``, SpeechBrain's MP3S IEMOCAP benchmark): 10 folds,
  leave-two-speakers-out. Fold ``k`` tests on speaker ``k`` (session ``(k + 1) // 2``, the
  female actor for odd ``k``, the male for even ``k``), validates on the other speaker of that
  session and trains on the other eight speakers.
- ``session`` (``hparams/iemocap/train_extended.yaml``): 5 folds, leave-one-session-out. Fold
  ``k`` tests on session ``k`` and validates on ``valid_fraction`` of the other sessions.

Both are derived from the session manifests of :func:`data_prep.iemocap.prepare_iemocap`
(written under ``<prep_folder>/session``); the speaker folds go to ``<prep_folder>/speaker``.

Run, with the project installed (``make venv`` or ``pip install -e .``)::

    python recipes/iemocap/train.py hparams/iemocap/train.yaml \\
        --data_folder=/data/IEMOCAP_full_release --pretrained_path=/models/w2v2.pt

Outputs: ``<output_folder>/metrics.json`` (all folds + mean) and, per fold,
``fold_<k>/{metrics.json, train_log.txt, layer_weights.png, save/}``.
"""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path
from statistics import mean

import yaml
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.distributed import if_main_process, run_on_main

from data_prep.common import MARKER, DataPrepError, require_file, run_once, write_csv
from data_prep.iemocap import FIELDS, SESSIONS, prepare_iemocap
from summarymixing.downstream.classification import ClassificationBrain
from summarymixing.downstream.data import add_audio_pipeline, add_label_pipelines, load_manifest
from summarymixing.downstream.reporting import write_metrics
from summarymixing.recipe import create_experiment_directory, load_hparams, parse_recipe_arguments

logger = logging.getLogger(__name__)

FOLDS = {"speaker": range(1, 11), "session": SESSIONS}


def speaker_of_fold(fold: int) -> tuple[int, str]:
    """The session and the ``spk_id`` of MP3S speaker ``fold`` (1..10, female first).

    Example
    -------
    >>> speaker_of_fold(1), speaker_of_fold(4)
    ((1, 'Ses01F'), (2, 'Ses02M'))
    """
    session = (fold + 1) // 2
    return session, f"Ses{session:02d}{'F' if fold % 2 else 'M'}"


def _read_rows(path: Path) -> list[dict]:
    with open(require_file(path, "IEMOCAP manifest"), encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def prepare_speaker_folds(session_folder: str, save_folder: str) -> None:
    """Write the 10 leave-two-speakers-out folds ``fold_<k>/{train,valid,test}.csv`` of MP3S
    from the 5 session folds of :func:`data_prep.iemocap.prepare_iemocap`.

    Fold ``k`` tests on speaker ``k`` (:func:`speaker_of_fold`), validates on the other speaker
    of its session and trains on every utterance of the four other sessions. Reused when the
    session manifests have not changed.

    Arguments
    ---------
    session_folder : str
        Holds ``fold_<s>/{train,valid,test}.csv`` for s = 1..5.
    save_folder : str
        Where the speaker folds go.

    Raises
    ------
    DataPrepError
        If a speaker of a session has no utterance.
    """
    session_folder = Path(session_folder)
    marker = require_file(session_folder / MARKER, "IEMOCAP session manifests")
    options = {"session_manifests": marker.read_text(encoding="utf-8")}
    splits = ("train", "valid", "test")
    outputs = [f"fold_{k}/{name}.csv" for k in FOLDS["speaker"] for name in splits]

    def build(out: Path) -> None:
        for fold in FOLDS["speaker"]:
            session, speaker = speaker_of_fold(fold)
            source = session_folder / f"fold_{session}"
            train = _read_rows(source / "train.csv") + _read_rows(source / "valid.csv")
            test_csv = source / "test.csv"
            both = _read_rows(test_csv)
            test = [row for row in both if row["spk_id"] == speaker]
            valid = [row for row in both if row["spk_id"] != speaker]
            if not test or not valid:
                raise DataPrepError(
                    f"{test_csv}: expected utterances of both speakers of session {session}, "
                    f"got {len(test)} of {speaker} and {len(valid)} of the other"
                )
            for name, rows in (("train", train), ("valid", valid), ("test", test)):
                write_csv(out / f"fold_{fold}" / f"{name}.csv", FIELDS, rows)

    run_once(save_folder, options, outputs, build)


def prepare_folds(hparams: dict) -> None:
    """Session manifests (``<prep_folder>/session``), then the speaker folds when
    ``fold_protocol`` is ``speaker`` (``<prep_folder>/speaker``); nothing with ``skip_prep``."""
    prep = Path(hparams["prep_folder"])
    run_on_main(
        prepare_iemocap,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": str(prep / "session"),
            "valid_fraction": hparams["valid_fraction"],
            "skip_prep": hparams["skip_prep"],
            "verify_audio": hparams["verify_audio"],
        },
    )
    if hparams["fold_protocol"] == "speaker" and not hparams["skip_prep"]:
        run_on_main(prepare_speaker_folds, args=[str(prep / "session"), str(prep / "speaker")])


def dataio_prepare(
    hparams: dict,
) -> tuple[dict[str, DynamicItemDataset], dict[str, CategoricalEncoder]]:
    """The fold's ``train``/``valid``/``test`` manifests (``<split>_csv``) with audio and the
    encoded emotion (``label_keys``), and the label encoder (fitted on the fold's train, saved
    in its ``save_folder``; a valid/test label unseen in training is a ``ValueError``)."""
    datasets = {
        split: load_manifest(hparams[f"{split}_csv"], hparams["sorting"], hparams["max_duration"])
        for split in ("train", "valid", "test")
    }
    add_audio_pipeline(datasets.values(), hparams["sample_rate"])
    return datasets, add_label_pipelines(datasets, hparams["label_keys"], hparams["save_folder"])


def run_fold(hparams: dict, run_opts: dict) -> dict:
    """Train a fresh head on one fold (the YAML loaded for it), evaluate its best checkpoint on
    the fold's test speakers or session; return the metrics written to ``metrics_file``."""
    datasets, label_encoders = dataio_prepare(hparams)
    brain = ClassificationBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
        label_encoders=label_encoders,
    )
    return brain.fit_and_test(datasets)


def check_folds(hparams: dict) -> list[int]:
    """The ``folds`` to run, checked against ``fold_protocol``."""
    protocol = hparams["fold_protocol"]
    if protocol not in FOLDS:
        raise ValueError(f"expected fold_protocol in {sorted(FOLDS)}, got {protocol!r}")
    folds = list(hparams["folds"])
    allowed = FOLDS[protocol]
    if not folds or any(fold not in allowed for fold in folds):
        raise ValueError(
            f"expected folds to be a non-empty subset of {allowed.start}..{allowed.stop - 1} "
            f"(fold_protocol {protocol}), got {folds}"
        )
    return folds


def main(argv: list[str] | None = None) -> dict:
    """Prepare IEMOCAP, run every fold of ``folds``; return the per-fold and mean metrics.

    Each fold loads the YAML afresh with ``fold`` set (fresh modules, the fold's manifests and
    folders) and has its own experiment folder, ``fold_folder``."""
    hparams_file, run_opts, overrides = parse_recipe_arguments(argv)
    hparams = load_hparams(hparams_file, overrides)
    folds = check_folds(hparams)
    prepare_folds(hparams)
    per_fold = {}
    for fold in folds:
        fold_overrides = {**(yaml.safe_load(overrides) or {}), "fold": fold}
        if fold != hparams["fold"]:
            hparams = load_hparams(hparams_file, fold_overrides)
        create_experiment_directory(__file__, hparams["fold_folder"], hparams_file, fold_overrides)
        per_fold[fold] = run_fold(hparams, run_opts)
        logger.info("Fold %d: %s", fold, per_fold[fold]["test"])
    summary = {
        "folds": {str(fold): metrics["test"] for fold, metrics in per_fold.items()},
        "mean": {
            key: mean(metrics["test"][key] for metrics in per_fold.values())
            for key in per_fold[folds[0]]["test"]
        },
    }
    if if_main_process():
        write_metrics(hparams["summary_file"], summary)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
