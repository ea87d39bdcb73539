"""The benchmark commands run end to end; their probes see what a step allocates and saves."""

import csv

import pytest
import torch

from summarymixing.benchmark.__main__ import main
from summarymixing.benchmark.measure import (
    peak_memory_of,
    pin_cpu_allocator,
    saved_tensor_bytes,
    training_state_bytes,
)
from summarymixing.benchmark.pretrain import pretrain_step, random_batch, ratios
from summarymixing.w2v2 import FbankFrontEnd


def test_cell_and_encoder_benchmark_write_table_csv_and_png(tmp_path, capsys):
    main(["all", "--size", "tiny", "--lengths", "8", "16", "--repeats", "1", "--out",
          str(tmp_path)])
    printed = capsys.readouterr().out
    for level in ("cell", "encoder"):
        with open(tmp_path / f"{level}_cpu_tiny.csv") as stream:
            rows = list(csv.DictReader(stream))
        assert {(row["model"], row["frames"]) for row in rows} == {
            (model, frames) for model in ("SummaryMixing", "regularMHA", "SDPA")
            for frames in ("8", "16")
        }
        assert all(float(row["seconds"]) > 0 for row in rows)
        assert (tmp_path / f"{level}_cpu_tiny.png").stat().st_size > 0
        assert f"## {level} (tiny" in printed
    assert "| SummaryMixing | 16 |" in printed


def test_cpu_peak_memory_sees_a_large_temporary():
    pin_cpu_allocator()
    size_bytes = 256 * 2**20

    def allocate_and_free():
        buffer = torch.ones(size_bytes // 4)
        buffer.add_(1.0)

    peak = peak_memory_of(allocate_and_free, torch.device("cpu"))
    assert peak == pytest.approx(size_bytes, rel=0.25)


def test_saved_tensor_bytes_counts_what_autograd_saves_for_linear_and_tanh():
    # y = tanh(x W^T + b), x (5, 7) not requiring grad: addmm saves x (for dW; W is excluded as a
    # parameter) and tanh saves its output (dtanh = 1 - y^2); float64, so 8 bytes per element.
    layer = torch.nn.Linear(7, 3).double()
    x = torch.randn(5, 7, dtype=torch.float64)
    saved = saved_tensor_bytes(lambda: torch.tanh(layer(x)).sum().backward(), layer.parameters())
    assert saved == (5 * 7 + 5 * 3) * 8
    # with the parameters counted, the weight (saved for dx when x requires grad) adds 7 x 3
    x.requires_grad_(True)
    saved = saved_tensor_bytes(lambda: torch.tanh(layer(x)).sum().backward())
    assert saved == (5 * 7 + 7 * 3 + 5 * 3) * 8


def test_saved_tensor_bytes_counts_a_shared_storage_once():
    x = torch.randn(4, 6, requires_grad=True)
    y = x * 2.0

    def step():
        (y * y).sum().backward()  # y saved twice (both operands), one storage

    assert saved_tensor_bytes(step) == 4 * 6 * 4


def test_training_state_bytes_is_parameters_gradients_and_adamw_moments():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    model[1].bias.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    trainable = 3 * 2 + 2 + 2 * 1  # frozen bias left out
    # parameters, gradients, exp_avg, exp_avg_sq (float32) + one float32 step per trainable tensor
    assert training_state_bytes(model, optimizer) == 4 * trainable * 4 + 3 * 4


def test_pretrain_benchmark_runs_three_models_on_a_paper_like_batch(tmp_path, capsys):
    main(["pretrain", "--size", "tiny", "--batch", "paper", "--max-batch-seconds", "8",
          "--segment-seconds", "2", "3",
          "--models", "SummaryMixing", "MHSA", "SDPA", "--repeats", "2", "--warmup", "0",
          "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    with open(tmp_path / "pretrain_cpu_tiny_paperbatch.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["model"] for row in rows] == ["SummaryMixing", "MHSA", "SDPA"]
    assert len({(row["seconds_audio"], row["batch_size"]) for row in rows}) == 1
    assert int(rows[0]["batch_size"]) >= 2 and float(rows[0]["seconds_audio"]) <= 8
    assert all(float(row["det_mib"]) > 0 and float(row["min_seconds"]) > 0 for row in rows)
    assert "SummaryMixing/SDPA time" in printed
    assert (tmp_path / "pretrain_cpu_tiny_paperbatch.png").stat().st_size > 0


def test_ratios_flag_within_noise_only_when_a_spread_exceeds_the_difference():
    def rows(spread):
        return [{"model": model, "seconds_audio": 20.0, "seconds": seconds,
                 "spread_seconds": spread, "peak_mib": 1.0, "det_mib": 1.0}
                for model, seconds in (("SummaryMixing", 0.8), ("MHSA", 1.0), ("SDPA", 0.9))]

    clear = ratios(rows(0.05))
    assert clear[0].startswith("20 s: SummaryMixing/MHSA time 0.80x, ")
    assert clear[1].startswith("20 s: SummaryMixing/SDPA time 0.89x, ")
    noisy = ratios(rows(0.15))  # > 0.1 (SDPA) but < 0.2 (MHSA)
    assert "(within noise)" not in noisy[0] and "(within noise)" in noisy[1]


def test_stage_breakdown_accounts_for_every_saved_byte_and_stage():
    torch.manual_seed(0)
    batch = random_batch(2.0, 2, FbankFrontEnd(out_channels=[32, 32]))
    step = pretrain_step("SummaryMixing", "tiny", batch, torch.device("cpu"))
    stages = step.breakdown()
    saved, _ = step.deterministic_bytes()  # the same shapes: the same bytes
    assert sum(stage["saved_bytes"] for stage in stages.values()) == saved
    assert stages["context encoder"]["saved_bytes"] > 0 and stages["quantiser"]["saved_bytes"] > 0
    assert stages["backward"]["saved_bytes"] == 0
    assert all(stage["seconds"] > 0 for stage in stages.values()), stages


def test_pretrain_benchmark_in_bf16_writes_the_breakdown(tmp_path, capsys):
    main(["pretrain", "--size", "tiny", "--seconds", "2", "--precision", "bf16", "--breakdown",
          "--optimizer", "foreach", "--repeats", "1", "--warmup", "0", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "tiny, bf16, foreach AdamW" in printed
    with open(tmp_path / "pretrain_cpu_tiny_bf16_foreach_stages.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert {row["stage"] for row in rows} == {
        "front end", "context encoder", "quantiser", "masking, projections", "loss", "backward",
        "optimizer"}
    assert {row["model"] for row in rows} == {"SummaryMixing", "MHSA"}
