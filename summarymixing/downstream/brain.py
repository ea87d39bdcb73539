"""The ``sb.Brain`` base class of the four downstream recipes.

:class:`DownstreamBrain` is a :class:`summarymixing.training.GuardedBrain`: a training step with
a non-finite loss or gradient (a NaN-sample utterance) is skipped on every rank, frozen or
fine-tuned, counted, and past ``--nonfinite_patience`` training stops naming the batch's
utterance ids. It turns a batch into head inputs (encoder or cached features, then the
weighted layer sum), handles the frozen / fine-tuned protocol (a separate optimizer and learning
rate for the encoder, paused for the first steps), checkpoints, logs every epoch, and writes the
test metrics JSON and the layer-weights PNG. A recipe subclass writes ``compute_forward`` /
``compute_objectives`` on top of :meth:`DownstreamBrain.features` and returns its epoch
statistics from :meth:`DownstreamBrain.stage_stats`.

YAML contract (MP3S as the authors ran it):

- ``weighted_sum``: a ``WeightedLayerSum`` (softmax over the hidden states; the shipped YAMLs say
  ``layer_norm: False``, as the authors).
- ``opt_class`` / ``lr_annealing``: the head's optimizer and scheduler. ``lr_annealing`` is either
  a ``NewBobScheduler`` (called after each validation with the validation statistic named by the
  optional ``lr_annealing_metric``, default ``loss``, lower is better; classification recipes
  also offer ``<label>_error_rate``, what MP3S anneals on) or a per-epoch scheduler
  (``LinearScheduler``, ``StepScheduler``: called with the epoch number). Anything else is a
  ``TypeError`` at start-up. The log shows the rates each epoch trained with.
- ``weights_opt_class`` (optional, e.g. ``!name:torch.optim.Adam {lr: 0.01}``): the layer weights
  get their own optimizer (``optimizers_dict["weights"]``, checkpointed as
  ``optimizer_weights``, its rate logged as ``lr_weights``) and are left out of the head's.
  ``lr_annealing_weights`` (optional; either kind of scheduler, called like ``lr_annealing``;
  absent = constant rate) anneals it; a NewBob one is checkpointed. Without
  ``weights_opt_class`` the weights share the head's optimizer (older YAMLs).
- ``encoder_opt_class`` and ``lr_annealing_encoder``: fine-tuning only (``freeze_encoder:
  False``); ``freeze_encoder_steps`` pauses the encoder for the first optimizer steps.
- ``wav_augment`` and ``feat_augment``: training-only augmentation, ``null`` for none (the
  authors' protocol).
- ``cache_features`` and ``feature_cache``, ``train_logger``, ``metrics_file``,
  ``layer_weights_plot``; the ``checkpointer`` and ``epoch_counter`` SpeechBrain reads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import speechbrain as sb
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.nnet.schedulers import (
    LinearScheduler,
    NewBobScheduler,
    StepScheduler,
    update_learning_rate,
)
from speechbrain.utils.distributed import run_on_main

from summarymixing.downstream.data import loader_options
from summarymixing.downstream.reporting import plot_layer_weights, write_metrics
from summarymixing.training import GuardedBrain

logger = logging.getLogger(__name__)

METRIC_SCHEDULERS = (NewBobScheduler,)  # called with a validation statistic
EPOCH_SCHEDULERS = (LinearScheduler, StepScheduler)  # called with the epoch number


def check_scheduler(name: str, scheduler: object) -> None:
    """Refuse a learning-rate scheduler :func:`anneal` cannot call.

    Example
    -------
    >>> check_scheduler("lr_annealing", LinearScheduler(1e-3, 1e-4, 15))
    >>> check_scheduler("lr_annealing", 0.001)
    Traceback (most recent call last):
    ...
    TypeError: lr_annealing: expected a NewBobScheduler, LinearScheduler or StepScheduler, got float
    """
    if not isinstance(scheduler, METRIC_SCHEDULERS + EPOCH_SCHEDULERS):
        kinds = [k.__name__ for k in METRIC_SCHEDULERS + EPOCH_SCHEDULERS]
        raise TypeError(
            f"{name}: expected a {', '.join(kinds[:-1])} or {kinds[-1]}, "
            f"got {type(scheduler).__name__}"
        )


def anneal(scheduler: object, epoch: int, metric: float) -> tuple[float, float]:
    """``(old, new)`` learning rate after a validation: a NewBob scheduler follows ``metric``
    (lower is better), a per-epoch one the ``epoch`` just finished.

    Example
    -------
    >>> old, new = anneal(LinearScheduler(1e-3, 1e-4, 4), epoch=1, metric=0.5)
    >>> round(old, 6), round(new, 6)
    (0.001, 0.0007)
    >>> newbob = NewBobScheduler(0.01, annealing_factor=0.5)
    >>> anneal(newbob, 1, 0.5), anneal(newbob, 2, 0.6)  # no improvement: halved
    ((0.01, 0.01), (0.01, 0.005))
    """
    check_scheduler("scheduler", scheduler)
    if isinstance(scheduler, METRIC_SCHEDULERS):
        return scheduler(metric)
    return scheduler(epoch)


class DownstreamBrain(GuardedBrain):
    """Shared training logic of the downstream recipes (see the module docstring).

    Subclasses set :attr:`checkpoint_metric` (the validation statistic that selects the best
    checkpoint), :attr:`higher_is_better` and :attr:`target_keys` (the dynamic items of the
    targets, for :meth:`fit_and_test`), and implement :meth:`stage_stats`.
    """

    checkpoint_metric = "error_rate"
    higher_is_better = False
    target_keys: Sequence[str] = ()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.extractor = self.hparams.encoder  # the unwrapped HiddenStates (DDP wraps modules)
        self.feature_key = "sig"
        self.test_metrics: dict = {}
        if self.hparams.cache_features:
            if not self.extractor.freeze:
                raise ValueError("expected a frozen encoder to cache features, got freeze=False")
            if self.hparams.wav_augment is not None:
                raise ValueError(
                    "expected wav_augment: null with cache_features (cached features cannot be "
                    "speed-perturbed), got a waveform augmentation"
                )
        self.weights_opt_class = getattr(self.hparams, "weights_opt_class", None)
        self.schedulers = {"lr": self.hparams.lr_annealing}
        if not self.extractor.freeze:
            self.schedulers["lr_encoder"] = self.hparams.lr_annealing_encoder
        weights_scheduler = getattr(self.hparams, "lr_annealing_weights", None)
        if weights_scheduler is not None:
            if self.weights_opt_class is None:
                raise ValueError("expected weights_opt_class with lr_annealing_weights, got none")
            self.schedulers["lr_weights"] = weights_scheduler
        for name, scheduler in self.schedulers.items():
            check_scheduler(name.replace("lr", "lr_annealing", 1), scheduler)
        self.annealing_metric = getattr(self.hparams, "lr_annealing_metric", "loss")
        if self.checkpointer is not None:
            if not self.extractor.freeze:
                self.checkpointer.add_recoverable("encoder", self.extractor)
            if isinstance(weights_scheduler, METRIC_SCHEDULERS):  # stateful
                self.checkpointer.add_recoverable("lr_annealing_weights", weights_scheduler)

    # ------------------------------------------------------------------ features
    def prepare_features(self, datasets: Sequence[DynamicItemDataset]) -> str:
        """With ``cache_features``, encode every utterance once (main process) and read the
        features from disk afterwards. Returns the dynamic item the batches must carry
        (``hidden`` for cached features, else ``sig``)."""
        if not self.hparams.cache_features:
            return self.feature_key
        cache = self.hparams.feature_cache
        self.extractor.to(self.device)
        run_on_main(cache.fill, args=[datasets, self.extractor, self.device])
        cache.bind(self.extractor)
        cache.add_pipeline(datasets)
        self.feature_key = "hidden"
        return self.feature_key

    def features(self, batch: sb.dataio.batch.PaddedBatch, stage: sb.Stage) -> tuple:
        """Head inputs of a batch: the weighted layer sum ``(B, T, D)`` and relative lengths
        ``(B,)``, augmented in training when the YAML asks."""
        if self.feature_key == "hidden":
            hidden, lens = batch.hidden  # (B, T, L + 1, D), cached
            hidden, lens = hidden.to(self.device), lens.to(self.device)
        else:
            wavs, lens = batch.sig  # (B, S)
            wavs, lens = wavs.to(self.device), lens.to(self.device)
            if stage == sb.Stage.TRAIN and self.hparams.wav_augment is not None:
                wavs = self.hparams.wav_augment(wavs)  # speed changes S, not relative lengths
            hidden = self.modules.encoder(wavs, lens)  # (B, T, L + 1, D)
            lens = self.extractor.frame_lengths(lens, wavs.shape[1], hidden.shape[1])
        feats = self.modules.weighted_sum(hidden)  # (B, T, D)
        if stage == sb.Stage.TRAIN and self.hparams.feat_augment is not None:
            feats = self.hparams.feat_augment(feats)
        return feats, lens

    # ------------------------------------------------------------------ training
    def fit_and_test(self, datasets: dict[str, DynamicItemDataset]) -> dict:
        """Train and validate (:meth:`fit_splits`), then evaluate the best checkpoint (by
        :attr:`checkpoint_metric`) on ``datasets["test"]``; return the metrics written to
        ``metrics_file``. Batches carry ``id``, the features (:meth:`prepare_features`) and the
        subclass's :attr:`target_keys`."""
        splits = list(datasets.values())
        keys = ["id", self.prepare_features(splits), *self.target_keys]
        sb.dataio.dataset.set_output_keys(splits, keys)
        self.fit_splits(datasets)
        best = "max_key" if self.higher_is_better else "min_key"
        self.evaluate(
            datasets["test"],
            **{best: self.checkpoint_metric},
            test_loader_kwargs=self.hparams.test_dataloader_opts,
        )
        return self.test_metrics

    def fit_splits(self, datasets: dict[str, DynamicItemDataset]) -> None:
        """Train on ``datasets["train"]``, validating on ``datasets["valid"]``, with the YAML's
        loader options (dynamic batching when ``dynamic_batching`` is set)."""
        self.fit(
            self.hparams.epoch_counter,
            datasets["train"],
            datasets["valid"],
            train_loader_kwargs=loader_options(
                datasets["train"], self.hparams.train_dataloader_opts,
                self.hparams.dynamic_batching,
            ),
            valid_loader_kwargs=self.hparams.valid_dataloader_opts,
        )

    # ---------------------------------------------------------------- optimizers
    def init_optimizers(self) -> None:
        """One optimizer for the head (``opt_class``), one for the layer weights when the YAML
        defines ``weights_opt_class`` (else they are the head's), one for a fine-tuned encoder
        (``encoder_opt_class``). Every trainable parameter is in exactly one of them."""
        weights = list(self.hparams.weighted_sum.parameters())
        apart = {id(p) for p in self.extractor.parameters()}
        if self.weights_opt_class is not None:
            apart |= {id(p) for p in weights}
        head = [p for p in self.modules.parameters() if id(p) not in apart and p.requires_grad]
        self.optimizer = self.opt_class(head)
        self.optimizers_dict = {"head": self.optimizer}
        if self.weights_opt_class is not None:
            self.optimizers_dict["weights"] = self.weights_opt_class(weights)
        if not self.extractor.freeze:
            self.optimizers_dict["encoder"] = self.hparams.encoder_opt_class(
                self.extractor.parameters()
            )
        if self.checkpointer is not None:
            for name, optimizer in self.optimizers_dict.items():
                self.checkpointer.add_recoverable(f"optimizer_{name}", optimizer)

    def encoder_paused(self) -> bool:
        """Whether a fine-tuned encoder is still in its first ``freeze_encoder_steps``."""
        return self.optimizer_step < self.hparams.freeze_encoder_steps

    def freeze_optimizers(self, optimizers: dict) -> dict:
        """Leave the encoder's optimizer out while the encoder is paused."""
        if self.encoder_paused():
            return {k: v for k, v in optimizers.items() if k != "encoder"}
        return optimizers

    def on_fit_batch_start(self, batch: sb.dataio.batch.PaddedBatch, should_step: bool) -> None:
        """Pause or resume a fine-tuned encoder according to the step count."""
        super().on_fit_batch_start(batch, should_step)
        if not self.extractor.freeze:
            self.extractor.set_frozen(self.encoder_paused())

    # --------------------------------------------------------------- epoch ends
    def stage_stats(self, stage: sb.Stage) -> dict:
        """Statistics of the stage that just ended (subclasses; ``loss`` is added here)."""
        raise NotImplementedError

    def on_stage_end(self, stage: sb.Stage, stage_loss: float, epoch: int | None = None) -> None:
        """Log the epoch, anneal learning rates and checkpoint (validation), or write the
        metrics JSON and layer-weights PNG (test)."""
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss}
            return
        stats = {"loss": stage_loss, **self.stage_stats(stage)}
        if stage == sb.Stage.VALID:
            lrs = self.anneal_learning_rates(epoch, stats)
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, **lrs, "layer_weights": self.layer_weights()},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            key = "max_keys" if self.higher_is_better else "min_keys"
            self.checkpointer.save_and_keep_only(
                meta={self.checkpoint_metric: stats[self.checkpoint_metric]},
                **{key: [self.checkpoint_metric]},
            )
        else:
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch loaded": self.hparams.epoch_counter.current}, test_stats=stats
            )
            self.write_results(stats)

    def anneal_learning_rates(self, epoch: int, stats: dict) -> dict[str, float]:
        """Step every scheduler after a validation (NewBob on ``stats[lr_annealing_metric]``,
        per-epoch ones on ``epoch``); return the learning rates the epoch trained with."""
        if self.annealing_metric not in stats:
            raise ValueError(
                f"lr_annealing_metric: expected one of {sorted(stats)}, got "
                f"{self.annealing_metric!r}"
            )
        optimizers = {"lr": "head", "lr_encoder": "encoder", "lr_weights": "weights"}
        lrs = {}
        for name, scheduler in self.schedulers.items():
            lrs[name], new_lr = anneal(scheduler, epoch, stats[self.annealing_metric])
            update_learning_rate(self.optimizers_dict[optimizers[name]], new_lr)
        if self.weights_opt_class is not None and "lr_weights" not in lrs:  # constant rate
            lrs["lr_weights"] = self.optimizers_dict["weights"].param_groups[0]["lr"]
        return lrs

    def layer_weights(self) -> list[float]:
        """The learned softmax weights over the hidden states, rounded for logs."""
        return [round(w, 4) for w in self.hparams.weighted_sum.weights().tolist()]

    def write_results(self, stats: dict) -> None:
        """Write ``metrics_file`` (test statistics, layer weights, protocol) and
        ``layer_weights_plot`` (main process only)."""
        weights = self.hparams.weighted_sum.weights().tolist()
        metrics = {
            "test": {k: v if isinstance(v, int) else float(v) for k, v in stats.items()},
            "layer_weights": weights,
            "frozen_encoder": bool(self.extractor.freeze),
            "epochs": int(self.hparams.epoch_counter.current),
        }
        self.test_metrics = metrics
        if sb.utils.distributed.if_main_process():
            write_metrics(self.hparams.metrics_file, metrics)
            plot_layer_weights(weights, self.hparams.layer_weights_plot)

