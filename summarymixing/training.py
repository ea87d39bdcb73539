"""Training-loop pieces shared by the recipes: SpeechBrain's ``Brain`` extended through its hooks
(its ``fit_batch`` loop runs unchanged, so ``on_fit_batch_start/end``, ``optimizers_dict``,
``freeze_optimizers``, gradient accumulation, ``no_sync`` and the AMP scaler all apply).

:class:`GuardedBrain` (every recipe, pre-training and downstream) overrides:

- ``check_loss_isfinite`` and ``optimizers_step`` (``on_fit_batch_start`` and ``zero_grad``
  keep the accumulation group's record): a step whose loss or gradients are not finite is
  skipped on every rank alike (the decision is all-reduced) and counted in ``nonfinite_count``;
  past ``--nonfinite_patience`` skipped steps in an epoch, :class:`NonFiniteLossError` names the
  utterances of the batch. Weights never see a NaN, and ``optimizer_step`` counts only applied
  updates (also when the fp16 ``GradScaler`` skips an overflowing step).
  ``--skip_nonfinite_grads`` is accepted and redundant: whole steps are always skipped.
- ``on_fit_start``: under DDP, ``find_unused_parameters`` is switched on when a module drops
  layers or can pause a trainable part (a fine-tuned encoder); nothing else sets it.

:class:`RobustBrain` (pre-training) adds:

- ``_should_save_intra_epoch_ckpt`` / ``_save_intra_epoch_ckpt``: a checkpoint every
  ``ckpt_every_minutes`` minutes *and* every ``ckpt_every_steps`` optimizer steps (SpeechBrain's
  ``--ckpt_interval_minutes`` / ``--ckpt_interval_steps`` allow only one and are refused, naming
  ours), only at gradient-accumulation boundaries, keeping ``num_checkpoints_to_keep``.
- ``on_fit_batch_end``: every ``log_interval`` applied steps, a line of the JSON-lines step log
  (:class:`StepLog`).
- the checkpointer also stores the random number generators (:class:`RNGState`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Mapping
from pathlib import Path
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
from speechbrain.utils.distributed import if_main_process, is_distributed_initialized
from torch.utils.data import DistributedSampler

from summarymixing.checkpoints import RunLock
from summarymixing.memory import process_status_kib

logger = logging.getLogger(__name__)


@register_checkpoint_hooks
class RNGState:
    """Checkpointer recoverable for the Python, NumPy, torch CPU and CUDA generators, so that a
    resumed run draws the same masks, negatives and dropout as an uninterrupted one. The states
    are stored as tensors and plain numbers and read back with ``weights_only=True`` (no pickle).

    Example
    -------
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "rng.ckpt"
    >>> RNGState().save(path)
    >>> first = torch.rand(3), random.random(), np.random.rand()
    >>> RNGState().load(path)
    >>> torch.equal(first[0], torch.rand(3)), first[1:] == (random.random(), np.random.rand())
    (True, True)
    """

    @mark_as_saver
    def save(self, path: str | os.PathLike) -> None:
        """Write the generator states."""
        version, python_state, gauss = random.getstate()
        name, keys, position, has_gauss, cached = np.random.get_state()
        state = {
            "python": [version, torch.tensor(python_state, dtype=torch.int64), gauss],
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        torch.save(state, path)

    @mark_as_loader
    def load(self, path: str | os.PathLike, end_of_epoch: bool = False) -> None:
        """Restore the generator states (only rank 0's are saved: other DDP ranks restore them
        and then re-seed from their rank so that ranks keep distinct streams)."""
        del end_of_epoch
        state = torch.load(path, weights_only=True)
        version, python_state, gauss = state["python"]
        random.setstate((version, tuple(python_state.tolist()), gauss))
        name, keys, position, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
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


class NoTrainingStepError(RuntimeError):
    """An epoch made no optimizer step: nothing would be trained."""


def batch_ids(batch: Any) -> list[str]:
    """The utterance ids of a batch: a ``PaddedBatch``'s ``id``, else none.

    Example
    -------
    >>> from speechbrain.dataio.batch import PaddedBatch
    >>> batch_ids(PaddedBatch([{"id": "a", "x": torch.ones(2)}, {"id": "b", "x": torch.ones(3)}]))
    ['a', 'b']
    >>> batch_ids((torch.ones(2, 3), torch.ones(2)))
    []
    """
    ids = getattr(batch, "id", None)
    return [str(uid) for uid in ids] if isinstance(ids, (list, tuple)) else []


class GuardedBrain(sb.Brain):
    """``sb.Brain`` whose optimizer steps are skipped on every rank when a loss or gradient of
    the accumulation group is not finite (see the module docstring).

    Subclasses that override ``on_fit_batch_start`` call ``super()``: it records the utterance
    ids named by :class:`NonFiniteLossError`. After each ``optimizers_step``, ``step_applied``
    says whether the weights were updated and ``grad_norm`` holds the total gradient norm (before
    clipping) as a 0-d tensor on the device (read it only when logging: reading it waits for the
    device).

    The step reads the device once for its decision (skip or apply): the losses' and the
    gradients' finiteness are accumulated on the device and read together. Under fp16 it also
    reads the GradScaler's scale before and after the step (a lower scale: the GradScaler skipped
    it), and the GradScaler reads its overflow flag unless the optimizer is a fused one.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # SpeechBrain 1.1 parses the Optional[int] run option from the command line as a string.
        if isinstance(self.optimizer_step_limit, str):
            self.optimizer_step_limit = int(self.optimizer_step_limit)
        if self.skip_nonfinite_grads:
            logger.info("skip_nonfinite_grads: always on here, a step with a non-finite loss or "
                        "gradient is skipped whole on every rank (see nonfinite_patience)")
            self.skip_nonfinite_grads = False  # SpeechBrain's per-tensor check: redundant
        self.nonfinite_count = 0
        self.step_applied = False
        self.grad_norm = torch.tensor(float("nan"))
        self._losses_finite: torch.Tensor | None = None
        self._group_ids: list[str] = []

    # ------------------------------------------------------------------ run and epochs
    def fit(self, *args: Any, **kwargs: Any) -> Any:
        """SpeechBrain's ``fit``, holding :class:`~summarymixing.checkpoints.RunLock` on the
        checkpoint folder (main process): a second run in the same folder is refused."""
        lock = None
        if self.checkpointer is not None and if_main_process():
            lock = RunLock(self.checkpointer.checkpoints_dir)
        try:
            return super().fit(*args, **kwargs)
        finally:
            if lock is not None:
                lock.release()

    def _train_loader_specifics(self, dataset: Any, loader_kwargs: dict) -> dict:
        """SpeechBrain's, with every epoch its own order: a ``batch_sampler`` with ``set_epoch``
        (``DynamicBatchSampler``) becomes the ``train_sampler`` SpeechBrain calls ``set_epoch``
        on each epoch (it only does so for samplers it makes); under DDP, ``shuffle: True``
        shuffles (SpeechBrain shuffles there only when ``hparams.sorting`` is ``random``)."""
        batch_sampler = loader_kwargs.get("batch_sampler")
        if (
            self.distributed_launch and loader_kwargs.get("shuffle")
            and batch_sampler is None and loader_kwargs.get("sampler") is None
        ):
            self.train_sampler = DistributedSampler(
                dataset, rank=self.rank, shuffle=True,
                drop_last=loader_kwargs.get("drop_last", False),
                seed=int(getattr(self.hparams, "seed", 0)),
            )
            return {**loader_kwargs, "shuffle": False, "sampler": self.train_sampler}
        loader_kwargs = super()._train_loader_specifics(dataset, loader_kwargs)
        if self.train_sampler is None and hasattr(batch_sampler, "set_epoch"):
            self.train_sampler = batch_sampler
        return loader_kwargs

    def _fit_train(self, train_set: Any, epoch: int, enable: bool) -> None:
        """SpeechBrain's epoch, refused when it would make no optimizer step (a loader without
        batches, or fewer batches than ``grad_accumulation_factor``): training would silently
        do nothing."""
        try:
            batches = len(train_set)
        except TypeError:  # an iterable dataset
            batches = None
        if batches == 0:
            raise NoTrainingStepError(
                f"epoch {epoch}: the training loader has no batch (fewer training items than "
                "one batch, with drop_last?): nothing would be trained"
            )
        resumed_in_epoch = self.step > 0
        steps, skipped = self.optimizer_step, self.nonfinite_count
        super()._fit_train(train_set, epoch, enable)
        limit = self.optimizer_step_limit
        if (
            not resumed_in_epoch and self.optimizer_step == steps
            and self.nonfinite_count == skipped and (limit is None or steps < limit)
        ):
            raise NoTrainingStepError(
                f"epoch {epoch} made no optimizer step ({batches} batches, "
                f"grad_accumulation_factor={self.grad_accumulation_factor}): nothing was trained"
            )

    # ------------------------------------------------------------------ DDP
    def has_unused_parameters(self) -> bool:
        """Whether DDP must look for parameters without a gradient: a module drops layers
        (``layerdrop_prob > 0``), or a module with trainable parameters can be paused
        (``set_frozen``, a fine-tuned encoder: paused steps, and pre-training-only parameters
        such as ``mask_emb`` unused downstream)."""
        for module in self.modules.modules():
            if getattr(module, "layerdrop_prob", 0.0) > 0.0:
                return True
            if hasattr(module, "set_frozen") and any(p.requires_grad for p in module.parameters()):
                return True
        return False

    def on_fit_start(self) -> None:
        """Under DDP, turn on ``find_unused_parameters`` when :meth:`has_unused_parameters`;
        then SpeechBrain's start (wrap, optimizers, recover)."""
        if self.distributed_launch and not self.find_unused_parameters:
            if self.has_unused_parameters():
                logger.info("some parameters may get no gradient: find_unused_parameters on")
                self.find_unused_parameters = True
        super().on_fit_start()

    # ------------------------------------------------------------------ steps
    def on_fit_batch_start(self, batch: Any, should_step: bool) -> None:
        """Remember the utterance ids of the accumulation group."""
        self._group_ids.extend(batch_ids(batch))

    def check_loss_isfinite(self, loss: torch.Tensor) -> None:
        """Note on the device whether the losses of the accumulation group are finite (read,
        skipped and counted in :meth:`optimizers_step`, once per skipped step, on every rank):
        no host read here, before the backward pass is queued."""
        finite = torch.isfinite(loss.detach()).all()
        if self._losses_finite is not None:
            finite = finite & self._losses_finite
        self._losses_finite = finite

    def zero_grad(self, set_to_none: bool = False) -> None:
        """SpeechBrain's (start and end of an epoch), and forget the accumulation group: a
        group an epoch leaves unfinished must not mark the next epoch's first step."""
        super().zero_grad(set_to_none)
        self._losses_finite, self._group_ids = None, []

    def _active_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if self.optimizers_dict is not None:
            return self.freeze_optimizers(self.optimizers_dict)
        return {"optimizer": self.optimizer} if self.opt_class is not None else {}

    def optimizers_step(self) -> None:
        """Skip the step on every rank when a loss or gradient of the group is not finite on
        any rank; else SpeechBrain's step (unscale, clip, step, update the scaler)."""
        grads = [
            p.grad for opt in self._active_optimizers().values()
            for group in opt.param_groups for p in group["params"] if p.grad is not None
        ]
        norm = (torch.nn.utils.get_total_norm(grads) if grads
                else torch.zeros((), device=self.device))
        scaled = self.scaler.is_enabled()
        # With fp16 an overflowing gradient is the GradScaler's to skip (it lowers its scale).
        bad_here = torch.zeros((), dtype=torch.bool, device=norm.device)
        if self._losses_finite is not None:
            bad_here = ~self._losses_finite.to(norm.device)
        if not scaled:
            bad_here = bad_here | ~torch.isfinite(norm)
        bad = bad_here.float()
        if is_distributed_initialized():
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        ids = self._group_ids
        self._losses_finite, self._group_ids = None, []
        self.step_applied = False
        if bool(bad):  # the step's one read of the device: a decision
            self._drop_gradients()
            self._count_nonfinite(ids, bool(bad_here))
            return
        scale = self.scaler.get_scale() if scaled else 1.0
        steps = self.optimizer_step
        super().optimizers_step()
        if scaled and self.scaler.get_scale() < scale:
            self.optimizer_step = steps  # the GradScaler skipped an overflowing step
            return
        self.step_applied = self.optimizer_step > steps
        self.grad_norm = norm.detach() / scale

    def _drop_gradients(self) -> None:
        params = list(self.modules.parameters())
        for optimizer in (self.optimizers_dict or {}).values():
            params += [p for group in optimizer.param_groups for p in group["params"]]
        for param in params:
            param.grad = None

    def _count_nonfinite(self, ids: list[str], here: bool) -> None:
        self.nonfinite_count += 1
        where = "" if here else " (on another rank)"
        names = f"; utterances of the batch on this rank: {', '.join(ids)}" if ids else ""
        logger.warning(
            "skipped optimizer step %d: non-finite loss or gradient%s (%d skipped this epoch)%s",
            self.optimizer_step + 1, where, self.nonfinite_count, names,
        )
        if self.nonfinite_count > self.nonfinite_patience:
            raise NonFiniteLossError(
                f"{self.nonfinite_count} optimizer steps had a non-finite loss or gradient this "
                f"epoch, more than nonfinite_patience={self.nonfinite_patience}: stopping. Last "
                f"one{where}{names or ' (the batch has no utterance ids)'}. Check the data "
                "(NaN or infinite samples), or lower the learning rate."
            )


class StepLog:
    """The step log: one JSON object a line, appended and flushed line by line on the main
    process. A line torn by a kill is cut off when the log is next opened for writing (a resumed
    run), and skipped with a warning by :func:`read_step_log`. Non-finite numbers are written as
    ``null``.

    Arguments
    ---------
    path : str or os.PathLike
        The ``.jsonl`` file.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "steps.jsonl"
    >>> log = StepLog(path)
    >>> log.write({"step": 1, "loss": 2.5, "grad_norm": float("nan")})
    >>> path.read_text()
    '{"step": 1, "loss": 2.5, "grad_norm": null}\\n'
    >>> read_step_log(path)
    [{'step': 1, 'loss': 2.5, 'grad_norm': nan}]
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._checked = False

    def _cut_torn_line(self) -> None:
        if not self.path.is_file():
            return
        with open(self.path, "rb+") as stream:
            data = stream.read()
            if data and not data.endswith(b"\n"):
                logger.warning("%s: cutting off a torn last line", self.path)
                stream.truncate(data.rfind(b"\n") + 1)

    def write(self, row: Mapping[str, float | int]) -> None:
        """Append ``row`` (main process only)."""
        if not if_main_process():
            return
        if not self._checked:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._cut_torn_line()
            self._checked = True
        clean = {k: v if math.isfinite(v) else None for k, v in row.items()}
        with open(self.path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps(clean) + "\n")
            stream.flush()


def read_step_log(path: str | os.PathLike) -> list[dict[str, float]]:
    """The rows of a :class:`StepLog` (``null`` read as NaN). A torn last line (a killed run) is
    skipped with a warning; any other unreadable line is an error naming the file and line.
    When a resumed run logged a step again, its later row replaces the earlier one.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "steps.jsonl"
    >>> _ = path.write_text('{"step": 1, "loss": 3.0}\\n{"step": 2, "loss": 2.0}\\n{"step": 2, "lo')
    >>> read_step_log(path)
    [{'step': 1, 'loss': 3.0}, {'step': 2, 'loss': 2.0}]
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    torn = lines.pop()  # "" when the file ends with a newline
    if torn:
        logger.warning("%s: skipping a torn last line (killed run?): %r", path, torn[:80])
    rows: dict[int, dict[str, float]] = {}
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
            step = int(row["step"])
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: expected a JSON object with a step, "
                             f"got {line[:80]!r}") from error
        rows.pop(step, None)
        rows[step] = {k: float("nan") if v is None else v for k, v in row.items()}
    if not rows:
        raise ValueError(f"{path}: no step rows")
    return sorted(rows.values(), key=lambda row: row["step"])


SB_CHECKPOINT_OPTIONS = {"ckpt_interval_minutes": "ckpt_every_minutes",
                         "ckpt_interval_steps": "ckpt_every_steps"}


def refuse_sb_checkpoint_options(hparams: Mapping | None, run_opts: Any) -> None:
    """Refuse SpeechBrain's ``ckpt_interval_minutes`` / ``ckpt_interval_steps`` (command line
    or YAML) when set: :class:`RobustBrain` checkpoints with ``ckpt_every_minutes`` and
    ``ckpt_every_steps``, which may both be set.

    Example
    -------
    >>> refuse_sb_checkpoint_options({}, {"ckpt_interval_steps": 0})
    >>> refuse_sb_checkpoint_options({}, {"ckpt_interval_steps": 50})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: --ckpt_interval_steps is not used by this recipe: use --ckpt_every_steps=50 ...
    """
    options = dict(run_opts.items()) if run_opts is not None else {}
    for name, ours in SB_CHECKPOINT_OPTIONS.items():
        value = options.get(name) or (hparams or {}).get(name) or 0
        if float(value) != 0:
            raise ValueError(
                f"--{name} is not used by this recipe: use --{ours}={value} (checkpoints every "
                "ckpt_every_minutes minutes and every ckpt_every_steps optimizer steps; 0 turns "
                "either off)"
            )


class RobustBrain(GuardedBrain):
    """:class:`GuardedBrain` with time-and-step checkpoints, RNG checkpointing and a step log.

    Hyperparameters read (all required in the YAML): ``ckpt_every_minutes``,
    ``ckpt_every_steps``, ``num_checkpoints_to_keep``, ``log_interval`` (applied optimizer steps
    between rows of ``step_log``), ``step_log`` (a :class:`StepLog`) and ``tensorboard_logger``
    (a ``TensorboardLogger`` or ``null``). Subclasses add values to the step log with
    :meth:`extra_step_stats`.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        refuse_sb_checkpoint_options(kwargs.get("hparams"), kwargs.get("run_opts"))
        super().__init__(*args, **kwargs)
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("rng", RNGState())
        self._last_ckpt_step = 0
        self._last_log_time = time.perf_counter()

    def on_fit_start(self) -> None:
        """SpeechBrain's start, then count checkpoint intervals from the recovered step."""
        super().on_fit_start()
        self._last_ckpt_step = self.optimizer_step
        self._last_log_time = time.perf_counter()

    # ------------------------------------------------------------------ step log
    def on_fit_batch_end(
        self, batch: Any, outputs: Any, loss: torch.Tensor, should_step: bool
    ) -> None:
        """Every ``log_interval`` applied optimizer steps, write a row of the step log (and
        TensorBoard)."""
        if not (should_step and self.step_applied):
            return
        if self.optimizer_step % self.hparams.log_interval != 0:
            return
        now = time.perf_counter()
        stats = {"loss": float(loss.detach()), **self.extra_step_stats()}
        stats["lr"] = self.optimizer.param_groups[0]["lr"]
        stats["grad_norm"] = float(self.grad_norm)
        stats["seconds_per_step"] = (now - self._last_log_time) / self.hparams.log_interval
        if torch.cuda.is_available() and self.device_type == "cuda":
            stats["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        else:
            stats["peak_memory_gib"] = peak_rss_gib()
        stats["nonfinite_skipped"] = self.nonfinite_count
        self._last_log_time = now
        self.hparams.step_log.write({"step": self.optimizer_step, **stats})
        if self.hparams.tensorboard_logger is not None:
            self.hparams.tensorboard_logger.log_stats(
                stats_meta={"step": self.optimizer_step}, train_stats=stats
            )

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
