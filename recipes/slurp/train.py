"""SLURP scenario classification with a frozen (or fine-tuned) pre-trained wav2vec 2.0 encoder.

``hparams/slurp/train.yaml`` is the authors' MP3S protocol: a learned softmax-weighted sum of all
the encoder's hidden states (its own Adam, lr 0.01) feeds a 2-layer BiLSTM, a linear projection,
mean pooling over the valid frames and a bias-free linear classifier over the 18 *scenarios*
(the paper's "SLURP intent accuracy" is ``scenario_accuracy``), trained on ``train_real`` only.
``hparams/slurp/train_extended.yaml`` adds our extensions: action and full-intent
(``scenario_action``) classifiers (one per column of ``label_keys``, losses summed),
``slurp_synth`` training data, augmentation, a bigger head and layer norm.

Run, with the project installed (``make venv`` or ``pip install -e .``)::

    python recipes/slurp/train.py hparams/slurp/train.yaml \\
        --data_folder=/data/slurp --pretrained_path=/models/w2v2_summarymixing.pt

Outputs in ``output_folder``: ``metrics.json``, ``train_log.txt`` (one line per epoch),
``layer_weights.png`` and the checkpoints.
"""

from __future__ import annotations

import sys

from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.distributed import run_on_main

from data_prep.slurp import prepare_slurp
from summarymixing.downstream.classification import ClassificationBrain
from summarymixing.downstream.data import add_audio_pipeline, add_label_pipelines, load_manifest
from summarymixing.recipe import load_recipe


def dataio_prepare(
    hparams: dict,
) -> tuple[dict[str, DynamicItemDataset], dict[str, CategoricalEncoder]]:
    """The ``train``/``valid``/``test`` manifests of :func:`data_prep.slurp.prepare_slurp`
    (``<split>_csv``) with audio and the encoded label columns of ``label_keys`` (scenario;
    action and full intent with ``train_extended.yaml``), and the label encoders (fitted on
    train, saved in ``save_folder``; a valid/test label unseen in training is a
    ``ValueError``)."""
    datasets = {
        split: load_manifest(hparams[f"{split}_csv"], hparams["sorting"], hparams["max_duration"])
        for split in ("train", "valid", "test")
    }
    add_audio_pipeline(datasets.values(), hparams["sample_rate"])
    return datasets, add_label_pipelines(datasets, hparams["label_keys"], hparams["save_folder"])


def main(argv: list[str] | None = None) -> dict:
    """Prepare SLURP, train the head, evaluate the best checkpoint; return the test metrics."""
    hparams, run_opts = load_recipe(__file__, argv)
    run_on_main(
        prepare_slurp,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["prep_folder"],
            "use_synthetic": hparams["use_synthetic"],
            "skip_prep": hparams["skip_prep"],
            "verify_audio": hparams["verify_audio"],
        },
    )
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


if __name__ == "__main__":
    main(sys.argv[1:])
