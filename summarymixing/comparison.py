"""SummaryMixing against MHSA in the layout of the paper's table: the report of ``make demo``
(``recipes/demo/run.py``) reads what each stage wrote, tabulates it and draws the plots.

Every number in the report is read from a stage's own output: the pre-training step log
(``train_steps.jsonl``, read with :func:`summarymixing.training.read_step_log`), the exported
encoder, the benchmark CSV and each downstream run's ``metrics.json``.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from summarymixing.benchmark.measure import format_table
from summarymixing.benchmark.pretrain import MODELS
from summarymixing.export import load_pretrained
from summarymixing.training import read_step_log

# The paper's table: its columns, in order.
COLUMNS = (
    "encoder params (M)",
    "pre-training s/step",
    "benchmark s/step",
    "benchmark peak MiB",
    "Welsh WER (%)",
    "SLURP scenario acc.",
    "IEMOCAP acc. (mean of folds)",
    "VoxCeleb EER",
)

def median_seconds_per_step(rows: Sequence[Mapping[str, float]], warmup_steps: int) -> float:
    """Median ``seconds_per_step`` after the first ``warmup_steps`` steps.

    Example
    -------
    >>> median_seconds_per_step([{"step": s, "seconds_per_step": s} for s in (1, 2, 3, 4)], 1)
    3
    """
    kept = [row["seconds_per_step"] for row in rows if row["step"] > warmup_steps]
    if not kept:
        raise ValueError(f"no step after the first {warmup_steps} to time")
    return statistics.median(kept)


def benchmark_at(path: Path, model: str, seconds: float) -> dict[str, float]:
    """The pre-training benchmark CSV row of ``model`` (an attention type) at the utterance
    length ``seconds``.

    Example
    -------
    >>> import tempfile
    >>> table = Path(tempfile.mkdtemp()) / "pretrain.csv"
    >>> rows = ["model,seconds_audio,seconds,peak_mib", "MHSA,20,2.5,900"]
    >>> _ = table.write_text(chr(10).join(rows))
    >>> benchmark_at(table, "regularMHA", 20.0)
    {'seconds': 2.5, 'peak_mib': 900.0}
    """
    name = {attention: label for label, attention in MODELS.items()}[model]
    with open(path, newline="") as stream:
        for row in csv.DictReader(stream):
            if row["model"] == name and float(row["seconds_audio"]) == seconds:
                return {"seconds": float(row["seconds"]), "peak_mib": float(row["peak_mib"])}
    raise ValueError(f"{path}: no row for model {model!r} at {seconds} s")


def collect(
    attention_type: str,
    pretrain_folder: Path,
    downstream_folders: Mapping[str, Path],
    benchmark_csv: Path,
    benchmark_seconds: float,
    warmup_steps: int,
) -> dict[str, float]:
    """One model's row of the report, read from its stages' outputs."""
    encoder = load_pretrained(pretrain_folder / "encoder")
    steps = read_step_log(pretrain_folder / "train_steps.jsonl")
    benchmark = benchmark_at(benchmark_csv, attention_type, benchmark_seconds)

    def test_metrics(task: str) -> dict:
        return json.loads((downstream_folders[task] / "metrics.json").read_text())

    values = (
        sum(p.numel() for p in encoder.parameters()) / 1e6,
        median_seconds_per_step(steps, warmup_steps),
        benchmark["seconds"],
        benchmark["peak_mib"],
        test_metrics("asr_commonvoice")["test"]["WER"],
        test_metrics("slurp")["test"]["scenario_accuracy"],
        test_metrics("iemocap")["mean"]["emo_accuracy"],
        test_metrics("voxceleb")["test"]["EER"],
    )
    return dict(zip(COLUMNS, values, strict=True))


def layer_weights(folder: Path) -> list[float]:
    """Learned layer weights of a downstream run (IEMOCAP: those of its first fold).

    Example
    -------
    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp())
    >>> (run / "fold_1").mkdir()
    >>> _ = (run / "metrics.json").write_text('{"mean": {}}')
    >>> _ = (run / "fold_1" / "metrics.json").write_text('{"layer_weights": [0.25, 0.75]}')
    >>> layer_weights(run)
    [0.25, 0.75]
    """
    metrics = json.loads((folder / "metrics.json").read_text())
    if "layer_weights" not in metrics:
        first_fold = sorted(folder.glob("fold_*"))[0]
        metrics = json.loads((first_fold / "metrics.json").read_text())
    return metrics["layer_weights"]


def markdown_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """Models as rows, the paper's columns; a last row gives SummaryMixing / MHSA ratios.

    Example
    -------
    >>> row = {title: 2.0 for title in COLUMNS}
    >>> table = markdown_table({"SummaryMixing": row, "regularMHA": row})
    >>> table.splitlines()[-1].startswith("| ratio SummaryMixing / regularMHA | 1.00 |")
    True
    """
    table = [{"model": model, **values} for model, values in rows.items()]
    models = list(rows)
    if len(models) == 2:
        mine, theirs = rows[models[0]], rows[models[1]]
        ratios = {t: f"{mine[t] / theirs[t] if theirs[t] else float('nan'):.2f}" for t in COLUMNS}
        table.append({"model": f"ratio {models[0]} / {models[1]}", **ratios})
    return format_table(table, ["model", *COLUMNS])


def plot_curves(step_logs: Mapping[str, Sequence[Mapping[str, float]]], path: Path) -> None:
    """Pre-training loss and contrastive accuracy against step, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for model, rows in step_logs.items():
        steps = [row["step"] for row in rows]
        for axis, key in zip(axes, ("contrastive_per_frame", "accuracy"), strict=True):
            axis.plot(steps, [row[key] for row in rows], label=model)
    for axis, label in zip(axes, ("contrastive loss per masked frame", "contrastive accuracy"),
                           strict=True):
        axis.set_xlabel("optimizer step")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.suptitle("Mini pre-training on LibriLight (same seed and budget)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_layer_weights(weights: Mapping[str, Mapping[str, Sequence[float]]], path: Path) -> None:
    """Learned layer weights, one panel per task, bars per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(weights)
    figure, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.2), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        models = list(weights[task])
        width = 0.8 / len(models)
        for index, model in enumerate(models):
            values = weights[task][model]
            positions = [layer + index * width for layer in range(len(values))]
            axis.bar(positions, values, width=width, label=model)
        axis.set_title(task)
        axis.set_xlabel("hidden state (0 = input embeddings)")
        axis.set_ylabel("weight")
    axes[0][0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
