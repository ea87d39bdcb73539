"""Benchmark of one full wav2vec 2.0 pre-training step, SummaryMixing vs MHSA (vs SDPA).

A step is what the recipe does per optimizer update: filterbank front end, masked context
encoder, quantiser, negatives, contrastive + diversity loss, backward, gradient clipping and an
AdamW update. Both models are built from the classes the recipe's YAML uses, with its
regularisation, and differ only in ``attention_type`` (``MHSA``: SpeechBrain's regularMHA;
``SDPA``: PyTorch's fused ``scaled_dot_product_attention``). All models run on identical batches
(same waveforms, lengths and masks); their steps are timed interleaved in one process, after a
warm-up step, reporting median, minimum and spread (``max - min``); a ratio is flagged
"within noise" when the difference of the medians is smaller than the larger spread.

Memory is reported three ways: ``det_mib``, deterministic: ``saved_mib`` (bytes saved for
backward) + ``state_mib`` (parameters + gradients + AdamW state), see
``summarymixing.benchmark.measure``; ``peak_mib``, the growth of the resident set (CPU) or of the
allocated memory (CUDA) during one step; and on CUDA ``cuda_max_allocated_mib``, the allocator's
peak over one step (``max_memory_allocated``). Under ``--activation-checkpointing``
``saved_mib`` leaves out what checkpointed layers keep and recompute: a lower bound there.

Batches: ``--seconds 5 10 20 30 60`` gives ``--batch-size`` random utterances of each length
(the growth with length); ``--batch paper`` gives one dynamic batch as in the paper: segment
durations drawn uniformly in [10, 20.2] s (fixed seed), grouped by SpeechBrain's
``DynamicBatchSampler`` (70 buckets) into batches of at most ``--max-batch-seconds`` (360) s of
audio, padded and masked by the recipe's collate function; the fullest batch is measured.

``python -m summarymixing.benchmark pretrain [--device cuda] [--size paper|small|tiny]
[--models SummaryMixing MHSA SDPA] [--seconds 5 10 20 30 60 | --batch paper]
[--precision fp32|bf16|fp16] [--optimizer fused|foreach|forloop] [--repeats 5] [--warmup 1]
[--activation-checkpointing] [--breakdown] [--sync-audit] [--quick]`` prints a table and writes
``<out>/pretrain_<device>_<size>[_paperbatch][_<precision>][_<optimizer>][_ckpt].csv`` and
``.png`` (precision and optimizer named when not fp32 / fused), with ``--breakdown`` also
``..._stages.csv`` (seconds and bytes saved per stage of one step, see
``PretrainStep.breakdown``) and with ``--sync-audit`` (CUDA) ``..._syncs.csv`` (where a step makes
the host wait for the device, see ``PretrainStep.sync_audit``).
"""

from __future__ import annotations

import argparse
import logging
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from speechbrain.dataio.sampler import DynamicBatchSampler
from speechbrain.lobes.models.wav2vec import W2VTargetQuantiser, compute_mask
from speechbrain.nnet.losses import ContrastiveLoss

from summarymixing import ConformerEncoder
from summarymixing.benchmark.measure import (
    format_table,
    measure_side_by_side,
    pin_cpu_allocator,
    plot_time_and_memory,
    saved_tensor_bytes,
    seconds_of,
    training_state_bytes,
    wait_for,
    write_csv,
)
from summarymixing.w2v2 import FbankFrontEnd, W2V2Encoder
from summarymixing.w2v2.pretrain import (
    W2V2Pretrainer,
    mask_collate_fn,
    min_maskable_frames,
    w2v2_objectives,
)

logger = logging.getLogger(__name__)

SIZES = {  # paper: hparams/pretrain/summarymixing_w2v2.yaml
    "paper": {"d_model": 768, "d_ffn": 3072, "nhead": 8, "num_layers": 12, "latent_dim": 512},
    "small": {"d_model": 256, "d_ffn": 1024, "nhead": 4, "num_layers": 6, "latent_dim": 256},
    "tiny": {"d_model": 32, "d_ffn": 64, "nhead": 4, "num_layers": 2, "latent_dim": 32},
}
MODELS = {"SummaryMixing": "SummaryMixing", "MHSA": "regularMHA", "SDPA": "SDPA"}
PAPER_DURATIONS = (10.0, 20.2)  # seconds: the paper's VAD segments
PAPER_BATCH_SECONDS = 360.0  # seconds of audio per batch (hparams/pretrain/summarymixing_w2v2.yaml)


def build_w2v2_encoder(
    attention_type: str, size: str, activation_checkpointing: bool = False
) -> W2V2Encoder:
    """The recipe's encoder at ``size`` (``SIZES``) with the paper's regularisation (dropout
    0.1; layer drop left out: it is random).

    Example
    -------
    >>> build_w2v2_encoder("regularMHA", "small").num_hidden_states
    7
    """
    sizes = SIZES[size]
    d_model = sizes["d_model"]
    context = ConformerEncoder(
        sizes["num_layers"], d_model, sizes["d_ffn"], sizes["nhead"], dropout=0.1,
        attention_type=attention_type,
        summary_options={"local_proj_hid_dim": [d_model], "summary_hid_dim": [d_model]},
        output_hidden_states=True, activation_checkpointing=activation_checkpointing,
    )
    frontend = FbankFrontEnd(out_channels=[sizes["latent_dim"]] * 2)
    return W2V2Encoder(frontend, context, d_model, dropout_encoder_input=0.1)


def random_batch(
    seconds: float, batch_size: int, frontend: FbankFrontEnd, sample_rate: int = 16000
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``batch_size`` random utterances of ``seconds`` seconds, masked as in the paper (0.65 x 10
    frames): ``(wavs (B, S), wav_lens (B,), mask (B, T))``.

    Example
    -------
    >>> wavs, lens, mask = random_batch(2.0, 1, FbankFrontEnd(out_channels=[32, 32]))
    >>> wavs.shape, mask.shape
    (torch.Size([1, 32000]), torch.Size([1, 98]))
    """
    samples = int(seconds * sample_rate)
    frames = int(frontend.output_lengths(torch.tensor([samples]))[0])
    fewest = min_maskable_frames(0.65, 10)
    if frames < fewest:
        raise ValueError(f"expected utterances of at least {fewest} frames for span masking, "
                         f"got {seconds} s ({frames} frames)")
    mask = torch.as_tensor(compute_mask((batch_size, frames), [frames] * batch_size, 0.65, 10))
    return torch.randn(batch_size, samples), torch.ones(batch_size), mask


def paper_batch(
    frontend: FbankFrontEnd, max_batch_seconds: float = PAPER_BATCH_SECONDS,
    durations_range: tuple[float, float] = PAPER_DURATIONS, sample_rate: int = 16000,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fullest dynamic batch of a synthetic corpus like the paper's: 1000 segment durations
    uniform in ``durations_range`` (seeded), grouped by SpeechBrain's ``DynamicBatchSampler``
    (70 buckets, shuffled, random batch order); of its batches, the one holding the most audio,
    as random waveforms padded and masked (0.65 x 10 frames, the same count per row) by the
    recipe's collate function.

    Arguments
    ---------
    frontend : FbankFrontEnd
        Gives the number of latent frames per waveform (for the mask).
    max_batch_seconds : float
        Most seconds of audio per batch (the paper: 360).
    durations_range : tuple[float, float]
        Lowest and highest segment duration in seconds (the paper: 10 to 20.2).
    sample_rate : int
        Samples per second.
    seed : int
        Seed of the durations, the sampler and the waveforms.

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor, torch.Tensor]
        ``wavs (B, S)``, relative ``wav_lens (B,)``, ``mask (B, T)``.

    Example
    -------
    >>> wavs, lens, mask = paper_batch(FbankFrontEnd(out_channels=[32, 32]), 8.0, (2.0, 3.0))
    >>> wavs.shape[0] >= 2, float(lens.max()), wavs.shape[1] <= 3 * 16000, mask.shape[0]
    (True, 1.0, True, 3)
    """
    generator = torch.Generator().manual_seed(seed)
    low, high = durations_range
    durations = (low + (high - low) * torch.rand(1000, generator=generator)).tolist()
    sampler = DynamicBatchSampler(durations, max_batch_seconds, num_buckets=70, shuffle=True,
                                  batch_ordering="random", lengths_list=durations, seed=seed)
    # The fullest batch: the sampler's first may be a bucket's remainder, a fraction of the cap.
    indices = max(sampler, key=lambda batch: sum(durations[int(index)] for index in batch))
    samples = [{"id": str(index),
                "sig": torch.randn(int(durations[int(index)] * sample_rate), generator=generator)}
               for index in indices]
    wavs, wav_lens, mask = mask_collate_fn(frontend, 0.65, 10)(samples)
    return wavs, wav_lens, mask


AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
OPTIMIZERS = {"fused": {"fused": True}, "foreach": {"foreach": True},
              "forloop": {"foreach": False}}  # AdamW implementations
SYNC_WARNING = "called a synchronizing CUDA operation"  # PyTorch's sync debug mode warning
FORWARD_STAGES = {"front end": "encoder.frontend", "context encoder": "encoder.context",
                  "quantiser": "quantiser"}  # submodules timed apart in the breakdown


@dataclass
class PretrainStep:
    """One full pre-training step of ``model`` on a fixed batch, as the recipe's Brain runs it
    (forward and objectives under autocast, fp16 through a GradScaler, unscale, clip, step);
    calling it runs the step."""

    model: W2V2Pretrainer
    optimizer: torch.optim.Optimizer
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    loss_fn: ContrastiveLoss
    precision: str = "fp32"

    def __post_init__(self) -> None:
        self.device = self.batch[0].device
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def forward_loss(self) -> torch.Tensor:
        """The model and the objective (autocast in ``precision``): the loss."""
        dtype = AUTOCAST_DTYPES[self.precision]
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            outputs = self.model(*self.batch)
            return w2v2_objectives(outputs, self.loss_fn, 100, 0.1)["loss"]

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate the (scaled) loss."""
        self.scaler.scale(loss).backward()

    def update(self) -> None:
        """Unscale, clip at 100, AdamW step, clear the gradients."""
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 100.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self) -> None:
        """Forward, losses, backward, clipping, AdamW update."""
        self.backward(self.forward_loss())
        self.update()

    def settle(self, most: int = 30) -> None:
        """fp16: run steps until the GradScaler stops lowering its scale (the first steps of a
        run overflow and are skipped), so that the measured steps are applied ones."""
        for _ in range(most if self.scaler.is_enabled() else 0):
            scale = self.scaler.get_scale()
            self()
            if self.scaler.get_scale() == scale:
                return

    def deterministic_bytes(self) -> tuple[int, int]:
        """Runs one step and returns the bytes saved for backward during it (parameters
        excluded) and the bytes of parameters, gradients and optimizer state.

        Under activation checkpointing the saved bytes leave out what the checkpointed layers
        keep for recomputation and recompute in backward: a lower bound there."""
        saved = saved_tensor_bytes(self, self.model.parameters())
        return saved, training_state_bytes(self.model, self.optimizer)

    def breakdown(self) -> dict[str, dict[str, float]]:
        """Runs one step stage by stage, waiting for the device between stages: ``{stage:
        {"seconds", "saved_bytes"}}`` for the forward stages (``FORWARD_STAGES``, the rest of
        the model's forward as "masking, projections", the objective as "loss"), "backward"
        and "optimizer" (unscale, clip, step); saved bytes are those autograd keeps for
        backward from each forward stage (parameters excluded, each storage once)."""
        stages: dict[str, dict[str, float]] = {}
        current = ["loss"]
        started: dict[str, float] = {}
        parameters = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        seen: set[int] = set()

        def stage(name: str) -> dict[str, float]:
            return stages.setdefault(name, {"seconds": 0.0, "saved_bytes": 0})

        def enter(name: str) -> Callable:
            def hook(*_: Any) -> None:
                wait_for(self.device)
                stage(name)
                current.append(name)
                started[name] = time.perf_counter()
            return hook

        def leave(name: str) -> Callable:
            def hook(*_: Any) -> None:
                wait_for(self.device)
                stage(name)["seconds"] += time.perf_counter() - started[name]
                current.pop()
            return hook

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in parameters and storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                stage(current[-1])["saved_bytes"] += storage.nbytes()
            return tensor

        modules = {"masking, projections": self.model}
        modules.update((name, self.model.get_submodule(path))
                       for name, path in FORWARD_STAGES.items())
        handles = [hook for name, module in modules.items() for hook in (
            module.register_forward_pre_hook(enter(name)),
            module.register_forward_hook(leave(name)))]
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                wait_for(self.device)
                start = time.perf_counter()
                loss = self.forward_loss()
                wait_for(self.device)
                stage("loss")["seconds"] = time.perf_counter() - start
        finally:
            for handle in handles:
                handle.remove()
        for inner in FORWARD_STAGES:  # the model's own time is what its submodules leave
            stages["masking, projections"]["seconds"] -= stages[inner]["seconds"]
        stages["loss"]["seconds"] -= sum(
            stages[name]["seconds"] for name in ["masking, projections", *FORWARD_STAGES])
        stage("backward")["seconds"] = seconds_of(lambda: self.backward(loss), self.device)
        stage("optimizer")["seconds"] = seconds_of(self.update, self.device)
        return stages

    def sync_audit(self) -> Counter:
        """Runs one step on CUDA with PyTorch's synchronisation warnings on: ``{where: count}``
        of the operations that made the host wait for the device, ``where`` the innermost frame
        of this project or SpeechBrain (``file:line function``) that called them."""
        if self.device.type != "cuda":
            raise ValueError(f"the synchronisation audit needs a CUDA device, got {self.device}")
        found: Counter = Counter()

        def record(message: Any, category: Any, filename: str, lineno: int, *_: Any) -> None:
            if SYNC_WARNING not in str(message):  # e.g. the debug mode's own "prototype" note
                return
            stack = traceback.extract_stack()[:-1]
            ours = [frame for frame in stack if "summarymixing" in frame.filename
                    or "speechbrain" in frame.filename or "recipes" in frame.filename]
            frame = (ours or stack)[-1]
            found[f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"] += 1

        wait_for(self.device)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            torch.cuda.set_sync_debug_mode("warn")
            try:
                self()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return found


def pretrain_step(
    attention_type: str, size: str, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    device: torch.device, activation_checkpointing: bool = False, precision: str = "fp32",
    optimizer: str = "fused",
) -> PretrainStep:
    """One full pre-training step on ``batch`` (``(wavs, wav_lens, mask)``, e.g. from
    :func:`random_batch` or :func:`paper_batch`): paper objective, 100 negatives, dropout 0.1,
    autocast in ``precision`` (``AUTOCAST_DTYPES``), AdamW implementation ``optimizer``
    (``OPTIMIZERS``). As in the recipe, the waveforms go to ``device``, the lengths and the
    mask stay on the CPU, where the collate function makes them.

    Example
    -------
    >>> batch = random_batch(2.0, 1, FbankFrontEnd(out_channels=[32, 32]))
    >>> step = pretrain_step("SummaryMixing", "tiny", batch, torch.device("cpu"))
    >>> step()
    >>> saved, state = step.deterministic_bytes()
    >>> saved > 0, state > 4 * 4 * sum(p.numel() for p in step.model.parameters()) - 1
    (True, True)
    >>> sorted(step.breakdown())  # doctest: +NORMALIZE_WHITESPACE
    ['backward', 'context encoder', 'front end', 'loss', 'masking, projections', 'optimizer',
     'quantiser']
    """
    encoder = build_w2v2_encoder(attention_type, size, activation_checkpointing)
    latent_dim = encoder.frontend.out_dim
    model = W2V2Pretrainer(encoder, W2VTargetQuantiser(latent_dim, 256), 256).to(device).train()
    adamw = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05, eps=1e-6,
                              **OPTIMIZERS[optimizer])
    wavs, wav_lens, mask = batch
    return PretrainStep(model, adamw, (wavs.to(device), wav_lens, mask), ContrastiveLoss(0.1),
                        precision)


@dataclass
class Settings:
    """How every model's step is built and measured (see the module docstring)."""

    size: str
    device: torch.device
    repeats: int = 5
    warmup: int = 1
    activation_checkpointing: bool = False
    precision: str = "fp32"
    optimizer: str = "fused"
    breakdown: bool = False
    sync_audit: bool = False


@dataclass
class Measured:
    """Rows of one benchmark run: the models' steps, their per-stage breakdown and the host
    synchronisations found."""

    rows: list[dict]
    stages: list[dict]
    syncs: list[dict]

    def extend(self, other: Measured) -> None:
        """Append ``other``'s rows of each kind."""
        self.rows += other.rows
        self.stages += other.stages
        self.syncs += other.syncs


def measure_batch(
    models: list[str], batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    settings: Settings, seconds_audio: float,
) -> Measured:
    """Time (interleaved), resident-set peak, deterministic memory and, on CUDA, the allocator's
    peak of each model's step on the same ``batch``; with ``settings.breakdown`` the per-stage
    time and saved bytes, with ``settings.sync_audit`` (CUDA) the host synchronisations."""
    torch.manual_seed(0)
    steps = {name: pretrain_step(MODELS[name], settings.size, batch, settings.device,
                                 settings.activation_checkpointing, settings.precision,
                                 settings.optimizer)
             for name in models}
    for step in steps.values():
        step.settle()
    result = measure_side_by_side(steps, settings.device, settings.repeats, settings.warmup)
    measured = Measured([], [], [])
    for name, step in steps.items():
        result[name]["saved_bytes"], result[name]["state_bytes"] = step.deterministic_bytes()
        if settings.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(settings.device)
            step()
            result[name]["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(
                settings.device)
        measured.rows.append(_row(name, seconds_audio, batch[0].shape[0], result[name]))
        if settings.breakdown:
            measured.stages += [
                {"model": name, "seconds_audio": seconds_audio, "stage": stage,
                 "seconds": values["seconds"], "saved_mib": values["saved_bytes"] / 2**20}
                for stage, values in step.breakdown().items()]
        if settings.sync_audit:
            measured.syncs += [{"model": name, "seconds_audio": seconds_audio, "where": where,
                                "count": count} for where, count in step.sync_audit().items()]
    return measured


def _row(name: str, seconds_audio: float, batch_size: int, measured: dict[str, float]) -> dict:
    row = {"model": name, "seconds_audio": seconds_audio, "batch_size": batch_size,
           "seconds": measured["seconds"], "min_seconds": measured["min_seconds"],
           "spread_seconds": measured["spread_seconds"],
           "peak_mib": measured["peak_bytes"] / 2**20,
           "saved_mib": measured["saved_bytes"] / 2**20,
           "state_mib": measured["state_bytes"] / 2**20,
           "det_mib": (measured["saved_bytes"] + measured["state_bytes"]) / 2**20}
    if "cuda_max_allocated_bytes" in measured:
        row["cuda_max_allocated_mib"] = measured["cuda_max_allocated_bytes"] / 2**20
    return row


def run(settings: Settings, seconds_list: list[float], batch_size: int,
        models: list[str]) -> Measured:
    """Rows ``{model, seconds_audio, batch_size, seconds, min_seconds, spread_seconds, peak_mib,
    saved_mib, state_mib, det_mib[, cuda_max_allocated_mib]}`` per utterance length, the models
    side by side (``det_mib = saved_mib + state_mib``)."""
    frontend = build_w2v2_encoder("SummaryMixing", settings.size).frontend
    measured = Measured([], [], [])
    for seconds in seconds_list:
        torch.manual_seed(0)
        np.random.seed(0)
        batch = random_batch(seconds, batch_size, frontend)
        measured.extend(measure_batch(models, batch, settings, seconds * batch_size))
        logger.info("%s s done", seconds)
    return measured


def run_paper_batch(settings: Settings, models: list[str],
                    max_batch_seconds: float = PAPER_BATCH_SECONDS,
                    durations_range: tuple[float, float] = PAPER_DURATIONS) -> Measured:
    """Rows as :func:`run` for one paper-like batch (:func:`paper_batch`); ``seconds_audio`` is
    the total unpadded audio in the batch."""
    torch.manual_seed(0)
    np.random.seed(0)
    frontend = build_w2v2_encoder("SummaryMixing", settings.size).frontend
    batch = paper_batch(frontend, max_batch_seconds, durations_range)
    wavs, wav_lens, _ = batch
    audio = round(float(wav_lens.sum()) * wavs.shape[1] / 16000, 1)
    logger.info("paper batch: %d utterances, %.1f s of audio, padded to %.1f s",
                wavs.shape[0], audio, wavs.shape[1] / 16000)
    return measure_batch(models, batch, settings, audio)


def ratios(rows: list[dict]) -> list[str]:
    """``SummaryMixing / other`` time and memory ratios per utterance length, with "within
    noise" where the difference of the median times is smaller than the larger spread.

    Example
    -------
    >>> rows = [{"model": m, "seconds_audio": 5, "seconds": s, "spread_seconds": 0.2,
    ...          "peak_mib": 10.0, "det_mib": d} for m, s, d in
    ...         (("SummaryMixing", 1.0, 50.0), ("MHSA", 1.1, 100.0))]
    >>> print(*ratios(rows)[0].split(", "), sep="\\n")
    5 s: SummaryMixing/MHSA time 0.91x (within noise)
    deterministic memory 0.50x
    peak memory 1.00x
    """
    lines = []
    for seconds in dict.fromkeys(row["seconds_audio"] for row in rows):
        group = {row["model"]: row for row in rows if row["seconds_audio"] == seconds}
        if "SummaryMixing" not in group:
            continue
        ours = group["SummaryMixing"]
        for name, other in group.items():
            if name == "SummaryMixing":
                continue
            noisy = abs(ours["seconds"] - other["seconds"]) < max(
                ours["spread_seconds"], other["spread_seconds"])
            lines.append(
                f"{seconds:g} s: SummaryMixing/{name} time "
                f"{ours['seconds'] / other['seconds']:.2f}x{' (within noise)' if noisy else ''}, "
                f"deterministic memory {ours['det_mib'] / other['det_mib']:.2f}x, "
                f"peak memory {ours['peak_mib'] / other['peak_mib']:.2f}x")
    return lines


def main(argv: list[str]) -> None:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m summarymixing.benchmark pretrain",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--size", choices=sorted(SIZES), default=None,
                        help="model size (default: paper on CUDA, small on CPU)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS),
                        default=["SummaryMixing", "MHSA"])
    parser.add_argument("--seconds", type=float, nargs="+", default=None,
                        help="utterance lengths (default 5 10 20 30; --quick: 5)")
    parser.add_argument("--batch", choices=["paper"], default=None,
                        help="paper: one dynamic batch of 10-20.2 s segments instead of --seconds")
    parser.add_argument("--max-batch-seconds", type=float, default=PAPER_BATCH_SECONDS,
                        help="audio per paper-like batch")
    parser.add_argument("--segment-seconds", type=float, nargs=2, default=list(PAPER_DURATIONS),
                        metavar=("LOW", "HIGH"), help="segment durations of the paper-like batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model first")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--precision", choices=list(AUTOCAST_DTYPES), default="fp32",
                        help="autocast dtype of forward and objective (fp16: with a GradScaler)")
    parser.add_argument("--optimizer", choices=list(OPTIMIZERS), default="fused",
                        help="AdamW implementation")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time each stage of one step and count its saved bytes")
    parser.add_argument("--sync-audit", action="store_true",
                        help="CUDA: also list where one step makes the host wait for the device")
    parser.add_argument("--quick", action="store_true",
                        help="a first look: 5 s only (or a 45 s paper batch), 2 timed steps")
    parser.add_argument("--out", type=Path, default=Path("results/benchmark"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    settings = Settings(
        args.size or ("paper" if device.type == "cuda" else "small"), device,
        2 if args.quick else args.repeats, args.warmup, args.activation_checkpointing,
        args.precision, args.optimizer, args.breakdown, args.sync_audit)
    if device.type == "cpu":
        pin_cpu_allocator()
    variant = "".join([f"_{args.precision}" if args.precision != "fp32" else "",
                       f"_{args.optimizer}" if args.optimizer != "fused" else "",
                       "_ckpt" if args.activation_checkpointing else ""])
    if args.batch == "paper":
        max_batch_seconds = 45.0 if args.quick else args.max_batch_seconds
        measured = run_paper_batch(settings, args.models, max_batch_seconds,
                                   tuple(args.segment_seconds))
        stem = args.out / f"pretrain_{device.type}_{settings.size}_paperbatch{variant}"
        batch = f"paper-like batch of {measured.rows[0]['batch_size']} segments"
    else:
        seconds_list = args.seconds or ([5.0] if args.quick else [5.0, 10.0, 20.0, 30.0])
        measured = run(settings, seconds_list, args.batch_size, args.models)
        stem = args.out / f"pretrain_{device.type}_{settings.size}{variant}"
        batch = f"batch {args.batch_size}"
    title = (f"w2v2 pre-training step ({settings.size}, {args.precision}, {args.optimizer} AdamW"
             f"{', activation checkpointing' if args.activation_checkpointing else ''}), "
             f"{batch}, {device.type}")
    write_csv(measured.rows, stem.with_suffix(".csv"))
    plot_time_and_memory(measured.rows, "seconds_audio", "audio per batch (s)", title,
                         stem.with_suffix(".png"), memory_keys=("det_mib", "peak_mib"))
    print(f"\n## {title} ({settings.repeats} timed steps after {settings.warmup} warm-up)\n")
    print(format_table(measured.rows, list(measured.rows[0])))
    print("\n".join(["", *ratios(measured.rows)]))
    written = [stem.with_suffix(".csv"), stem.with_suffix(".png")]
    for name, rows in (("stages", measured.stages), ("syncs", measured.syncs)):
        if rows:
            path = stem.with_name(f"{stem.name}_{name}.csv")
            write_csv(rows, path)
            print(f"\n### {name}\n\n{format_table(rows, list(rows[0]))}")
            written.append(path)
    print(f"\nwrote {', '.join(str(path) for path in written)}")
