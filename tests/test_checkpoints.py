"""Crash-safe checkpoints (kills injected inside a save, damaged files), one run per folder, a
new batch order every epoch, exact resume in a later epoch, and epochs without any step."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.sampler import DynamicBatchSampler
from speechbrain.utils.epoch_loop import EpochCounter
from tiny_models import tiny_encoder

from summarymixing.checkpoints import RunLock, SafeCheckpointer
from summarymixing.export import ArchitectureRecord
from summarymixing.training import GuardedBrain, NoTrainingStepError, RobustBrain

KILLED_SAVE = textwrap.dedent(
    """
    import os, signal, sys, torch
    from speechbrain.utils.checkpoints import (
        mark_as_loader, mark_as_saver, register_checkpoint_hooks)
    from summarymixing.checkpoints import SafeCheckpointer

    @register_checkpoint_hooks
    class Bomb:
        armed = False
        @mark_as_saver
        def save(self, path):
            if self.armed:
                if sys.argv[2] == "mid-write":
                    with open(path, "wb") as stream:
                        stream.write(b"PK\\x03\\x04 half a file")
                        stream.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            torch.save(torch.ones(1), path)
        @mark_as_loader
        def load(self, path, end_of_epoch=False):
            torch.load(path, weights_only=True)

    torch.manual_seed(0)
    model, bomb = torch.nn.Linear(4, 4), Bomb()
    order = {"first": ("bomb", "model"), "mid-write": ("model", "bomb"), "last": ("model", "bomb")}
    recoverables = dict((name, {"model": model, "bomb": bomb}[name]) for name in order[sys.argv[2]])
    checkpointer = SafeCheckpointer(sys.argv[1], recoverables=recoverables)
    checkpointer.save_checkpoint(meta={"n": 1})
    torch.save(model.state_dict(), os.path.join(sys.argv[1], "expected.pt"))
    with torch.no_grad():
        model.weight.add_(1.0)
    bomb.armed = True
    checkpointer.save_checkpoint(meta={"n": 2})
    """
)


@pytest.mark.parametrize("kill_point", ["first", "mid-write", "last"])
def test_a_kill_inside_a_save_leaves_the_previous_checkpoint(tmp_path: Path, kill_point: str,
                                                             caplog) -> None:
    script = tmp_path / "killed.py"
    script.write_text(KILLED_SAVE)
    folder = tmp_path / "save"
    result = subprocess.run([sys.executable, str(script), str(folder), kill_point],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == -9, result.stderr[-2000:]
    assert len(list(folder.glob(".staging-CKPT+*"))) == 1, "the killed save stayed staged"
    model = torch.nn.Linear(4, 4)
    checkpointer = SafeCheckpointer(folder, recoverables={"model": model},
                                    allow_partial_load=True)
    with caplog.at_level(logging.WARNING):
        loaded = checkpointer.recover_if_possible()
    assert loaded.meta["n"] == 1
    expected = torch.load(folder / "expected.pt", weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    assert not list(folder.glob(".staging-CKPT+*")) and "interrupted checkpoint save" in caplog.text


def save_two(folder: Path) -> tuple[SafeCheckpointer, torch.nn.Linear, dict]:
    model = torch.nn.Linear(3, 3)
    checkpointer = SafeCheckpointer(folder, recoverables={"model": model})
    checkpointer.save_checkpoint(meta={"n": 1})
    first = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    checkpointer.save_checkpoint(meta={"n": 2})
    return checkpointer, model, first


@pytest.mark.parametrize("damage", ["truncated", "empty", "meta only", "bad meta"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path: Path, damage: str,
                                                                caplog) -> None:
    checkpointer, model, first = save_two(tmp_path)
    newest = max(checkpointer.list_checkpoints(), key=lambda c: c.meta["unixtime"]).path
    weights = newest / "model.ckpt"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "meta only":
        weights.unlink()
    else:
        (newest / "CKPT.yaml").write_text("{unclosed: [")
    with caplog.at_level(logging.WARNING):
        loaded = checkpointer.recover_if_possible()
    assert loaded.meta["n"] == 1 and str(newest) in caplog.text
    assert all(torch.equal(model.state_dict()[k], v) for k, v in first.items())


def test_an_architecture_mismatch_is_not_taken_for_damage(tmp_path: Path) -> None:
    SafeCheckpointer(tmp_path, recoverables={
        "architecture": ArchitectureRecord(tiny_encoder())}).save_checkpoint()
    other = SafeCheckpointer(tmp_path, recoverables={
        "architecture": ArchitectureRecord(tiny_encoder(num_layers=1))})
    with pytest.raises(ValueError, match="'context.num_layers': expected 1, found 2"):
        other.recover_if_possible()


def test_one_run_per_folder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from summarymixing.checkpoints import RunLock;"
         f" lock = RunLock({str(tmp_path)!r}); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError, match=f"another run \\(PID {holder.pid}\\)"):
            RunLock(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    RunLock(tmp_path).release()  # the kernel released the killed run's lock


class OrderBrain(RobustBrain):
    """Least squares; records the utterance ids of every batch it trains on."""

    seen: list[str] = []

    def compute_forward(self, batch, stage):
        return self.modules.model(batch.x.data)

    def compute_objectives(self, predictions, batch, stage):
        return ((predictions.squeeze(-1) - batch.y) ** 2).mean()

    def on_fit_batch_start(self, batch, should_step):
        OrderBrain.seen.append(",".join(batch.id))
        super().on_fit_batch_start(batch, should_step)


class KilledError(Exception):
    """Stands for the job being killed."""


def train(folder: Path, epochs: int = 3, kill_at_step: int | None = None,
          batch_seconds: float = 4.0) -> OrderBrain:
    torch.manual_seed(0)
    data = {f"u{i}": {"x": torch.randn(2), "duration": 1.0 + (i % 3)} for i in range(12)}
    for item in data.values():
        item["y"] = float(item["x"].sum())
    dataset = DynamicItemDataset(data)
    dataset.set_output_keys(["id", "x", "y"])
    sampler = DynamicBatchSampler(dataset, max_batch_length=batch_seconds, num_buckets=2,
                                  length_func=lambda row: row["duration"], shuffle=True,
                                  batch_ordering="random", seed=7)
    model, counter = torch.nn.Linear(2, 1), EpochCounter(epochs)
    checkpointer = SafeCheckpointer(folder, recoverables={"model": model, "counter": counter})
    hparams = {"ckpt_every_minutes": 0, "ckpt_every_steps": 1, "num_checkpoints_to_keep": 2,
               "log_interval": 1000, "step_log": None, "tensorboard_logger": None}

    class Brain(OrderBrain):
        def _save_intra_epoch_ckpt(self):
            super()._save_intra_epoch_ckpt()
            if self.optimizer_step == kill_at_step:
                raise KilledError

    brain = Brain(modules={"model": model}, opt_class=lambda p: torch.optim.SGD(p, lr=0.05),
                  hparams=hparams, run_opts={"device": "cpu", "noprogressbar": True},
                  checkpointer=checkpointer)
    brain.fit(counter, dataset, train_loader_kwargs={"batch_sampler": sampler})
    return brain


def test_every_epoch_has_its_own_order_and_a_resume_in_a_later_epoch_is_exact(tmp_path):
    OrderBrain.seen = []
    straight = train(tmp_path / "straight")
    order, steps = list(OrderBrain.seen), straight.optimizer_step
    per_epoch = steps // 3
    epochs = [order[i * per_epoch:(i + 1) * per_epoch] for i in range(3)]
    assert len(set(map(tuple, epochs))) == 3, "each epoch draws its own batch order"

    OrderBrain.seen = []
    with pytest.raises(KilledError):
        train(tmp_path / "resumed", kill_at_step=per_epoch + 2)  # inside epoch 2
    before_kill, OrderBrain.seen = list(OrderBrain.seen), []
    resumed = train(tmp_path / "resumed")
    assert before_kill + OrderBrain.seen == order
    assert resumed.optimizer_step == steps
    for name, value in resumed.modules.model.state_dict().items():
        torch.testing.assert_close(value, straight.modules.model.state_dict()[name])


def test_an_epoch_without_any_step_is_refused(tmp_path: Path) -> None:
    dataset = DynamicItemDataset({"u0": {"x": torch.ones(2), "y": 1.0}})
    dataset.set_output_keys(["id", "x", "y"])
    brain = GuardedBrain(modules={"model": torch.nn.Linear(2, 1)},
                         opt_class=lambda p: torch.optim.SGD(p, lr=0.1),
                         run_opts={"device": "cpu", "noprogressbar": True})
    brain.compute_forward = lambda batch, stage: brain.modules.model(batch.x.data)
    brain.compute_objectives = lambda out, batch, stage: out.sum()
    with pytest.raises(NoTrainingStepError, match="no batch"):
        brain.fit(range(1), dataset, train_loader_kwargs={"batch_size": 2, "drop_last": True})
    brain = GuardedBrain(modules={"model": torch.nn.Linear(2, 1)},
                         opt_class=lambda p: torch.optim.SGD(p, lr=0.1),
                         run_opts={"device": "cpu", "noprogressbar": True,
                                   "grad_accumulation_factor": 4})
    brain.compute_forward = lambda batch, stage: brain.modules.model(batch.x.data)
    brain.compute_objectives = lambda out, batch, stage: out.sum()
    with pytest.raises(NoTrainingStepError, match="made no optimizer step"):
        brain.fit(range(1), dataset, train_loader_kwargs={"batch_size": 1})


def test_shuffle_under_ddp_shuffles_every_epoch(tmp_path: Path) -> None:
    """SpeechBrain's DDP path keeps the file order unless hparams.sorting is 'random'."""
    dataset = DynamicItemDataset({f"u{i}": {"x": torch.ones(2)} for i in range(16)})
    brain = GuardedBrain(modules={"model": torch.nn.Linear(2, 1)}, hparams={"sorting":
                         "original"}, run_opts={"device": "cpu"})
    brain.distributed_launch, brain.rank = True, 0
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0,
                            world_size=1)
    try:
        kwargs = brain._train_loader_specifics(dataset, {"shuffle": True, "batch_size": 2})
    finally:
        dist.destroy_process_group()
    sampler = kwargs["sampler"]
    orders = []
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        orders.append(list(iter(sampler)))
    assert orders[0] != orders[1] and orders[0] != sorted(orders[0])
