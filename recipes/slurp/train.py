"""SLURP intent classification with a frozen (or fine-tuned) pre-trained wav2vec 2.0 encoder.

MP3S protocol: a learned softmax-weighted sum of all the encoder's hidden states feeds a 2-layer
BiLSTM, mean-pooled over time, and linear classifiers. The paper's "SLURP intent accuracy"
follows MP3S, which classifies the 18 *scenarios*: ``scenario_accuracy`` is the
paper-comparable number; the full intent (``scenario_action``) and the action accuracies are
reported beside it (one classifier per column, losses summed).

Run from the repository root::

    python recipes/slurp/train.py hparams/slurp/train.yaml \\
        --data_folder=/data/slurp --pretrained_path=/models/w2v2_summarymixing.pt

Outputs in ``output_folder``: ``metrics.json``, ``train_log.txt`` (one line per epoch),
``layer_weights.png`` and the checkpoints.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script from anywhere: the repository root holds summarymixing/ and data_prep/.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import run_on_main

from data_prep.slurp import prepare_slurp
from summarymixing.downstream.classification import run_classification


def main(argv: list[str] | None = None) -> dict:
    """Prepare SLURP, train the head, evaluate the best checkpoint; return the test metrics."""
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)  # no-op unless launched by torchrun
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    run_on_main(
        prepare_slurp,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["prep_folder"],
            "use_synthetic": hparams["use_synthetic"],
            "skip_prep": hparams["skip_prep"],
        },
    )
    return run_classification(hparams, run_opts)


if __name__ == "__main__":
    main(sys.argv[1:])
