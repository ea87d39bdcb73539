"""Utterance classification on top of the weighted layer sum (SLURP intents, IEMOCAP emotions).

A pooling head (``head(feats, lengths) -> (B, 1, E)``: a BiLSTM with mean pooling, ECAPA-TDNN,
attentive pooling, ...) feeds one classifier per label column (``classifier``, sized through its
``classifier_size_argument``: ``n_neurons`` for SpeechBrain's ``Linear``, ``out_neurons`` for
ECAPA's cosine ``Classifier``); the loss is the sum of their negative log-likelihoods, and each
column's accuracy and error rate are reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.metric_stats import ClassificationStats
from torch import nn

from summarymixing.downstream.brain import DownstreamBrain
from summarymixing.downstream.data import (
    add_audio_pipeline,
    add_label_pipeline,
    load_manifest,
)  # fmt: skip

logger = logging.getLogger(__name__)


class ClassifierHeads(nn.ModuleDict):
    """One classifier per label column, called at once (so that DDP wraps a single forward).

    Example
    -------
    >>> heads = ClassifierHeads({"emo": nn.Linear(8, 4), "spk": nn.Linear(8, 2)})
    >>> {k: v.shape for k, v in heads(torch.randn(3, 1, 8)).items()}
    {'emo': torch.Size([3, 4]), 'spk': torch.Size([3, 2])}
    """

    def forward(self, embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
        """Log-probabilities ``(B, n_classes)`` of each column from embeddings ``(B, 1, E)``."""
        return {
            key: torch.log_softmax(classifier(embeddings), dim=-1).squeeze(1)
            for key, classifier in self.items()
        }


def build_classifiers(
    make_classifier: Callable[..., nn.Module],
    label_encoders: Mapping[str, CategoricalEncoder],
    size_argument: str = "n_neurons",
) -> ClassifierHeads:
    """One classifier per label column, sized by its label encoder.

    Arguments
    ---------
    make_classifier : callable
        ``make_classifier(**{size_argument: n_classes})`` (a YAML ``!name:`` of a classifier
        mapping ``(B, 1, E)`` to ``(B, 1, n_classes)``).
    label_encoders : mapping
        Column name -> fitted label encoder.
    size_argument : str
        The keyword of ``make_classifier`` that takes the number of classes.

    Example
    -------
    >>> from functools import partial
    >>> encoder = CategoricalEncoder()
    >>> encoder.update_from_iterable(["neu", "sad", "ang"])
    >>> make = partial(sb.nnet.linear.Linear, input_size=8)
    >>> build_classifiers(make, {"emo": encoder})(torch.randn(2, 1, 8))["emo"].shape
    torch.Size([2, 3])
    >>> from speechbrain.lobes.models.ECAPA_TDNN import Classifier
    >>> cosine = partial(Classifier, input_size=8)
    >>> heads = build_classifiers(cosine, {"emo": encoder}, "out_neurons")
    >>> heads(torch.randn(2, 1, 8))["emo"].shape
    torch.Size([2, 3])
    """
    return ClassifierHeads(
        {
            key: make_classifier(**{size_argument: len(encoder)})
            for key, encoder in label_encoders.items()
        }
    )


class ClassificationBrain(DownstreamBrain):
    """Multi-column utterance classifier; the first of ``label_keys`` selects checkpoints.

    Modules: ``encoder``, ``weighted_sum``, ``head`` and ``classifiers`` (one per column of
    ``label_keys``, built by :func:`build_classifiers`). Batches carry ``<key>_encoded``.
    """

    higher_is_better = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.label_keys = list(self.hparams.label_keys)
        self.checkpoint_metric = f"{self.label_keys[0]}_accuracy"
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("classifiers", self.modules.classifiers)

    def compute_forward(self, batch: sb.dataio.batch.PaddedBatch, stage: sb.Stage) -> dict:
        """Log-probabilities ``(B, n_classes)`` of every label column."""
        feats, lens = self.features(batch, stage)  # (B, T, D)
        return self.modules.classifiers(self.modules.head(feats, lens))  # (B, 1, E) -> dict

    def compute_objectives(
        self, predictions: dict, batch: sb.dataio.batch.PaddedBatch, stage: sb.Stage
    ) -> torch.Tensor:
        """Sum of the columns' NLL losses; accumulate accuracies outside training."""
        loss = torch.zeros((), device=self.device)
        for key in self.label_keys:
            targets = getattr(batch, f"{key}_encoded").data.to(self.device).squeeze(1)  # (B,)
            loss = loss + torch.nn.functional.nll_loss(predictions[key], targets)
            if stage != sb.Stage.TRAIN:
                self.accuracy[key].append(batch.id, predictions[key].argmax(-1), targets)
        return loss

    def on_stage_start(self, stage: sb.Stage, epoch: int | None = None) -> None:
        """Fresh accuracy trackers for each evaluation."""
        if stage != sb.Stage.TRAIN:
            self.accuracy = {key: ClassificationStats() for key in self.label_keys}

    def stage_stats(self, stage: sb.Stage) -> dict:
        """``<key>_accuracy`` and ``<key>_error_rate`` (``1 - accuracy``, what MP3S anneals
        on) for every label column."""
        stats = {}
        for key in self.label_keys:
            accuracy = float(self.accuracy[key].summarize("accuracy"))
            stats[f"{key}_accuracy"] = accuracy
            stats[f"{key}_error_rate"] = 1.0 - accuracy
        return stats


def prepare_datasets(
    hparams: dict,
) -> tuple[dict[str, DynamicItemDataset], dict[str, CategoricalEncoder]]:
    """The ``train``/``valid``/``test`` datasets (``<split>_csv``) with audio and encoded labels
    for every column of ``label_keys``, and the label encoders (fitted on train, saved in
    ``save_folder``; a valid/test label unseen in training is a ``ValueError``)."""
    datasets = {
        split: load_manifest(hparams[f"{split}_csv"], hparams["sorting"], hparams["max_duration"])
        for split in ("train", "valid", "test")
    }
    add_audio_pipeline(datasets.values(), hparams["sample_rate"])
    others = {"valid": datasets["valid"], "test": datasets["test"]}
    label_encoders = {
        key: add_label_pipeline(
            key, datasets["train"], others, Path(hparams["save_folder"]) / f"{key}_encoder.txt"
        )
        for key in hparams["label_keys"]
    }
    return datasets, label_encoders


def run_classification(hparams: dict, run_opts: dict) -> dict:
    """Train a classification head on prepared manifests, evaluate the best checkpoint on the
    test split and return the metrics written to ``metrics_file``."""
    datasets, label_encoders = prepare_datasets(hparams)
    modules = {
        **hparams["modules"],
        "classifiers": build_classifiers(
            hparams["classifier"], label_encoders, hparams["classifier_size_argument"]
        ),
    }
    brain = ClassificationBrain(
        modules=modules,
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    splits = list(datasets.values())
    feature_key = brain.prepare_features(splits)
    keys = ["id", feature_key, *(f"{key}_encoded" for key in hparams["label_keys"])]
    sb.dataio.dataset.set_output_keys(splits, keys)
    brain.fit_splits(datasets)
    brain.evaluate(
        datasets["test"],
        max_key=brain.checkpoint_metric,
        test_loader_kwargs=hparams["test_dataloader_opts"],
    )
    return brain.test_metrics
