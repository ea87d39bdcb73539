"""SLURP scenario classification with a frozen (or fine-tuned) pre-trained wav2vec 2.0 encoder.

``hparams/slurp/train.yaml`` is the authors' MP3S protocol: a learned softmax-weighted sum of all
the encoder's hidden states (its own Adam, lr 0.01) feeds a 2-layer BiLSTM, a linear projection,
mean pooling over the valid frames and a bias-free linear classifier over the 18 *scenarios*
(the paper's "SLURP intent accuracy" is ``scenario_accuracy``), trained on ``train_real`` only.
``hparams/slurp/train_extended.yaml`` adds our extensions: action and full-intent
(``scenario_action``) classifiers (one per column of ``label_keys``, losses summed),
``slurp_synth`` training data, augmentation, a bigger head and layer norm.

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
