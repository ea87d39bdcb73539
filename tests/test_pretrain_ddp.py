"""DDP pre-training on CPU: two gloo processes launched by torchrun, with layer drop (which
switches ``find_unused_parameters`` on by itself)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MINI_YAML = ROOT / "hparams" / "pretrain" / "mini_summarymixing_w2v2.yaml"

WORKER = textwrap.dedent(
    """
    import importlib.util, sys
    import torch, torch.distributed as dist
    spec = importlib.util.spec_from_file_location("recipe", sys.argv[1])
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    brain = recipe.main(sys.argv[3:])
    state = {k: v.detach().clone() for k, v in brain.hparams.model.state_dict().items()}
    torch.save({"state": state, "step": brain.optimizer_step},
               f"{sys.argv[2]}/rank{dist.get_rank()}.pt")
    """
)


def test_two_gloo_ranks_end_identical_with_one_checkpoint(
    mini_corpora: Path, tmp_path: Path
) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(worker), str(ROOT / "recipes" / "pretrain" / "train.py"), str(tmp_path),
        str(MINI_YAML), "--data_folder", str(mini_corpora / "librilight"),
        "--valid_folder", str(mini_corpora / "LibriSpeech" / "dev-clean"),
        "--output_folder", str(out), "--device", "cpu", "--distributed_backend", "gloo",
        "--noprogressbar", "--optimizer_step_limit", "4", "--layerdrop_prob", "0.5",
        "--ckpt_every_steps", "100",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["step"] == ranks[1]["step"] == 4
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), name
    assert len(list((out / "save").glob("CKPT+*"))) == 1
    assert (out / "encoder" / "encoder.ckpt").is_file()
    lines = (out / "train_steps.jsonl").read_text().splitlines()  # main process only
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]
    assert "find_unused_parameters on" in result.stdout + result.stderr  # from layer drop
