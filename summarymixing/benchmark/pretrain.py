"""Benchmark of one full wav2vec 2.0 pre-training step, SummaryMixing vs MHSA.

A step is what the recipe does per optimizer update: filterbank front end, masked context
encoder, quantiser, negatives, contrastive + diversity loss, backward, gradient clipping and an
AdamW update. Both models are built from the classes the recipe's YAML uses, with its
regularisation, and differ only in ``attention_type``; their steps are timed interleaved in one
run.

``python -m summarymixing.benchmark pretrain [--device cuda] [--size paper|small]
[--seconds 5 10 20 30] [--activation-checkpointing]`` prints a table and writes
``<out>/pretrain_<device>_<size>.csv`` and ``.png``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from speechbrain.lobes.models.wav2vec import W2VTargetQuantiser, compute_mask
from speechbrain.nnet.losses import ContrastiveLoss

from summarymixing import ConformerEncoder
from summarymixing.benchmark.measure import (
    format_table,
    measure_side_by_side,
    pin_cpu_allocator,
    plot_time_and_memory,
    write_csv,
)
from summarymixing.w2v2 import FbankFrontEnd, W2V2Encoder
from summarymixing.w2v2.pretrain import W2V2Pretrainer, min_maskable_frames, w2v2_objectives

logger = logging.getLogger(__name__)

SIZES = {  # paper: hparams/pretrain/summarymixing_w2v2.yaml
    "paper": {"d_model": 768, "d_ffn": 3072, "nhead": 8, "num_layers": 12, "latent_dim": 512},
    "small": {"d_model": 256, "d_ffn": 1024, "nhead": 4, "num_layers": 6, "latent_dim": 256},
}
MODELS = {"SummaryMixing": "SummaryMixing", "MHSA": "regularMHA"}


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


def pretrain_step(
    attention_type: str, size: str, seconds: float, batch_size: int, device: torch.device,
    activation_checkpointing: bool = False, sample_rate: int = 16000,
) -> Callable[[], None]:
    """A callable running one full pre-training step on ``batch_size`` random utterances of
    ``seconds`` seconds (paper objective: 100 negatives, mask 0.65 x 10 frames; dropout 0.1).

    Example
    -------
    >>> step = pretrain_step("SummaryMixing", "small", 2.0, 1, torch.device("cpu"))
    >>> step()
    """
    encoder = build_w2v2_encoder(attention_type, size, activation_checkpointing)
    latent_dim = encoder.frontend.out_dim
    model = W2V2Pretrainer(encoder, W2VTargetQuantiser(latent_dim, 256), 256).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05, eps=1e-6)
    loss_fn = ContrastiveLoss(0.1)
    samples = int(seconds * sample_rate)
    wavs = torch.randn(batch_size, samples, device=device)
    wav_lens = torch.ones(batch_size, device=device)
    frames = int(encoder.frontend.output_lengths(torch.tensor([samples]))[0])
    fewest = min_maskable_frames(0.65, 10)
    if frames < fewest:
        raise ValueError(f"expected utterances of at least {fewest} frames for span masking, "
                         f"got {seconds} s ({frames} frames)")
    mask = torch.as_tensor(compute_mask((batch_size, frames), [frames] * batch_size, 0.65, 10),
                           device=device)

    def step() -> None:
        outputs = model(wavs, wav_lens, mask)
        loss = w2v2_objectives(outputs, loss_fn, 100, 0.1)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def run(size: str, seconds_list: list[float], device: torch.device, repeats: int,
        batch_size: int, activation_checkpointing: bool) -> list[dict]:
    """Rows ``{model, seconds_audio, seconds, peak_mib}``, both models measured side by side."""
    rows = []
    for seconds in seconds_list:
        torch.manual_seed(0)
        np.random.seed(0)
        steps = {
            name: pretrain_step(kind, size, seconds, batch_size, device, activation_checkpointing)
            for name, kind in MODELS.items()
        }
        result = measure_side_by_side(steps, device, repeats)
        for name in MODELS:
            rows.append({"model": name, "seconds_audio": seconds,
                         "seconds": result[name]["seconds"],
                         "peak_mib": result[name]["peak_bytes"] / 2**20})
        logger.info("%s s done", seconds)
    return rows


def ratios(rows: list[dict]) -> list[str]:
    """``SummaryMixing / MHSA`` time and memory ratios per utterance length."""
    lines = []
    for seconds in dict.fromkeys(row["seconds_audio"] for row in rows):
        pair = {row["model"]: row for row in rows if row["seconds_audio"] == seconds}
        time_ratio = pair["SummaryMixing"]["seconds"] / pair["MHSA"]["seconds"]
        memory_ratio = pair["SummaryMixing"]["peak_mib"] / pair["MHSA"]["peak_mib"]
        lines.append(f"{seconds:g} s: SummaryMixing/MHSA time {time_ratio:.2f}x, "
                     f"peak memory {memory_ratio:.2f}x")
    return lines


def main(argv: list[str]) -> None:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m summarymixing.benchmark pretrain",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--size", choices=sorted(SIZES), default=None,
                        help="model size (default: paper on CUDA, small on CPU)")
    parser.add_argument("--seconds", type=float, nargs="+", default=[5, 10, 20, 30])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("results/benchmark"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    size = args.size or ("paper" if device.type == "cuda" else "small")
    if device.type == "cpu":
        pin_cpu_allocator()
    rows = run(size, args.seconds, device, args.repeats, args.batch_size,
               args.activation_checkpointing)
    suffix = "_ckpt" if args.activation_checkpointing else ""
    stem = args.out / f"pretrain_{device.type}_{size}{suffix}"
    write_csv(rows, stem.with_suffix(".csv"))
    title = f"w2v2 pre-training step ({size}{suffix}), batch {args.batch_size}, {device.type}"
    plot_time_and_memory(rows, "seconds_audio", "utterance length (s)", title,
                         stem.with_suffix(".png"))
    print(f"\n## {title}\n")
    print(format_table(rows, ["model", "seconds_audio", "seconds", "peak_mib"]))
    print("\n".join(["", *ratios(rows)]))
    print(f"\nwrote {stem}.csv and {stem}.png")
