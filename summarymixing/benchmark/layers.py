"""Benchmark of one mixing layer and of a whole encoder: SummaryMixing vs SpeechBrain's
``regularMHA`` vs PyTorch's ``scaled_dot_product_attention``, forward + backward, against the
number of frames ``T``.

With a chunk size (Dynamic Chunk Training, as in streaming models), every mixer sees only its
chunk and the left context: SummaryMixing through its ``O(T)`` chunked summaries, attention
through SpeechBrain's ``(T, T)`` chunk mask (built once per length, outside the timed step).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from speechbrain.lobes.models.transformer.TransformerASR import make_transformer_src_mask
from speechbrain.nnet.activations import Swish
from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig
from torch import nn

from summarymixing.benchmark.measure import measure_side_by_side
from summarymixing.cell import SummaryMixing
from summarymixing.encoders import ConformerEncoder
from summarymixing.mixers import build_mixer

logger = logging.getLogger(__name__)

MIXERS = ("SummaryMixing", "regularMHA", "SDPA")


@dataclass(frozen=True)
class ModelSize:
    """Encoder dimensions; ``paper`` is the SummaryMixing w2v2 context encoder."""

    d_model: int
    d_ffn: int
    nhead: int
    num_layers: int


SIZES = {
    "tiny": ModelSize(d_model=32, d_ffn=64, nhead=4, num_layers=2),
    "small": ModelSize(d_model=256, d_ffn=1024, nhead=4, num_layers=12),
    "paper": ModelSize(d_model=768, d_ffn=3072, nhead=8, num_layers=12),
}


def build_cell(mixer: str, size: ModelSize) -> nn.Module:
    """One mixing layer of the given type (SummaryMixing with hidden sizes ``[d_model]`` and the
    Conformer's Swish activation, as inside the paper's encoder).

    Example
    -------
    >>> type(build_cell("SDPA", SIZES["tiny"])).__name__
    'MultiheadSDPA'
    """
    return build_mixer(
        mixer, size.d_model, size.nhead, activation=Swish,
        summary_options={"local_proj_hid_dim": [size.d_model], "summary_hid_dim": [size.d_model]},
    )


def build_encoder(mixer: str, size: ModelSize) -> nn.Module:
    """A Conformer encoder of the given size with the given mixer.

    Example
    -------
    >>> len(build_encoder("SummaryMixing", SIZES["tiny"]).layers)
    2
    """
    return ConformerEncoder(
        size.num_layers, size.d_model, size.d_ffn, size.nhead, attention_type=mixer,
        summary_options={"local_proj_hid_dim": [size.d_model], "summary_hid_dim": [size.d_model]},
    )


def training_step(
    model: nn.Module, inputs: torch.Tensor, chunks: DynChunkTrainConfig | None = None
) -> Callable[[], None]:
    """A forward + backward pass of ``model`` on ``inputs`` ``(B, T, D)``, as a callable;
    ``chunks``: Dynamic Chunk Training (chunked summaries or SpeechBrain's chunk mask)."""
    if not _is_mixer(model):
        def run_model() -> torch.Tensor:
            return model(inputs, dynchunktrain_config=chunks)[0]
    elif chunks is None:
        def run_model() -> torch.Tensor:
            return model(inputs, inputs, inputs)[0]
    elif isinstance(model, SummaryMixing):
        def run_model() -> torch.Tensor:
            return model(inputs, dynchunktrain_config=chunks)[0]
    else:
        mask = make_transformer_src_mask(inputs, dynchunktrain_config=chunks)  # (T, T)

        def run_model() -> torch.Tensor:
            return model(inputs, inputs, inputs, attn_mask=mask)[0]

    def step() -> None:
        run_model().float().pow(2).mean().backward()

    return step


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


def _is_mixer(model: nn.Module) -> bool:
    return not hasattr(model, "layers")


def run(
    level: str,
    size_name: str,
    lengths: list[int],
    device: torch.device,
    repeats: int,
    batch_size: int = 1,
    chunk_size: int | None = None,
    left_context_chunks: int | None = None,
) -> list[dict]:
    """Measure every mixer at every length; one row per (mixer, length).

    Arguments
    ---------
    level : str
        ``"cell"`` (one mixing layer) or ``"encoder"`` (a Conformer encoder).
    size_name : str
        A key of ``SIZES``.
    lengths : list of int
        Numbers of frames.
    device : torch.device
        Where to run.
    repeats : int
        Timed steps per point (median).
    batch_size : int
        Utterances per step.
    chunk_size : int, optional
        Dynamic Chunk Training chunk size in frames (``None``: full context).
    left_context_chunks : int, optional
        Chunks of left context with ``chunk_size`` (``None``: all).

    Returns
    -------
    list of dict
        ``level, size, device, model, frames, chunk_size, left_context_chunks, seconds,
        peak_mib`` per row.

    Example
    -------
    >>> rows = run("cell", "tiny", [8], torch.device("cpu"), repeats=1)
    >>> [row["model"] for row in rows]
    ['SummaryMixing', 'regularMHA', 'SDPA']
    >>> run("encoder", "tiny", [8], torch.device("cpu"), 1, chunk_size=4)[0]["chunk_size"]
    4
    """
    if level not in ("cell", "encoder"):
        raise ValueError(f"expected level 'cell' or 'encoder', got {level!r}")
    if chunk_size is None and left_context_chunks is not None:
        raise ValueError("expected a chunk size with a left context, got none")
    chunks = None if chunk_size is None else DynChunkTrainConfig(chunk_size, left_context_chunks)
    size = SIZES[size_name]
    build = build_cell if level == "cell" else build_encoder
    torch.manual_seed(0)
    models = {mixer: build(mixer, size).to(device).train() for mixer in MIXERS}
    rows = []
    for frames in lengths:
        logger.info("%s benchmark: %d frames", level, frames)
        inputs = torch.randn(batch_size, frames, size.d_model, device=device)
        steps = {mixer: training_step(model, inputs, chunks) for mixer, model in models.items()}
        results = measure_side_by_side(steps, device, repeats)
        for mixer, result in results.items():
            rows.append({
                "level": level, "size": size_name, "device": device.type, "model": mixer,
                "frames": frames, "chunk_size": chunk_size,
                "left_context_chunks": left_context_chunks, "seconds": result["seconds"],
                "peak_mib": result["peak_bytes"] / 2**20,
            })
        for model in models.values():
            model.zero_grad(set_to_none=True)
    return rows


def summarise(rows: list[dict]) -> list[str]:
    """Lines stating the scaling of SummaryMixing and its speed / memory ratios to the others.

    Example
    -------
    >>> rows = [{"model": m, "frames": t, "seconds": s * t, "peak_mib": 1.0}
    ...         for m, s in (("SummaryMixing", 1.0), ("regularMHA", 4.0)) for t in (1000, 4000)]
    >>> summarise(rows)[0]
    'SummaryMixing t(4000)/t(1000) = 4.00 (linear scaling: 4.0)'
    """
    by_key = {(row["model"], row["frames"]): row for row in rows}
    lengths = sorted({row["frames"] for row in rows})
    lines = []
    if ("SummaryMixing", 1000) in by_key and ("SummaryMixing", 4000) in by_key:
        ratio = by_key["SummaryMixing", 4000]["seconds"] / by_key["SummaryMixing", 1000]["seconds"]
        lines.append(f"SummaryMixing t(4000)/t(1000) = {ratio:.2f} (linear scaling: 4.0)")
    for other in sorted({row["model"] for row in rows} - {"SummaryMixing"}):
        for frames in lengths:
            mine, theirs = by_key.get(("SummaryMixing", frames)), by_key.get((other, frames))
            if mine and theirs:
                memory_ratio = _ratio(mine["peak_mib"], theirs["peak_mib"])
                lines.append(
                    f"T={frames}: SummaryMixing is {theirs['seconds'] / mine['seconds']:.2f}x "
                    f"faster than {other} and uses {memory_ratio:.2f}x its peak memory"
                )
    return lines
