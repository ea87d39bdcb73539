"""Downstream training under DDP on CPU: two gloo ranks fine-tune the encoder (after two paused
steps) and the SLURP head, and end with identical weights. (SLURP because its BiLSTM head has no
batch norm: SpeechBrain converts batch norm to SyncBatchNorm under DDP, which needs CUDA.)"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from tiny_models import tiny_export

from data_prep.slurp import prepare_slurp

ROOT = Path(__file__).resolve().parents[1]
WORKER = textwrap.dedent(
    """
    import sys
    import speechbrain as sb
    import torch, torch.distributed as dist
    from hyperpyyaml import load_hyperpyyaml
    from recipes.slurp.train import dataio_prepare
    from summarymixing.downstream.classification import ClassificationBrain
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[2:])
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file) as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    datasets, label_encoders = dataio_prepare(hparams)
    ClassificationBrain(
        modules=hparams["modules"], opt_class=hparams["opt_class"], hparams=hparams,
        run_opts=run_opts, checkpointer=hparams["checkpointer"], label_encoders=label_encoders,
    ).fit_and_test(datasets)
    state = {f"encoder.{k}": v for k, v in hparams["pretrained"].state_dict().items()}
    state.update({f"model.{k}": v for k, v in hparams["model"].state_dict().items()})
    torch.save(state, f"{sys.argv[1]}/rank{dist.get_rank()}.pt")
    """
)


def test_two_gloo_ranks_fine_tune_identically(mini_corpora: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = tiny_export(tmp_path / "encoder", d_model=16, num_layers=1, d_ffn=32,
                          latent_dim=16)
    manifests = tmp_path / "manifests"
    prepare_slurp(str(mini_corpora / "slurp"), str(manifests))
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(worker), str(tmp_path), str(ROOT / "hparams" / "slurp" / "mini.yaml"),
        "--data_folder", "unused", "--pretrained_path", str(encoder),
        "--prep_folder", str(manifests), "--output_folder", str(tmp_path / "run"),
        "--number_of_epochs", "1", "--freeze_encoder", "False", "--freeze_encoder_steps", "2",
        "--encoder_lr", "0.001", "--device", "cpu", "--distributed_backend", "gloo",
        "--noprogressbar",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # No --find_unused_parameters: the fine-tuned encoder (paused steps, mask_emb unused
    # downstream) switches it on by itself; without it DDP fails at the second step.
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for name, value in ranks[0].items():
        assert torch.equal(value, ranks[1][name]), name
    initial = torch.load(encoder / "encoder.ckpt", weights_only=True)
    assert any(not torch.equal(ranks[0][f"encoder.{k}"], v) for k, v in initial.items())
    assert (tmp_path / "run" / "metrics.json").is_file()
