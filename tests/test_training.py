"""``summarymixing.training``: the non-finite guard, checkpoints by minutes and steps, the step
log and SpeechBrain's run options, on a toy regression Brain driven by a real command line."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
import speechbrain as sb
import torch
import yaml
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.dataset import DynamicItemDataset

from summarymixing.downstream.layers import HiddenStates
from summarymixing.training import (
    GuardedBrain,
    NonFiniteLossError,
    RNGState,
    RobustBrain,
    StepLog,
    read_step_log,
)

YAML = """
output_folder: !PLACEHOLDER
ckpt_every_minutes: 0
ckpt_every_steps: 0
num_checkpoints_to_keep: 2
log_interval: 1
number_of_epochs: 1
model: !new:torch.nn.Linear [2, 1]
modules: {model: !ref <model>}
opt_class: !name:torch.optim.SGD {lr: 0.1}
epoch_counter: !new:speechbrain.utils.epoch_loop.EpochCounter {limit: !ref <number_of_epochs>}
checkpointer: !new:speechbrain.utils.checkpoints.Checkpointer
    checkpoints_dir: !ref <output_folder>/save
    recoverables: {model: !ref <model>, counter: !ref <epoch_counter>}
step_log: !new:summarymixing.training.StepLog {path: !ref <output_folder>/train_steps.jsonl}
tensorboard_logger: null
"""
NUM_UTTERANCES = 8  # batches of 2: u0 u1 | u2 u3 | u4 u5 | u6 u7


class ToyBrain(RobustBrain):
    """Least squares on a linear layer; counts SpeechBrain's ``on_fit_batch_end`` calls."""

    batch_ends = 0

    def compute_forward(self, batch, stage):
        return self.modules.model(batch.x.data.to(self.device))

    def compute_objectives(self, predictions, batch, stage):
        return ((predictions.squeeze(-1) - batch.y.to(self.device)) ** 2).mean()

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        ToyBrain.batch_ends += 1
        super().on_fit_batch_end(batch, outputs, loss, should_step)


def toy_data(poisoned: tuple[str, ...] = ()) -> DynamicItemDataset:
    """``NUM_UTTERANCES`` utterances ``u0`` ...; the ``poisoned`` ones have NaN inputs."""
    generator = torch.Generator().manual_seed(0)
    data = {}
    for i in range(NUM_UTTERANCES):
        x = torch.randn(2, generator=generator)
        if f"u{i}" in poisoned:
            x = torch.full((2,), float("nan"))
        data[f"u{i}"] = {"x": x, "y": float(x.sum())}
    dataset = DynamicItemDataset(data)
    dataset.set_output_keys(["id", "x", "y"])
    return dataset


def run(tmp_path: Path, *args: str, poisoned: tuple[str, ...] = (), brain_class=ToyBrain):
    """Parse ``toy.yaml --output_folder=... *args`` as a recipe does, train one epoch."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "toy.yaml").write_text(YAML)
    argv = [str(tmp_path / "toy.yaml"), f"--output_folder={tmp_path / 'out'}", "--device=cpu",
            "--noprogressbar", *args]
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    with open(hparams_file) as stream:
        hparams = load_hyperpyyaml(stream, overrides)
    brain = brain_class(modules=hparams["modules"], opt_class=hparams["opt_class"],
                        hparams=hparams, run_opts=run_opts, checkpointer=hparams["checkpointer"])
    brain.fit(hparams["epoch_counter"], toy_data(poisoned),
              train_loader_kwargs={"batch_size": 2, "shuffle": False})
    return brain


def test_a_nan_batch_is_skipped_counted_and_never_reaches_the_weights(tmp_path, caplog):
    ToyBrain.batch_ends = 0
    with caplog.at_level(logging.WARNING):
        brain = run(tmp_path, poisoned=("u3",))
    assert brain.optimizer_step == 3 and brain.nonfinite_count == 1  # 4 batches, 1 skipped
    assert ToyBrain.batch_ends == 4  # SpeechBrain's loop and hooks ran
    assert all(torch.isfinite(p).all() for p in brain.modules.parameters())
    assert "utterances of the batch on this rank: u2, u3" in caplog.text
    rows = read_step_log(tmp_path / "out" / "train_steps.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert [row["nonfinite_skipped"] for row in rows] == [0, 1, 1]
    assert all(row["grad_norm"] > 0 and row["lr"] == 0.1 for row in rows)


def test_past_the_patience_training_stops_naming_the_utterances(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"nonfinite_patience=1.*u4, u5"):
        run(tmp_path, "--nonfinite_patience=1", poisoned=("u0", "u5"))
    # SpeechBrain's own option is honoured: with the default patience (3) it trains on.
    assert run(tmp_path / "default", poisoned=("u0", "u5")).optimizer_step == 2


def test_skip_nonfinite_grads_is_accepted_and_skips_the_whole_step(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        brain = run(tmp_path, "--skip_nonfinite_grads", poisoned=("u6",))
    assert "skip_nonfinite_grads: always on here" in caplog.text
    assert brain.optimizer_step == 3 and brain.nonfinite_count == 1
    assert all(torch.isfinite(p).all() for p in brain.modules.parameters())


@pytest.mark.parametrize(("option", "ours"), [("--ckpt_interval_minutes=5", "ckpt_every_minutes"),
                                              ("--ckpt_interval_steps=2", "ckpt_every_steps")])
def test_speechbrain_checkpoint_intervals_are_refused_naming_ours(tmp_path, option, ours):
    with pytest.raises(ValueError, match=rf"{option.split('=')[0]} is not used.*--{ours}="):
        run(tmp_path, option)


def test_checkpoints_every_steps_at_accumulation_boundaries(tmp_path):
    brain = run(tmp_path, "--ckpt_every_steps=1", "--grad_accumulation_factor=2",
                "--num_checkpoints_to_keep=5")
    assert brain.optimizer_step == 2  # 4 batches, 2 per step
    checkpoints = sorted(
        sb.utils.checkpoints.Checkpointer(tmp_path / "out" / "save").list_checkpoints(),
        key=lambda c: c.meta["optimizer_step"],
    )
    assert [c.meta["optimizer_step"] for c in checkpoints] == [1, 2]
    for checkpoint in checkpoints:  # batches 2 and 4: never inside an accumulation group
        saved = yaml.safe_load((checkpoint.path / "brain.ckpt").read_text())
        assert saved["step"] == 2 * saved["optimizer_step"], saved
        assert (checkpoint.path / "rng.ckpt").is_file()


def test_checkpoints_keep_the_newest(tmp_path):
    run(tmp_path, "--ckpt_every_steps=1", "--num_checkpoints_to_keep=2")
    checkpoints = sb.utils.checkpoints.Checkpointer(tmp_path / "out" / "save").list_checkpoints()
    assert sorted(c.meta["optimizer_step"] for c in checkpoints) == [3, 4]


def test_optimizers_dict_and_freeze_optimizers_are_honoured(tmp_path):
    class TwoOptimizers(ToyBrain):
        """Weights and bias apart; the bias optimizer frozen for good."""

        def init_optimizers(self):
            model = self.modules.model
            self.optimizers_dict = {"weight": torch.optim.SGD([model.weight], lr=0.1),
                                    "bias": torch.optim.SGD([model.bias], lr=0.1)}
            self.optimizer = self.optimizers_dict["weight"]

        def freeze_optimizers(self, optimizers):
            return {"weight": optimizers["weight"]}

    torch.manual_seed(0)
    brain = run(tmp_path, poisoned=("u1",), brain_class=TwoOptimizers)
    model = brain.modules.model
    assert brain.optimizer_step == 3 and brain.nonfinite_count == 1
    assert model.bias.grad is None or torch.isfinite(model.bias.grad).all()
    assert torch.isfinite(model.weight).all() and torch.isfinite(model.bias).all()


def test_unused_parameters_are_detected_from_the_modules(tmp_path):
    class LayerDrop(torch.nn.Linear):
        layerdrop_prob = 0.1

    def brain(module: torch.nn.Module) -> GuardedBrain:
        return GuardedBrain(modules={"m": module}, run_opts={"device": "cpu"})

    assert not brain(torch.nn.Linear(2, 2)).has_unused_parameters()
    assert brain(LayerDrop(2, 2)).has_unused_parameters()
    assert not brain(HiddenStates(torch.nn.Linear(2, 2), freeze=True)).has_unused_parameters()
    assert brain(HiddenStates(torch.nn.Linear(2, 2), freeze=False)).has_unused_parameters()


def test_step_log_cuts_a_torn_line_and_the_reader_skips_one(tmp_path, caplog):
    path = tmp_path / "steps.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')  # killed mid-write
    with caplog.at_level(logging.WARNING):
        assert [row["step"] for row in read_step_log(path)] == [1]
    assert "torn last line" in caplog.text
    StepLog(path).write({"step": 2, "loss": 1.5})  # the resumed run
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=rf"{path}:2: expected a JSON object"):
        read_step_log(path)


def test_a_crafted_rng_checkpoint_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    path = tmp_path / "rng.ckpt"
    path.write_bytes(pickle.dumps({"python": Payload()}))
    with pytest.raises(pickle.UnpicklingError):
        RNGState().load(path)


def test_an_unfinished_group_does_not_mark_the_next_epoch(tmp_path):
    """Batches of 3 per step: u6 u7 (NaN) are the 4th batch, left over and flushed at the end of
    each epoch; the next epoch's first step is applied."""
    brain = run(tmp_path, "--grad_accumulation_factor=3", "--number_of_epochs=2",
                poisoned=("u7",))
    assert brain.optimizer_step == 2 and brain.nonfinite_count == 0
    assert all(torch.isfinite(p).all() for p in brain.modules.parameters())


def test_a_step_the_grad_scaler_skips_is_not_counted(tmp_path):
    """fp16's GradScaler skips a step whose scaled gradients overflow (and halves its scale):
    no applied update, so ``optimizer_step`` does not advance, and it is not ours to count.
    (A CPU GradScaler stands for the CUDA one: SpeechBrain refuses fp16 on CPU.)"""

    class OverflowAtBatch2(ToyBrain):
        def on_fit_start(self):
            self.scaler = torch.GradScaler("cpu", init_scale=1024.0)
            super().on_fit_start()

        def compute_forward(self, batch, stage):
            predictions = super().compute_forward(batch, stage)
            if self.step == 2:
                predictions.register_hook(lambda grad: grad * float("inf"))
            return predictions

    brain = run(tmp_path, brain_class=OverflowAtBatch2)
    assert brain.optimizer_step == 3 and brain.nonfinite_count == 0
    assert brain.scaler.get_scale() == 512.0
    assert all(torch.isfinite(p).all() for p in brain.modules.parameters())
    rows = read_step_log(tmp_path / "out" / "train_steps.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert all(0 < row["grad_norm"] < 100 for row in rows)  # unscaled norms
