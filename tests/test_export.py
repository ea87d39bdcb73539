"""Export / reload of the pre-trained encoder: identical hidden states, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from summarymixing.export import ArchitectureRecord, load_pretrained, save_pretrained
from summarymixing.w2v2 import build_encoder

TINY = {
    "n_mels": 40, "cnn_channels": [32, 32], "d_model": 32, "num_layers": 2, "nhead": 4,
    "d_ffn": 64, "conv_kernel_size": 5, "local_proj_hid_dim": [32], "summary_hid_dim": [32],
}


def test_round_trip_gives_identical_hidden_states(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = build_encoder(TINY, dropout=0.1, layerdrop_prob=0.2).eval()
    path = save_pretrained(encoder, TINY, tmp_path / "sub" / "encoder.pt")
    loaded = load_pretrained(path, expected_arch={"attention_type": "SummaryMixing", **TINY})
    assert not loaded.training
    wavs, lens = torch.randn(2, 12000), torch.tensor([1.0, 0.8])
    with torch.no_grad():
        for before, after in zip(encoder(wavs, lens), loaded(wavs, lens), strict=True):
            assert torch.equal(before, after)


def test_architecture_mismatch_names_the_key(tmp_path: Path) -> None:
    path = save_pretrained(build_encoder(TINY), TINY, tmp_path / "encoder.pt")
    with pytest.raises(ValueError, match=r"'attention_type': expected 'regularMHA', found "
                                         r"'SummaryMixing'"):
        load_pretrained(path, expected_arch={"attention_type": "regularMHA"})
    with pytest.raises(ValueError, match="'num_layers': expected 12, found 2"):
        load_pretrained(path, expected_arch={"num_layers": 12})
    with pytest.raises(ValueError, match="unknown architecture key 'layers'"):
        load_pretrained(path, expected_arch={"layers": 2})


def test_missing_or_foreign_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_pretrained(tmp_path / "nowhere.pt")
    with pytest.raises(FileNotFoundError, match="architecture.ckpt"):
        load_pretrained(tmp_path)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt"):
        load_pretrained(tmp_path / "other.pt")


def test_resuming_a_checkpoint_of_another_architecture_fails(tmp_path: Path) -> None:
    ArchitectureRecord(TINY).save(tmp_path / "architecture.ckpt")
    ArchitectureRecord(TINY).load(tmp_path / "architecture.ckpt")
    with pytest.raises(ValueError, match="'d_ffn': expected 128, found 64"):
        ArchitectureRecord({**TINY, "d_ffn": 128}).load(tmp_path / "architecture.ckpt")
