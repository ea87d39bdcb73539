"""The pre-training YAMLs: SummaryMixing vs MHSA differ in one line, every key the recipe reads
exists and none is dead, and the paper models have the paper's sizes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hyperpyyaml import load_hyperpyyaml
from speechbrain.core import RunOptions

ROOT = Path(__file__).resolve().parents[1]
HPARAMS = ROOT / "hparams" / "pretrain"
YAMLS = sorted(HPARAMS.glob("*.yaml"))
READERS = [ROOT / "recipes" / "pretrain" / "train.py", ROOT / "summarymixing" / "training.py"]


def keys_read_by_the_recipe() -> set[str]:
    source = "\n".join(path.read_text() for path in READERS)
    return set(re.findall(r'hparams\["(\w+)"\]', source)) | set(
        re.findall(r"self\.hparams\.(\w+)", source)
    )


def test_summarymixing_and_mhsa_differ_in_attention_type_only() -> None:
    summary = (HPARAMS / "summarymixing_w2v2.yaml").read_text().splitlines()
    mhsa = (HPARAMS / "mhsa_w2v2.yaml").read_text().splitlines()
    assert len(summary) == len(mhsa)
    different = [(a, b) for a, b in zip(summary, mhsa, strict=True) if a != b]
    assert different == [("attention_type: SummaryMixing", "attention_type: regularMHA")]


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_every_key_read_exists_and_none_is_dead(path: Path) -> None:
    text = path.read_text()
    top_level = set(re.findall(r"^(\w+):", text, flags=re.MULTILINE))
    missing = keys_read_by_the_recipe() - top_level
    assert not missing, f"{path.name} lacks {sorted(missing)}"
    referenced = set(re.findall(r"<(\w+)", text))
    run_options = set(RunOptions().as_dict())
    used = keys_read_by_the_recipe() | referenced | run_options | {"data_folder"}
    dead = {key for key in top_level - used if not key.startswith("__")}
    assert not dead, f"{path.name}: keys never read {sorted(dead)}"
    assert re.search(r"^ckpt_every_minutes: [1-9]", text, flags=re.MULTILINE)
    assert re.search(r"^ckpt_every_steps: [1-9]", text, flags=re.MULTILINE)


@pytest.mark.parametrize(
    ("name", "millions"), [("summarymixing_w2v2.yaml", 155.0), ("mhsa_w2v2.yaml", 166.0)]
)
def test_paper_model_sizes(name: str, millions: float, tmp_path: Path) -> None:
    with open(HPARAMS / name) as fin:
        hparams = load_hyperpyyaml(
            fin, {"data_folder": str(tmp_path), "output_folder": str(tmp_path)}
        )
    count = sum(p.numel() for p in hparams["model"].parameters()) / 1e6
    assert abs(count - millions) <= 0.01 * millions, count
    assert hparams["model"].encoder.num_hidden_states == 13
