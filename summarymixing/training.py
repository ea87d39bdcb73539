"""Training-loop pieces shared by the recipes: a ``speechbrain.Brain`` with robust steps,
mid-epoch checkpoints by time *and* steps, RNG checkpointing and per-step logging.

``RobustBrain`` changes SpeechBrain's ``Brain`` in four places, each an overridable method:

- ``fit_batch`` / ``optimizers_step``: a step whose loss or gradients are not finite is skipped
  on every rank alike (the decision is all-reduced) and counted; past ``nonfinite_patience``
  skipped steps in an epoch training stops with a clear error. Weights never see a NaN.
- ``_should_save_intra_epoch_ckpt`` / ``_save_intra_epoch_ckpt``: checkpoint every
  ``ckpt_every_minutes`` minutes and every ``ckpt_every_steps`` optimizer steps (SpeechBrain
  allows only one of the two), only at gradient-accumulation boundaries (so a resumed run is
  exact), keeping the last ``num_checkpoints_to_keep``.
- ``on_fit_start``: with DDP and layer drop, unused parameters are expected, so
  ``find_unused_parameters`` is switched on rather than letting DDP hang.
- the checkpointer also stores the random number generators (``RNGState``).

Subclasses implement ``compute_forward`` and ``compute_objectives`` (returning a dict with
``loss``; the other entries are logged) and may override ``on_optimizer_step``.
"""

from __future__ import annotations

import logging
import os
import random
import time
from typing import Any

import numpy as np
import speechbrain as sb
import torch
import torch.distributed as dist
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.distributed import is_distributed_initialized

from summarymixing.memory import process_status_kib

logger = logging.getLogger(__name__)


@register_checkpoint_hooks
class RNGState:
    """Checkpointer recoverable for the Python, NumPy, torch CPU and CUDA generators, so that a
    resumed run draws the same masks, negatives and dropout as an uninterrupted one.

    Example
    -------
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "rng.ckpt"
    >>> RNGState().save(path)
    >>> first = torch.rand(3)
    >>> RNGState().load(path)
    >>> torch.equal(first, torch.rand(3))
    True
    """

    @mark_as_saver
    def save(self, path: str | os.PathLike) -> None:
        """Write the generator states."""
        state = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        torch.save(state, path)

    @mark_as_loader
    def load(self, path: str | os.PathLike, end_of_epoch: bool = False) -> None:
        """Restore the generator states (only rank 0's are saved: other DDP ranks restore them
        and then re-seed from their rank so that ranks keep distinct streams)."""
        del end_of_epoch
        state = torch.load(path, weights_only=False)
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
        rank = dist.get_rank() if is_distributed_initialized() else 0
        if rank > 0:
            seed = int(torch.randint(0, 2**31 - 1, ())) + rank
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)


class NonFiniteLossError(RuntimeError):
    """Too many steps had a non-finite loss or gradient."""


class RobustBrain(sb.Brain):
    """``sb.Brain`` with non-finite-step skipping, time-and-step checkpoints and step logging.

    Hyperparameters read (all required in the YAML): ``ckpt_every_minutes``,
    ``ckpt_every_steps``, ``num_checkpoints_to_keep``, ``log_interval`` (optimizer steps
    between lines of ``train_steps_logger``), ``train_steps_logger`` (a SpeechBrain
    ``FileTrainLogger``) and ``tensorboard_logger`` (a ``TensorboardLogger`` or ``null``).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # SpeechBrain 1.1 parses the Optional[int] run option from the command line as a string.
        if isinstance(self.optimizer_step_limit, str):
            self.optimizer_step_limit = int(self.optimizer_step_limit)
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("rng", RNGState())
        self._bad_group = False
        self._last_ckpt_step = 0
        self._last_log_time = time.perf_counter()

    # ------------------------------------------------------------------ DDP
    def on_fit_start(self) -> None:
        """Turn on ``find_unused_parameters`` under DDP when a module drops layers, then
        SpeechBrain's start (wrap, optimiser, recover)."""
        drops_layers = any(
            getattr(module, "layerdrop_prob", 0.0) > 0.0 for module in self.modules.modules()
        )
        if self.distributed_launch and drops_layers and not self.find_unused_parameters:
            logger.warning("layer drop leaves parameters unused: enabling find_unused_parameters")
            self.find_unused_parameters = True
        super().on_fit_start()
        self._last_ckpt_step = self.optimizer_step

    # ------------------------------------------------------------------ steps
    def fit_batch(self, batch: Any) -> torch.Tensor:
        """Forward, backward, and (every ``grad_accumulation_factor`` batches) a guarded step."""
        should_step = self.step % self.grad_accumulation_factor == 0
        self.on_fit_batch_start(batch, should_step)
        with self.no_sync(not should_step):
            with self.training_ctx:
                outputs = self.compute_forward(batch, sb.Stage.TRAIN)
                objectives = self.compute_objectives(outputs, batch, sb.Stage.TRAIN)
            loss = objectives["loss"]
            if not torch.isfinite(loss.detach()).all():
                self._bad_group = True
            self.scaler.scale(loss / self.grad_accumulation_factor).backward()
        if should_step:
            stepped = self.optimizers_step()
            if stepped:
                self.on_optimizer_step(objectives)
        return loss.detach().cpu()

    def optimizers_step(self) -> bool:
        """Unscale, clip, and step unless a loss or gradient of this accumulation group is not
        finite on any rank. Returns whether the parameters were updated."""
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for group in self.optimizer.param_groups for p in group["params"]],
            self.max_grad_norm,
        )
        # With fp16 the GradScaler itself skips overflowing steps and lowers its scale.
        bad_grads = not self.scaler.is_enabled() and not torch.isfinite(grad_norm)
        bad = torch.tensor(float(self._bad_group or bad_grads), device=self.device)
        if is_distributed_initialized():
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        self._bad_group = False
        if bool(bad):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()
            self.nonfinite_count += 1
            logger.warning(
                "skipped optimizer step %d: non-finite loss or gradient (%d skipped this epoch)",
                self.optimizer_step + 1, self.nonfinite_count,
            )
            if self.nonfinite_count > self.nonfinite_patience:
                raise NonFiniteLossError(
                    f"{self.nonfinite_count} optimizer steps had a non-finite loss or gradient "
                    f"this epoch, more than nonfinite_patience={self.nonfinite_patience}: "
                    "stopping. Check the data and lower the learning rate."
                )
            return False
        self.before_optimizer_update()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_step += 1
        self._grad_norm = float(grad_norm)
        return True

    def before_optimizer_update(self) -> None:
        """Called just before ``optimizer.step()`` (e.g. to set the learning rate)."""

    def on_optimizer_step(self, objectives: dict[str, torch.Tensor]) -> None:
        """Called after each optimizer update: logs every ``log_interval`` steps."""
        if self.optimizer_step % self.hparams.log_interval != 0:
            return
        now = time.perf_counter()
        stats = {key: float(value.detach()) for key, value in objectives.items()}
        stats.update(self.extra_step_stats())
        stats["lr"] = self.optimizer.param_groups[0]["lr"]
        stats["grad_norm"] = self._grad_norm
        stats["seconds_per_step"] = (now - self._last_log_time) / self.hparams.log_interval
        if torch.cuda.is_available() and self.device_type == "cuda":
            stats["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        else:
            stats["peak_memory_gib"] = peak_rss_gib()
        self._last_log_time = now
        # SpeechBrain's loggers write on the main process only and synchronise all ranks, so
        # every rank calls them.
        meta = {"step": self.optimizer_step}
        self.hparams.train_steps_logger.log_stats(stats_meta=meta, train_stats=stats)
        if self.hparams.tensorboard_logger is not None:
            self.hparams.tensorboard_logger.log_stats(stats_meta=meta, train_stats=stats)

    def extra_step_stats(self) -> dict[str, float]:
        """More values for the step log (override)."""
        return {}

    # ------------------------------------------------------------------ checkpoints
    def _should_save_intra_epoch_ckpt(self, last_ckpt_time: float, steps_since_ckpt: int) -> bool:
        """Every ``ckpt_every_minutes`` minutes or ``ckpt_every_steps`` optimizer steps, at a
        gradient-accumulation boundary; rank 0 decides for all."""
        del steps_since_ckpt
        if self.checkpointer is None or self.step % self.grad_accumulation_factor != 0:
            return False
        minutes, steps = self.hparams.ckpt_every_minutes, self.hparams.ckpt_every_steps
        decision = 0 < minutes < (time.time() - last_ckpt_time) / 60.0
        decision = decision or 0 < steps <= self.optimizer_step - self._last_ckpt_step
        if is_distributed_initialized():
            decision_list = [decision]
            dist.broadcast_object_list(decision_list, src=0)
            decision = decision_list[0]
        return decision

    def _save_intra_epoch_ckpt(self) -> None:
        """Save a mid-epoch checkpoint, keeping the newest ``num_checkpoints_to_keep``."""
        self.checkpointer.save_and_keep_only(
            meta={"optimizer_step": self.optimizer_step},
            end_of_epoch=False,
            num_to_keep=self.hparams.num_checkpoints_to_keep,
            verbosity=logging.DEBUG,
        )
        self._last_ckpt_step = self.optimizer_step


def peak_rss_gib() -> float:
    """Peak resident set size of this process (Linux ``VmHWM``) in GiB, NaN elsewhere.

    Example
    -------
    >>> peak_rss_gib() > 0 or peak_rss_gib() != peak_rss_gib()
    True
    """
    try:
        return process_status_kib("VmHWM") / 2**20
    except (OSError, LookupError):
        return float("nan")
