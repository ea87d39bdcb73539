"""IEMOCAP emotion recognition (4 classes) with a frozen (or fine-tuned) wav2vec 2.0 encoder.

MP3S protocol: a learned softmax-weighted sum of all hidden states feeds an ECAPA-TDNN and a
linear classifier over neutral / happy (+ excited) / angry / sad. Standard 5-fold
leave-one-session-out: fold ``k`` tests on session ``k``; every fold trains a fresh head. The
accuracy of each fold and their mean are written to ``summary_file``.

Run from the repository root::

    python recipes/iemocap/train.py hparams/iemocap/train.yaml \\
        --data_folder=/data/IEMOCAP_full_release --pretrained_path=/models/w2v2.pt

Outputs: ``<output_folder>/metrics.json`` (all folds + mean) and, per fold,
``fold_<k>/{metrics.json, train_log.txt, layer_weights.png, save/}``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

# Run as a script from anywhere: the repository root holds summarymixing/ and data_prep/.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from statistics import mean

import speechbrain as sb
import yaml
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import if_main_process, run_on_main

from data_prep.iemocap import prepare_iemocap
from summarymixing.downstream.classification import run_classification
from summarymixing.downstream.reporting import write_metrics

logger = logging.getLogger(__name__)


def load_fold_hparams(hparams_file: str, overrides: str, fold: int) -> dict:
    """The YAML loaded for one fold (fresh modules, the fold's manifests and folders)."""
    fold_overrides = {**(yaml.safe_load(overrides) or {}), "fold": fold}
    with open(hparams_file, encoding="utf-8") as fin:
        return load_hyperpyyaml(fin, fold_overrides)


def main(argv: list[str] | None = None) -> dict:
    """Prepare IEMOCAP, run every fold of ``folds``; return the per-fold and mean metrics."""
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)  # no-op unless launched by torchrun
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    folds = list(hparams["folds"])
    if not folds or any(fold not in range(1, 6) for fold in folds):
        raise ValueError(f"expected folds to be a non-empty subset of 1..5, got {folds}")
    per_fold = {}
    for fold in folds:
        if fold != hparams["fold"]:
            hparams = load_fold_hparams(hparams_file, overrides, fold)
        sb.create_experiment_directory(
            experiment_directory=hparams["fold_folder"],
            hyperparams_to_save=hparams_file,
            overrides=overrides,
        )
        run_on_main(
            prepare_iemocap,
            kwargs={
                "data_folder": hparams["data_folder"],
                "save_folder": hparams["prep_folder"],
                "valid_fraction": hparams["valid_fraction"],
                "skip_prep": hparams["skip_prep"],
            },
        )
        per_fold[fold] = run_classification(hparams, run_opts)
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
