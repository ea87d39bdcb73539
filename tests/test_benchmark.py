"""The benchmark command runs end to end and its memory probe sees what a step allocates."""

import csv

import pytest
import torch

from summarymixing.benchmark.__main__ import main
from summarymixing.benchmark.measure import peak_memory_of, pin_cpu_allocator


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
