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

from speechbrain.utils.distributed import run_on_main

from data_prep.slurp import prepare_slurp
from summarymixing.downstream.classification import run_classification
from summarymixing.recipe import load_recipe


def main(argv: list[str] | None = None) -> dict:
    """Prepare SLURP, train the head, evaluate the best checkpoint; return the test metrics."""
    hparams, run_opts = load_recipe(argv)
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
