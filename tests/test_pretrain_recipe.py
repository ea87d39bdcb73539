"""Mini wav2vec 2.0 pre-training on the mini LibriLight corpus (CPU): learning, checkpoints,
export, exact resume, non-finite steps, unreadable audio."""

from __future__ import annotations

import csv
import importlib.util
import math
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml

from data_prep.audio import AudioReadError
from summarymixing.export import load_pretrained
from summarymixing.export import main as export_main
from summarymixing.inference import W2V2Features
from summarymixing.training import NonFiniteLossError, read_step_log

ROOT = Path(__file__).resolve().parents[1]
MINI_YAML = ROOT / "hparams" / "pretrain" / "mini_summarymixing_w2v2.yaml"
CHANCE = 1.0 / 21  # 20 negatives in the mini config


def load_recipe() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "pretrain_recipe", ROOT / "recipes" / "pretrain" / "train.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mini_argv(manifests: Path, out: Path, *extra: str) -> list[str]:
    """Arguments of a mini run on manifests prepared once (see the ``manifests`` fixture)."""
    return [
        str(MINI_YAML), "--data_folder", str(manifests), "--skip_prep", "True",
        "--train_csv", str(manifests / "train.csv"), "--valid_csv", str(manifests / "valid.csv"),
        "--output_folder", str(out), "--device", "cpu", "--noprogressbar", *extra,
    ]


def step_log(out: Path) -> list[dict[str, float]]:
    return read_step_log(out / "train_steps.jsonl")


@pytest.fixture(scope="module")
def recipe() -> ModuleType:
    return load_recipe()


@pytest.fixture(scope="module")
def mini_run(recipe: ModuleType, mini_corpora: Path, tmp_path_factory: pytest.TempPathFactory):
    """The full mini recipe, data preparation included."""
    out = tmp_path_factory.mktemp("mini_pretrain")
    brain = recipe.main([
        str(MINI_YAML), "--data_folder", str(mini_corpora / "librilight"),
        "--valid_folder", str(mini_corpora / "LibriSpeech" / "dev-clean"),
        "--output_folder", str(out), "--device", "cpu", "--noprogressbar",
    ])
    return brain, out


@pytest.fixture(scope="module")
def manifests(mini_run) -> Path:
    """The train/valid manifests the mini run prepared."""
    return mini_run[1]


def test_mini_pretraining_learns(mini_run) -> None:
    brain, out = mini_run
    rows = step_log(out)
    assert [int(r["step"]) for r in rows] == list(range(1, 41))
    for key in ("loss", "accuracy", "diversity_loss", "code_perplex", "prob_perplex", "lr",
                "seconds_per_step", "peak_memory_gib", "temperature"):
        assert all(math.isfinite(r[key]) for r in rows), key
    first = sum(r["contrastive_per_frame"] for r in rows[:8]) / 8
    last = sum(r["contrastive_per_frame"] for r in rows[-8:]) / 8
    assert last < first - 0.2, (first, last)
    accuracy = sum(r["accuracy"] for r in rows[-10:]) / 10
    assert accuracy > 2 * CHANCE, accuracy
    assert rows[-1]["temperature"] < rows[0]["temperature"]
    assert all(torch.isfinite(p).all() for p in brain.hparams.model.parameters())
    assert len(list((out / "save").glob("CKPT+*"))) >= 1
    assert sorted(p.name for p in (out / "encoder").iterdir()) == ["encoder.ckpt",
                                                                    "hyperparams.yaml"]
    assert "valid accuracy" in (out / "train_log.txt").read_text()


def test_checkpoint_and_export_give_the_trained_encoder(mini_run, tmp_path: Path) -> None:
    brain, out = mini_run
    trained = brain.hparams.model.encoder.eval()
    exported = export_main([str(out / "save"), str(tmp_path / "from_ckpt")])
    newest = max((out / "save").glob("CKPT+*"), key=lambda p: p.stat().st_mtime)
    wavs, lens = torch.randn(2, 24000), torch.tensor([1.0, 0.75])
    with torch.no_grad():
        reference = trained(wavs, lens)
        for source in (out / "encoder", out / "save", newest, exported):
            loaded = load_pretrained(source, expected_arch={"d_model": 64, "num_layers": 2})
            for expected, found in zip(reference, loaded(wavs, lens), strict=True):
                assert torch.equal(expected, found), source
        features = W2V2Features.from_hparams(source=str(out / "encoder"))
        for expected, found in zip(reference, features.encode_batch(wavs, lens), strict=True):
            torch.testing.assert_close(found, expected, atol=1e-5, rtol=1e-5)  # other kernels


def yaml_variant(tmp_path: Path, old: str, new: str) -> Path:
    """The mini YAML with one text edit (what a user does to change the architecture)."""
    text = MINI_YAML.read_text()
    assert old in text
    path = tmp_path / "variant.yaml"
    path.write_text(text.replace(old, new))
    return path


def test_a_transformer_w2v2_is_a_yaml_edit(recipe: ModuleType, manifests: Path,
                                           tmp_path: Path) -> None:
    variant = yaml_variant(tmp_path, "context: !new:summarymixing.ConformerEncoder\n",
                           "context: !new:summarymixing.TransformerEncoder\n")
    variant.write_text(re.sub(r"\n    kernel_size: \d+", "", variant.read_text()))
    argv = mini_argv(manifests, tmp_path / "run", "--optimizer_step_limit", "2")
    argv[0] = str(variant)
    brain = recipe.main(argv)
    assert brain.optimizer_step == 2
    loaded = load_pretrained(tmp_path / "run" / "encoder", expected_arch={"num_layers": 2})
    assert type(loaded.context).__name__ == "TransformerEncoder"


def test_resuming_another_architecture_is_refused_before_loading(
    recipe: ModuleType, manifests: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    recipe.main(mini_argv(manifests, out, "--optimizer_step_limit", "1"))
    variant = yaml_variant(tmp_path, "    d_ffn: 128\n", "    d_ffn: 96\n")
    argv = mini_argv(manifests, out, "--optimizer_step_limit", "1")
    argv[0] = str(variant)
    with pytest.raises(ValueError, match="for key 'context.d_ffn': expected 96, found 128"):
        recipe.main(argv)


class KilledError(Exception):
    """Stands for the job being killed."""


def test_resume_matches_an_uninterrupted_run(
    recipe: ModuleType, manifests: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = ("--optimizer_step_limit", "6", "--grad_accumulation_factor", "2",
               "--ckpt_every_steps", "1", "--warmup", "2", "--cooldown", "4",
               "--layerdrop_prob", "0.3")
    straight = recipe.main(mini_argv(manifests, tmp_path / "straight", *options))

    class KilledAfterStep3(recipe.W2V2Brain):
        def _save_intra_epoch_ckpt(self) -> None:
            super()._save_intra_epoch_ckpt()
            if self.optimizer_step == 3:
                raise KilledError

    monkeypatch.setattr(recipe, "W2V2Brain", KilledAfterStep3)
    with pytest.raises(KilledError):
        recipe.main(mini_argv(manifests, tmp_path / "resumed", *options))
    monkeypatch.undo()
    resumed = recipe.main(mini_argv(manifests, tmp_path / "resumed", *options))

    assert resumed.optimizer_step == straight.optimizer_step == 6
    assert [int(r["step"]) for r in step_log(tmp_path / "resumed")] == [1, 2, 3, 4, 5, 6]
    # Same batches, masks, negatives and layer drops: the logged losses (3 significant digits)
    # agree to the last digit (one unit apart when rounding-level noise crosses a boundary)...
    for straight_row, resumed_row in zip(step_log(tmp_path / "straight"),
                                         step_log(tmp_path / "resumed"), strict=True):
        for key in ("loss", "diversity_loss", "lr", "temperature"):
            a, b = straight_row[key], resumed_row[key]
            unit = 10 ** (math.floor(math.log10(abs(a))) - 2) if a else 0.0
            assert abs(a - b) <= 1.0001 * unit, (straight_row["step"], key, a, b)
        # The accuracy counts masked frames (about 160 per step): rounding-level noise can flip
        # the arg-max of one frame near a tie (seen in about 1 run of 4), not of two.
        a, b = straight_row["accuracy"], resumed_row["accuracy"]
        assert abs(a - b) <= 0.01, (straight_row["step"], "accuracy", a, b)
    # ...and the weights agree up to float rounding: CPU kernels are not bit-reproducible from
    # one call to the next, and Adam turns rounding-level gradients of near-zero entries into
    # steps of up to the learning rate, so compare each tensor's relative distance.
    straight_state = straight.hparams.model.state_dict()
    for name, value in resumed.hparams.model.state_dict().items():
        reference = straight_state[name].float()
        distance = (value.float() - reference).norm() / reference.norm().clamp(min=1e-12)
        assert distance < 1e-3, (name, float(distance))
    assert resumed.quantiser.curr_temp == straight.quantiser.curr_temp
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]


def test_non_finite_batches_are_skipped_then_stop_training(
    recipe: ModuleType, manifests: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class PoisonedBatch2(recipe.W2V2Brain):
        def compute_forward(self, batch, stage):
            if self.step == 2:
                wavs, wav_lens, mask = batch
                batch = (torch.full_like(wavs, float("nan")), wav_lens, mask)
            return super().compute_forward(batch, stage)

    monkeypatch.setattr(recipe, "W2V2Brain", PoisonedBatch2)
    brain = recipe.main(mini_argv(manifests, tmp_path / "a", "--optimizer_step_limit", "3"))
    assert brain.optimizer_step == 3 and brain.nonfinite_count == 1
    assert all(torch.isfinite(p).all() for p in brain.hparams.model.parameters())
    with pytest.raises(NonFiniteLossError, match="non-finite.*utterances of the batch on this "
                                                 "rank: [^,]+"):
        recipe.main(mini_argv(manifests, tmp_path / "b", "--optimizer_step_limit", "3",
                              "--nonfinite_patience", "0"))


def test_resuming_with_another_step_limit_is_refused(
    recipe: ModuleType, manifests: Path, tmp_path: Path
) -> None:
    """A checkpoint's learning-rate schedule ends at its run's step limit; resuming it with
    another limit would run past the schedule's end (negative learning rates)."""
    out = tmp_path / "run"
    recipe.main(mini_argv(manifests, out, "--optimizer_step_limit", "2"))
    with pytest.raises(ValueError, match="ends at step 2, but optimizer_step_limit is 4"):
        recipe.main(mini_argv(manifests, out, "--optimizer_step_limit", "4"))


def test_utterances_too_short_to_mask_are_refused(
    recipe: ModuleType, manifests: Path, tmp_path: Path
) -> None:
    with open(manifests / "train.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    rows[0].update(duration="0.8", stop=str(int(rows[0]["start"]) + 12800))
    short = tmp_path / "train.csv"
    with open(short, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    argv = mini_argv(manifests, tmp_path / "run", "--min_duration", "0.5",
                     "--optimizer_step_limit", "1")
    argv[argv.index("--train_csv") + 1] = str(short)
    with pytest.raises(ValueError, match=rf"{short}: utterance {rows[0]['ID']} lasts 0.8 s"):
        recipe.main(argv)


def test_unreadable_audio_names_the_file(recipe: ModuleType, tmp_path: Path) -> None:
    broken = tmp_path / "broken.flac"
    broken.write_bytes(b"not audio at all")
    csv = tmp_path / "rows.csv"
    csv.write_text(f"ID,duration,wav,start,stop,spk_id\nu1,3.0,{broken},0,48000,7\n")
    with open(MINI_YAML) as fin:
        hparams = load_hyperpyyaml(fin, {"data_folder": str(tmp_path), "output_folder":
                                         str(tmp_path), "train_csv": str(csv),
                                         "valid_csv": str(csv)})
    train_data, *_ = recipe.dataio_prepare(hparams)
    with pytest.raises(AudioReadError, match=str(broken)):
        train_data[0]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
