"""The downstream YAMLs are the single source of truth: every key a recipe reads exists, no key
is dead, the mini configs mirror the full ones, and every file (``train.yaml``, ``mini.yaml``,
``train_extended.yaml`` where a task has one) instantiates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml
from tiny_models import tiny_export

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("asr_commonvoice", "slurp", "iemocap", "voxceleb")
SHARED = [ROOT / "summarymixing" / "downstream" / "brain.py"]
CLASSIFICATION = ROOT / "summarymixing" / "downstream" / "classification.py"
READ = re.compile(r"""hparams(?:\["(\w+)"\]|\.(\w+))""")
OPTIONAL = re.compile(r'getattr\(self\.hparams, "(\w+)"')  # keys read when present
REFERENCED = re.compile(r"<([A-Za-z_]\w*)>")
FORMATTED = re.compile(r"""hparams\[f"\{(\w+)\}(\w+)"\]""")  # hparams[f"{split}_csv"]
TOP_LEVEL = re.compile(r"^([A-Za-z_]\w*):", re.MULTILINE)


def code_files(task: str) -> list[Path]:
    recipe = ROOT / "recipes" / task / "train.py"
    uses_classification = "downstream.classification" in recipe.read_text()
    return [recipe, *SHARED, *([CLASSIFICATION] if uses_classification else [])]


def optional_keys(task: str) -> set[str]:
    return {key for path in code_files(task) for key in OPTIONAL.findall(path.read_text())}


def yaml_files(task: str) -> list[str]:
    return sorted(path.name for path in (ROOT / "hparams" / task).glob("*.yaml"))


ALL_YAMLS = [(task, name) for task in TASKS for name in yaml_files(task)]


def keys_read(task: str) -> set[str]:
    found = set()
    for path in code_files(task):
        code = path.read_text()
        for match in READ.finditer(code):
            found.add(match.group(1) or match.group(2))
        for variable, suffix in FORMATTED.findall(code):  # expand `for split in (...)` loops
            for values in re.findall(rf"for {variable} in \(([^)]*)\)", code):
                found |= {value + suffix for value in re.findall(r'"(\w+)"', values)}
    return found - {"get"}


@pytest.mark.parametrize(("task", "name"), ALL_YAMLS)
def test_every_key_read_exists_and_none_is_dead(task, name):
    text = (ROOT / "hparams" / task / name).read_text()
    defined = set(TOP_LEVEL.findall(text))
    uncommented = re.sub(r"#.*", "", text)
    read, referenced = keys_read(task), set(REFERENCED.findall(uncommented))
    assert read - defined == set(), f"{task}/{name}: read by the recipe but missing"
    dead = defined - read - optional_keys(task) - referenced - {"__set_seed"}
    assert dead == set(), f"{task}/{name}: defined but never read nor referenced"
    assert referenced <= defined


@pytest.mark.parametrize("task", TASKS)
def test_mini_config_mirrors_the_full_one(task):
    full, mini = ((ROOT / "hparams" / task / n).read_text() for n in ("train.yaml", "mini.yaml"))
    assert TOP_LEVEL.findall(full) == TOP_LEVEL.findall(mini)


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.mktemp("enc") / "e", d_model=16, num_layers=1, d_ffn=32,
                       latent_dim=16)


@pytest.mark.parametrize(("task", "name"), ALL_YAMLS)
def test_yaml_instantiates_with_a_frozen_encoder(task, name, tiny_encoder, tmp_path):
    overrides = {"data_folder": str(tmp_path), "pretrained_path": str(tiny_encoder),
                 "output_folder": str(tmp_path)}
    with open(ROOT / "hparams" / task / name, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    assert hparams["weighted_sum"].logits.numel() == 2
    assert hparams["encoder"].freeze and not any(
        p.requires_grad for p in hparams["pretrained"].parameters()
    )
    feats = torch.randn(2, 12, hparams["d_model"])
    assert hparams["head"](feats, torch.tensor([1.0, 0.5])).shape[0] == 2
