#!/usr/bin/env python3
"""wav2vec 2.0 pre-training with a SummaryMixing (or MHSA) Conformer on LibriLight.

Single process::

    python recipes/pretrain/train.py hparams/pretrain/summarymixing_w2v2.yaml \
        --data_folder /data/librilight

DDP (one node, 4 GPUs; several nodes: add --nnodes/--node_rank/--master_addr)::

    torchrun --nproc_per_node 4 recipes/pretrain/train.py \
        hparams/pretrain/summarymixing_w2v2.yaml --data_folder /data/librilight

The model is ``summarymixing.w2v2.W2V2Pretrainer`` (filterbank front end, context Conformer,
SpeechBrain's Gumbel quantiser); the objective is SpeechBrain's contrastive loss plus the
diversity loss. The training loop (non-finite-step skipping, checkpoints by minutes and steps,
RNG state, step logs) is ``summarymixing.training.RobustBrain``. At the end the encoder is
exported to ``<output_folder>/encoder`` (``hyperparams.yaml`` + ``encoder.ckpt``, see
``summarymixing.export``).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.sampler import DynamicBatchSampler
from speechbrain.utils.distributed import if_main_process, run_on_main

from data_prep.audio import read_audio
from data_prep.librilight import prepare_librilight
from summarymixing.export import export_encoder
from summarymixing.recipe import load_recipe
from summarymixing.training import RobustBrain
from summarymixing.w2v2.pretrain import (
    mask_collate_fn,
    min_maskable_frames,
    w2v2_objectives,
)

logger = logging.getLogger(__name__)


class W2V2Brain(RobustBrain):
    """Pre-training steps: forward the masked batch, contrastive + diversity objective,
    warm-up/cool-down learning rate and Gumbel temperature following the optimizer step."""

    def compute_forward(self, batch: tuple, stage: sb.Stage) -> dict[str, Any]:
        """Run ``W2V2Pretrainer`` on ``(wavs, wav_lens, mask)``; the lengths and the mask stay on
        the CPU, where the collate function made them: the model checks them there without
        waiting for the device, and moves them without blocking."""
        wavs, wav_lens, mask = batch
        return self.modules.model(wavs.to(self.device, non_blocking=True), wav_lens, mask)

    def compute_objectives(
        self, predictions: dict[str, Any], batch: tuple, stage: sb.Stage
    ) -> torch.Tensor:
        """The loss; the contrastive loss, accuracy, diversity loss and perplexities are kept for
        the step log (training) or the epoch's validation statistics."""
        objectives = w2v2_objectives(
            predictions, self.hparams.loss, self.hparams.num_negatives,
            self.hparams.diversity_loss_weight,
        )
        if stage == sb.Stage.TRAIN:
            self.train_objectives = objectives
        else:
            self.valid_stats.append(objectives)
        return objectives["loss"]

    @property
    def quantiser(self) -> torch.nn.Module:
        """The Gumbel quantiser (unwrapped from DDP)."""
        return self.hparams.model.quantiser.quantiser

    def on_fit_start(self) -> None:
        """Recover; refuse a learning-rate schedule restored from a checkpoint that ends at
        another step than this run (past its end it goes negative); put the Gumbel temperature
        where the recovered step count says."""
        super().on_fit_start()
        schedule_steps = self.hparams.lr_scheduler.total_steps
        if self.optimizer_step_limit is not None and schedule_steps != self.optimizer_step_limit:
            raise ValueError(
                f"the learning-rate schedule in {self.checkpointer.checkpoints_dir} ends at step "
                f"{schedule_steps}, but optimizer_step_limit is {self.optimizer_step_limit}: "
                "resume with the same optimizer_step_limit, or start a new output_folder"
            )
        self.quantiser.update_temp(self.optimizer_step)

    def on_fit_batch_start(self, batch: tuple, should_step: bool) -> None:
        """On the batch that ends an accumulation group, set the learning rate of the coming
        optimizer step (warm-up starts above zero)."""
        super().on_fit_batch_start(batch, should_step)
        if should_step:
            self.hparams.lr_scheduler(self.optimizer, self.optimizer_step + 1)

    def on_fit_batch_end(
        self, batch: tuple, outputs: dict[str, Any], loss: torch.Tensor, should_step: bool
    ) -> None:
        """After an applied optimizer step, anneal the Gumbel temperature; then log."""
        if should_step and self.step_applied:
            self.quantiser.update_temp(self.optimizer_step)
        super().on_fit_batch_end(batch, outputs, loss, should_step)

    def extra_step_stats(self) -> dict[str, float]:
        """The objectives of the step's last batch and the Gumbel temperature."""
        stats = {key: float(value.detach()) for key, value in self.train_objectives.items()}
        return {**stats, "temperature": float(self.quantiser.curr_temp)}

    def on_stage_start(self, stage: sb.Stage, epoch: int | None = None) -> None:
        """Reset the validation statistics."""
        self.valid_stats: list[dict[str, torch.Tensor]] = []

    def on_stage_end(self, stage: sb.Stage, stage_loss: float, epoch: int | None = None) -> None:
        """Log the epoch and save an end-of-epoch checkpoint after validation."""
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss}
            return
        valid = {"loss": stage_loss}
        for key in ("contrastive_per_frame", "accuracy", "diversity_loss", "prob_perplex"):
            valid[key] = sum(float(s[key]) for s in self.valid_stats) / len(self.valid_stats)
        self.hparams.train_logger.log_stats(
            stats_meta={"epoch": epoch, "steps": self.optimizer_step,
                        "lr": self.optimizer.param_groups[0]["lr"]},
            train_stats=self.train_stats, valid_stats=valid,
        )
        self.checkpointer.save_and_keep_only(
            meta={"valid_loss": stage_loss, "optimizer_step": self.optimizer_step},
            num_to_keep=self.hparams.num_checkpoints_to_keep,
        )


def check_maskable(hparams: dict, manifest: str, dataset: DynamicItemDataset) -> None:
    """Refuse a manifest whose shortest utterance is too short for span masking (SpeechBrain's
    ``compute_mask`` would fail at random in the middle of training)."""
    if len(dataset) == 0:
        raise ValueError(f"{manifest}: no utterance left between min_duration and max_duration")
    shortest = min(dataset.data_ids, key=lambda uid: float(dataset.data[uid]["duration"]))
    seconds = float(dataset.data[shortest]["duration"])
    samples = torch.tensor([int(seconds * hparams["sample_rate"])])
    frames = int(hparams["model"].encoder.frontend.output_lengths(samples)[0])
    fewest = min_maskable_frames(hparams["mask_prob"], hparams["mask_length"])
    if frames < fewest:
        raise ValueError(
            f"{manifest}: utterance {shortest} lasts {seconds} s ({frames} frames), but masking "
            f"spans of {hparams['mask_length']} frames with probability {hparams['mask_prob']} "
            f"needs at least {fewest} frames: raise min_duration or filter the manifest"
        )


def dataio_prepare(hparams: dict) -> tuple:
    """Datasets and loader options: LibriLight segments (duration-filtered) with dynamic
    batching for training, the validation set in fixed-size batches; both collated with masks.

    Returns
    -------
    train_data, valid_data, train_loader_kwargs, valid_loader_kwargs
    """
    train_data = sb.dataio.dataset.DynamicItemDataset.from_csv(hparams["train_csv"])
    train_data = train_data.filtered_sorted(
        sort_key="duration",
        key_min_value={"duration": hparams["min_duration"]},
        key_max_value={"duration": hparams["max_duration"]},
    )
    valid_data = sb.dataio.dataset.DynamicItemDataset.from_csv(hparams["valid_csv"])
    valid_data = valid_data.filtered_sorted(sort_key="duration")
    datasets = [train_data, valid_data]

    @sb.utils.data_pipeline.takes("wav", "start", "stop")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav: str, start: str, stop: str) -> torch.Tensor:
        return read_audio(wav, int(start), int(stop), hparams["sample_rate"])

    sb.dataio.dataset.add_dynamic_item(datasets, audio_pipeline)
    sb.dataio.dataset.set_output_keys(datasets, ["id", "sig"])
    for key, dataset in (("train_csv", train_data), ("valid_csv", valid_data)):
        check_maskable(hparams, hparams[key], dataset)

    collate = mask_collate_fn(
        hparams["model"].encoder.frontend, hparams["mask_prob"], hparams["mask_length"]
    )
    sampler = DynamicBatchSampler(
        train_data, length_func=lambda row: row["duration"], seed=hparams["seed"],
        **hparams["dynamic_batch_sampler"],
    )
    train_loader_kwargs = {
        "batch_sampler": sampler,
        "collate_fn": collate,
        "num_workers": hparams["num_workers"],
        # A private generator: creating the loader's iterator must not draw from the global
        # one, or a resumed run would drift from an uninterrupted one.
        "generator": torch.Generator().manual_seed(hparams["seed"]),
    }
    valid_loader_kwargs = {
        "batch_size": hparams["valid_batch_size"],
        "collate_fn": collate,
        "num_workers": hparams["num_workers"],
    }
    return train_data, valid_data, train_loader_kwargs, valid_loader_kwargs


def main(argv: list[str]) -> W2V2Brain:
    """Prepare the data, pre-train, export the encoder."""
    hparams, run_opts = load_recipe(__file__, argv)
    run_on_main(
        prepare_librilight,
        kwargs={
            "data_folder": hparams["data_folder"], "save_folder": hparams["output_folder"],
            "split": hparams["librilight_split"], "valid_folder": hparams["valid_folder"],
            "min_duration": hparams["min_duration"], "max_duration": hparams["max_duration"],
            "skip_prep": hparams["skip_prep"],
            "verify_audio": hparams["verify_audio"],
        },
    )
    train_data, valid_data, train_kwargs, valid_kwargs = dataio_prepare(hparams)
    brain = W2V2Brain(
        modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
        run_opts=run_opts, checkpointer=hparams["checkpointer"],
    )
    brain.fit(
        brain.hparams.epoch_counter, train_data, valid_data,
        train_loader_kwargs=train_kwargs, valid_loader_kwargs=valid_kwargs,
    )
    if if_main_process():
        export_encoder(hparams["model"].encoder, hparams["export_folder"])
    return brain


if __name__ == "__main__":
    main(sys.argv[1:])
