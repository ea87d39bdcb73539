"""Command line of the benchmarks.

``python -m summarymixing.benchmark [cell|encoder|all] [--device cpu|cuda] [--size ...]``
measures one mixing layer and/or a whole Conformer encoder (forward + backward, peak memory)
for SummaryMixing, SpeechBrain's regularMHA and PyTorch SDPA attention, prints a table and writes
``<out>/<level>_<device>_<size>.csv`` and ``.png``. ``--chunk-size C [--left-context N]``
measures them with Dynamic Chunk Training (streaming models), written as
``<level>_<device>_<size>_chunk<C>[_left<N>]``.

``python -m summarymixing.benchmark pretrain [--models SummaryMixing MHSA SDPA]
[--seconds 5 10 20 30 60 | --batch paper] ...`` benchmarks a full wav2vec 2.0 pre-training step
on utterances of given lengths or on a paper-like dynamic batch (360 s of 10-20.2 s segments),
with interleaved timing (median, min, spread) and a deterministic memory figure (see
``summarymixing.benchmark.pretrain``).

``python -m summarymixing.benchmark suite [--device cuda] [--quick]`` (``make benchmark
DEVICE=...``) runs every table: cell and encoder, then the pre-training step on the paper-like
batch (SummaryMixing, MHSA, SDPA; fp16 on CUDA, fp32 on the CPU; with the per-stage breakdown and,
on CUDA, the synchronisation audit), the same with activation checkpointing, and the growth with
utterance length (5 to 60 s). Model size: paper on CUDA, small on the CPU.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from summarymixing.benchmark.layers import SIZES, run, summarise
from summarymixing.benchmark.measure import (
    format_table,
    pin_cpu_allocator,
    plot_time_and_memory,
    write_csv,
)

logger = logging.getLogger(__name__)

DEFAULT_LENGTHS = [250, 500, 1000, 2000, 4000]
QUICK_LENGTHS = [250, 500, 1000]


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """Arguments of the cell / encoder benchmark."""
    parser = argparse.ArgumentParser(prog="python -m summarymixing.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("level", nargs="?", default="all", choices=["cell", "encoder", "all"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--size", choices=sorted(SIZES), default=None,
                        help="model dimensions (default: paper on CUDA, small on CPU)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help=f"numbers of frames (default {DEFAULT_LENGTHS})")
    parser.add_argument("--quick", action="store_true",
                        help=f"lengths {QUICK_LENGTHS} and one repeat: a first look")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per point (median)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="Dynamic Chunk Training chunk size in frames (default: full context)")
    parser.add_argument("--left-context", type=int, default=None,
                        help="chunks of left context with --chunk-size (default: all)")
    parser.add_argument("--out", type=Path, default=Path("results/benchmark"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark named on the command line."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if argv[:1] == ["pretrain"]:
        from summarymixing.benchmark import pretrain

        pretrain.main(argv[1:])
        return
    if argv[:1] == ["suite"]:
        run_suite(argv[1:])
        return
    arguments = parse_arguments(argv)
    device = torch.device(arguments.device)
    size = arguments.size or ("paper" if device.type == "cuda" else "small")
    lengths = arguments.lengths or (QUICK_LENGTHS if arguments.quick else DEFAULT_LENGTHS)
    repeats = 1 if arguments.quick else arguments.repeats
    if device.type == "cpu":
        pin_cpu_allocator()
    levels = ["cell", "encoder"] if arguments.level == "all" else [arguments.level]
    chunk, left = arguments.chunk_size, arguments.left_context
    suffix = "" if chunk is None else f"_chunk{chunk}" + ("" if left is None else f"_left{left}")
    for level in levels:
        rows = run(level, size, lengths, device, repeats, arguments.batch_size, chunk, left)
        stem = arguments.out / f"{level}_{device.type}_{size}{suffix}"
        write_csv(rows, stem.with_suffix(".csv"))
        chunking = "" if chunk is None else f", chunks of {chunk} frames, left context {left}"
        title = f"{level} ({size}: {SIZES[size]}), forward+backward{chunking}, {device.type}"
        plot_time_and_memory(rows, "frames", "frames (T)", title, stem.with_suffix(".png"))
        print(f"\n## {title}\n")
        print(format_table(rows, ["model", "frames", "seconds", "peak_mib"]))
        print("\n".join(["", *summarise(rows)]))
        print(f"\nwrote {stem}.csv and {stem}.png")


def run_suite(argv: list[str]) -> None:
    """Every table of the benchmark on one device (see the module docstring)."""
    from summarymixing.benchmark import pretrain

    parser = argparse.ArgumentParser(prog="python -m summarymixing.benchmark suite")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--quick", action="store_true", help="every table's --quick")
    parser.add_argument("--out", type=Path, default=Path("results/benchmark"))
    arguments = parser.parse_args(argv)
    cuda = torch.device(arguments.device).type == "cuda"
    common = ["--device", arguments.device, "--out", str(arguments.out)]
    common += ["--quick"] if arguments.quick else []
    step = [*common, "--models", "SummaryMixing", "MHSA", "SDPA",
            "--precision", "fp16" if cuda else "fp32"]
    main(["all", *common])
    pretrain.main([*step, "--batch", "paper", "--breakdown", *(["--sync-audit"] if cuda else [])])
    pretrain.main([*step, "--batch", "paper", "--activation-checkpointing"])
    pretrain.main([*step, "--seconds", *(["5", "10"] if arguments.quick else
                                         ["5", "10", "20", "30", "60"])])


if __name__ == "__main__":
    main()
