"""Utterance classification on top of the weighted layer sum (SLURP intents, IEMOCAP emotions).

A pooling head (``head(feats, lengths) -> (B, 1, E)``: a BiLSTM with mean pooling, ECAPA-TDNN,
attentive pooling, ...) feeds one classifier per label column (``classifier``, sized through its
``classifier_size_argument``: ``n_neurons`` for SpeechBrain's ``Linear``, ``out_neurons`` for
ECAPA's cosine ``Classifier``); the loss is the sum of their negative log-likelihoods, and each
column's accuracy and error rate are reported.

The recipes (``recipes/slurp/train.py``, ``recipes/iemocap/train.py``) prepare their data
(``dataio_prepare``) and run :class:`ClassificationBrain` as it is: the label columns come from
the YAML's ``label_keys``, so a task needs no subclass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import speechbrain as sb
import torch
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.metric_stats import ClassificationStats
from torch import nn

from summarymixing.downstream.brain import DownstreamBrain

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

    Modules: ``encoder``, ``weighted_sum``, ``head`` (from the YAML's ``modules``) and
    ``classifiers``, one per column of ``label_keys``, built here by :func:`build_classifiers`
    from the YAML's ``classifier`` and the fitted ``label_encoders``. Batches carry
    ``<key>_encoded``.

    Arguments
    ---------
    modules : dict
        The YAML's modules (``classifiers`` is added).
    hparams : dict
        The loaded YAML.
    label_encoders : mapping
        Column name -> label encoder fitted on the training set (in ``label_keys`` order).
    **kwargs
        The other arguments of ``sb.Brain`` (``opt_class``, ``run_opts``, ``checkpointer``).
    """

    higher_is_better = True

    def __init__(
        self,
        modules: dict,
        hparams: dict,
        label_encoders: Mapping[str, CategoricalEncoder],
        **kwargs,
    ):
        classifiers = build_classifiers(
            hparams["classifier"], label_encoders, hparams["classifier_size_argument"]
        )
        super().__init__(modules={**modules, "classifiers": classifiers}, hparams=hparams, **kwargs)
        self.label_keys = list(self.hparams.label_keys)
        self.target_keys = [f"{key}_encoded" for key in self.label_keys]
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

