"""A smoke version of `make demo` (few steps): the report holds every row and column, and its
numbers are the ones the stages wrote."""

import json
import sys

import pytest

from recipes.demo.run import StageError, as_argument, main, run_stage
from summarymixing import comparison

MODELS = ["SummaryMixing", "regularMHA"]
SMOKE = {
    "pretrain_overrides": {"optimizer_step_limit": 6, "warmup": 1, "cooldown": 5,
                           "ckpt_every_steps": 3},
    "timing_warmup_steps": 1,
    "downstream": {
        "asr_commonvoice": {"hparams": "hparams/asr_commonvoice/mini.yaml",
                            "corpus": "cv-corpus-mini/cy", "overrides": {"number_of_epochs": 1}},
        "slurp": {"hparams": "hparams/slurp/mini.yaml", "corpus": "slurp",
                  "overrides": {"number_of_epochs": 1}},
        "iemocap": {"hparams": "hparams/iemocap/mini.yaml", "corpus": "IEMOCAP_full_release",
                    "overrides": {"number_of_epochs": 1, "folds": [1]}},
        "voxceleb": {"hparams": "hparams/voxceleb/mini.yaml", "corpus": "voxceleb1",
                     "overrides": {"number_of_epochs": 1}},
    },
    "benchmark_seconds": [3.0],
    "benchmark_repeats": 1,
}


@pytest.fixture(scope="module")
def demo(mini_corpora, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    argv = ["hparams/demo/demo.yaml", f"--output_folder={out}",
            f"--corpora_folder={mini_corpora}",
            *(as_argument(key, value) for key, value in SMOKE.items())]
    rows = main(argv)
    return out, rows, argv


def test_report_holds_every_row_and_column(demo):
    out, rows, _ = demo
    text = (out / "report.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table[1:]] == [
        "| SummaryMixing", "| regularMHA", "| ratio SummaryMixing / regularMHA"]
    for title in comparison.COLUMNS:
        assert title in table[0]
    assert json.loads((out / "report.json").read_text()) == rows
    for model in MODELS:
        row = next(line for line in table if line.startswith(f"| {model} |"))
        assert row == f"| {model} | " + " | ".join(
            f"{rows[model][title]:.4g}" for title in comparison.COLUMNS) + " |"
    for plot in ("pretraining_curves", "layer_weights", "benchmark_pretraining_step"):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 0


def test_report_numbers_are_the_stages_numbers(demo):
    out, rows, _ = demo

    def metrics(task, model):
        return json.loads((out / task / model / "metrics.json").read_text())

    for model in MODELS:
        row = rows[model]
        assert row["Welsh WER (%)"] == metrics("asr_commonvoice", model)["test"]["WER"]
        assert row["SLURP scenario acc."] == metrics("slurp", model)["test"]["scenario_accuracy"]
        assert row["IEMOCAP acc. (mean of folds)"] == metrics("iemocap", model)["mean"][
            "emo_accuracy"]
        assert row["VoxCeleb EER"] == metrics("voxceleb", model)["test"]["EER"]
        log = (out / "pretrain" / model / "train_steps.jsonl").read_text().splitlines()
        steps = [json.loads(line) for line in log]
        assert [step["step"] for step in steps] == [1, 2, 3, 4, 5, 6]
        learning_rates = [step["lr"] for step in steps]
        assert min(learning_rates) >= 0.0 and learning_rates[-1] == 0.0, learning_rates
        assert row["pre-training s/step"] == pytest.approx(
            sorted(step["seconds_per_step"] for step in steps[1:])[2])
    assert rows["SummaryMixing"]["encoder params (M)"] < rows["regularMHA"]["encoder params (M)"]


def test_second_run_reuses_every_finished_stage(demo):
    out, rows, argv = demo
    logs = sorted(out.glob("*/*/run.log")) + [out / "benchmark" / "run.log"]
    assert len(logs) == 2 + 4 * 2 + 1
    before = {log: log.stat().st_mtime_ns for log in logs}
    assert main(argv) == rows
    assert {log: log.stat().st_mtime_ns for log in logs} == before


def test_stage_reuse_follows_command_and_inputs(tmp_path):
    encoder = tmp_path / "encoder.pt"
    encoder.write_text("v1")
    folder = tmp_path / "stage"
    count = folder / "count.txt"
    command = [sys.executable, "-c", f"import pathlib; p = pathlib.Path({str(count)!r}); "
               "p.write_text(str(int(p.read_text()) + 1 if p.exists() else 1))"]
    run_stage("count", command, folder, inputs=(encoder,))
    run_stage("count", command, folder, inputs=(encoder,))
    assert count.read_text() == "1", "a finished run with the same command and inputs is reused"
    encoder.write_text("v2")
    run_stage("count", command, folder, inputs=(encoder,))
    assert count.read_text() == "1", "changed inputs: the folder is emptied and the run redone"
    marker = json.loads((folder / "demo_stage.json").read_text())
    (folder / "demo_stage.json").write_text(json.dumps({**marker, "finished": False}))
    run_stage("count", command, folder, inputs=(encoder,))
    assert count.read_text() == "2", "an unfinished run resumes in its folder"
    with pytest.raises(StageError, match="exit 3"):
        run_stage("fails", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "bad")
