#!/usr/bin/env python3
"""``make demo``: the paper's experiment in miniature, SummaryMixing against MHSA side by side.

Run from the repository root (``make demo`` does)::

    python recipes/demo/run.py hparams/demo/demo.yaml [--device=cuda] [--output_folder=DIR]

Stages (see ``hparams/demo/demo.yaml``): build the mini corpora; pre-train both models with the
pre-training recipe; run the four downstream recipes on both exported encoders; benchmark a
pre-training step against utterance length; write ``report.md``, ``report.json`` and the plots.
Each recipe runs as its own process, exactly as a user would start it, with its output in
``<output_folder>/<stage>/<model>/run.log``. Each run's ``demo_stage.json`` holds its command
and the fingerprints of its inputs (a downstream run's encoder): running the demo again reuses
a finished run with the same ones, resumes an interrupted one from its last checkpoint, and
redoes from scratch a run whose command or inputs changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import speechbrain as sb
import torch
import yaml
from hyperpyyaml import load_hyperpyyaml

from data_prep.files import atomic_write_text
from data_prep.mini import build_mini_corpora
from summarymixing import comparison
from summarymixing.training import read_step_log

logger = logging.getLogger(__name__)

REPOSITORY = Path(__file__).resolve().parents[2]

STAGE_MARKER = "demo_stage.json"


class StageError(RuntimeError):
    """A stage's process failed; the message holds the end of its log."""


def as_argument(key: str, value: object) -> str:
    """A SpeechBrain command-line override ``--key=value`` (YAML flow syntax for values).

    Example
    -------
    >>> as_argument("folds", [1, 2])
    '--folds=[1, 2]'
    """
    text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True)
    return f"--{key}={text.strip().removesuffix('...').strip()}"


def fingerprint(path: Path) -> str:
    """SHA-256 of a file's bytes.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "a.txt"
    >>> _ = path.write_text("a")
    >>> fingerprint(path)[:12]
    'ca978112ca1b'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_marker(marker: Path, identity: dict, finished: bool) -> None:
    atomic_write_text(marker, json.dumps({**identity, "finished": finished}, indent=1))


def run_stage(name: str, command: list[str], folder: Path, inputs: tuple[Path, ...] = ()) -> None:
    """Run ``command`` (cwd: the repository root), logging to ``folder/run.log``.

    The run is identified by its command and the fingerprints of its ``inputs``: a finished
    run with the same identity is reused; an unfinished one resumes (the recipes recover their
    last checkpoint); a run with another identity starts again in an emptied ``folder``.
    """
    identity = {"command": command, "inputs": {str(p): fingerprint(p) for p in inputs}}
    marker = folder / STAGE_MARKER
    previous = json.loads(marker.read_text()) if marker.exists() else None
    same = previous is not None and previous["command"] == command and (
        previous["inputs"] == identity["inputs"])
    if same and previous["finished"]:
        logger.info("  reuse  %s (finished earlier: %s)", name, folder)
        return
    if same:
        logger.info("  resume %s (unfinished earlier)", name)
    elif folder.exists():
        shutil.rmtree(folder)  # settings or inputs changed: nothing in it is valid any more
    folder.mkdir(parents=True, exist_ok=True)
    _write_marker(marker, identity, finished=False)
    log_path = folder / "run.log"
    logger.info("  run    %s (log: %s)", name, log_path)
    start = time.perf_counter()
    with open(log_path, "a", encoding="utf-8") as log:
        finished = subprocess.run(command, cwd=REPOSITORY, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, check=False)
    if finished.returncode != 0:
        tail = "\n".join(log_path.read_text(encoding="utf-8").splitlines()[-25:])
        raise StageError(f"{name} failed (exit {finished.returncode}); end of {log_path}:\n{tail}")
    _write_marker(marker, identity, finished=True)
    logger.info("  done   %s in %.0f s", name, time.perf_counter() - start)


def recipe_command(script: str, hparams_file: str, arguments: dict) -> list[str]:
    """``python <script> <hparams_file> --key=value ...``.

    Example
    -------
    >>> recipe_command("recipes/slurp/train.py", "hparams/slurp/mini.yaml", {"seed": 3})[1:]
    ['recipes/slurp/train.py', 'hparams/slurp/mini.yaml', '--seed=3']
    """
    return [sys.executable, script, hparams_file,
            *(as_argument(key, value) for key, value in arguments.items())]


def run_demo(hparams: dict, device: str) -> dict:
    """Run every stage; return the report's rows ``{attention_type: {column: value}}``."""
    out = Path(hparams["output_folder"])
    corpora = Path(hparams["corpora_folder"])
    models = hparams["attention_types"]
    tasks = hparams["downstream"]
    total = 2 + len(models) * (1 + len(tasks))
    done = 0

    def progress(what: str) -> None:
        logger.info("[%d/%d] %s", done + 1, total, what)

    progress(f"mini corpora in {corpora}")
    if (corpora / "ground_truth.json").exists():
        logger.info("  reuse  mini corpora (built earlier)")
    else:
        build_mini_corpora(corpora, seed=hparams["corpora_seed"])
    done += 1

    common = {"seed": hparams["seed"], "device": device}
    for attention_type in models:
        progress(f"pre-training {attention_type}")
        arguments = {
            "data_folder": str(corpora / "librilight"),
            "valid_folder": str(corpora / "LibriSpeech" / "dev-clean"),
            "output_folder": str(out / "pretrain" / attention_type),
            "attention_type": attention_type, **common, **hparams["pretrain_overrides"],
        }
        run_stage(f"pre-training {attention_type}",
                  recipe_command("recipes/pretrain/train.py", hparams["pretrain_hparams"],
                                 arguments), out / "pretrain" / attention_type)
        done += 1

    for task, config in tasks.items():
        for attention_type in models:
            progress(f"{task} with the {attention_type} encoder")
            arguments = {
                "data_folder": str(corpora / config["corpus"]),
                "pretrained_path": str(out / "pretrain" / attention_type / "encoder"),
                "output_folder": str(out / task / attention_type), **common,
                **config["overrides"],
            }
            weights = Path(arguments["pretrained_path"]) / "encoder.ckpt"
            run_stage(f"{task} ({attention_type})",
                      recipe_command(f"recipes/{task}/train.py", config["hparams"], arguments),
                      out / task / attention_type, inputs=(weights,))
            done += 1

    progress("pre-training step benchmark")
    benchmark_folder = out / "benchmark"
    run_stage("benchmark", [
        sys.executable, "-m", "summarymixing.benchmark", "pretrain", "--device", device,
        "--size", hparams["benchmark_size"], "--repeats", str(hparams["benchmark_repeats"]),
        "--seconds", *(str(s) for s in hparams["benchmark_seconds"]),
        "--out", str(benchmark_folder),
    ], benchmark_folder)
    benchmark_stem = f"pretrain_{torch.device(device).type}_{hparams['benchmark_size']}"

    rows = {
        attention_type: comparison.collect(
            attention_type, out / "pretrain" / attention_type,
            {task: out / task / attention_type for task in tasks},
            benchmark_folder / f"{benchmark_stem}.csv", max(hparams["benchmark_seconds"]),
            hparams["timing_warmup_steps"],
        )
        for attention_type in models
    }
    write_report(hparams, rows, benchmark_folder / f"{benchmark_stem}.png")
    return rows


def write_report(hparams: dict, rows: dict, benchmark_plot: Path) -> None:
    """``report.md`` (table + plots), ``report.json`` (the same numbers) and the PNGs."""
    out = Path(hparams["output_folder"])
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    models, tasks = hparams["attention_types"], list(hparams["downstream"])
    comparison.plot_curves(
        {m: read_step_log(out / "pretrain" / m / "train_steps.jsonl") for m in models},
        plots / "pretraining_curves.png",
    )
    comparison.plot_layer_weights(
        {t: {m: comparison.layer_weights(out / t / m) for m in models} for t in tasks},
        plots / "layer_weights.png",
    )
    shutil.copyfile(benchmark_plot, plots / "benchmark_pretraining_step.png")
    table = comparison.markdown_table(rows)
    longest = max(hparams["benchmark_seconds"])
    text = "\n".join([
        "# SummaryMixing wav2vec 2.0 vs MHSA: the demo in miniature", "",
        "Mini corpora (eSpeak NG speech in the real corpus formats); both models pre-trained "
        "with the same YAML, seed and budget, differing only in `attention_type`; downstream "
        "heads on the frozen encoders' weighted layers.", "",
        table, "",
        "- encoder params: exported encoder (front end + context encoder);",
        "- pre-training s/step: median seconds per optimizer step of the demo's run "
        f"(first {hparams['timing_warmup_steps']} steps left out);",
        f"- benchmark s/step and peak MiB: `python -m summarymixing.benchmark pretrain`, "
        f"{hparams['benchmark_size']} model, {longest} s utterances, both models side by side;",
        "- Welsh WER: greedy CTC decoding; SLURP scenario accuracy is the paper-comparable "
        "number (MP3S); IEMOCAP: mean over the leave-two-speakers-out folds run (MP3S).",
        "", "![pre-training curves](plots/pretraining_curves.png)",
        "", "![pre-training step benchmark](plots/benchmark_pretraining_step.png)",
        "", "![learned layer weights](plots/layer_weights.png)", "",
    ])
    report_file = Path(hparams["report_file"])
    atomic_write_text(report_file, text)
    atomic_write_text(report_file.with_suffix(".json"), json.dumps(rows, indent=1))
    print(f"\n{table}\n\nreport: {report_file}")


def main(argv: list[str] | None = None) -> dict:
    """Parse ``hparams_file [--device=...] [--key=value ...]`` and run the demo."""
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    with open(hparams_file, encoding="utf-8") as stream:
        hparams = load_hyperpyyaml(stream, overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    start = time.perf_counter()
    rows = run_demo(hparams, run_opts["device"] or "cpu")
    logger.info("demo finished in %.0f s", time.perf_counter() - start)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
