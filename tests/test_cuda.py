"""The CUDA paths: run where a GPU is (``python -m pytest tests/test_cuda.py``); skipped on CPU-only
machines (CI). The contrastive objective equals SpeechBrain's on the GPU, padding leaves an
utterance's encoding unchanged there too, fp16/bf16 autocast keeps the SummaryMixing branches
in the autocast dtype and their mean accurate, and a pre-training step runs under each
precision without making the host wait for the device."""

import pytest
import torch
from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig

from summarymixing import ConformerEncoder
from summarymixing.benchmark.pretrain import pretrain_step, random_batch
from summarymixing.w2v2 import FbankFrontEnd
from tests.test_contrastive import _inputs, _ours, _speechbrain

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def full_fp32_precision():
    """Comparisons in true fp32: no TF32 in matrix products or cuDNN convolutions (which round
    inputs to 10 mantissa bits, differently for different batch shapes)."""
    matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.set_float32_matmul_precision(matmul)
    torch.backends.cudnn.allow_tf32 = cudnn


@pytest.mark.parametrize("codes", [None, 3])
def test_contrastive_objective_equals_speechbrain_on_cuda(codes):
    results = []
    for compute in (_speechbrain, _ours):
        embeddings, targets = (t.detach().to(CUDA).requires_grad_()
                               for t in _inputs(3, 40, 16, codes, seed=5))
        loss, accuracy, _ = compute(embeddings, targets, 20, 0.1, seed=7)
        loss.backward()
        results.append((loss.detach(), accuracy, embeddings.grad, targets.grad))
    for ours, theirs in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def _encoder(attention_type: str) -> ConformerEncoder:
    torch.manual_seed(0)
    encoder = ConformerEncoder(2, 32, 64, 4, kernel_size=7, attention_type=attention_type)
    return encoder.to(CUDA).eval()


@pytest.mark.parametrize("attention_type", ["SummaryMixing", "regularMHA", "SDPA"])
@pytest.mark.parametrize("chunk", [None, DynChunkTrainConfig(4, 2)])
def test_padding_leaves_an_utterance_unchanged_on_cuda(attention_type, chunk):
    encoder = _encoder(attention_type)
    utterance = torch.randn(1, 37, 32, device=CUDA)
    padded = torch.cat([utterance, torch.randn(1, 23, 32, device=CUDA)], dim=1)
    batch = torch.cat([padded, torch.randn(1, 60, 32, device=CUDA)])
    padding = torch.zeros(2, 60, dtype=torch.bool, device=CUDA)
    padding[0, 37:] = True
    with torch.no_grad():
        alone = encoder(utterance, dynchunktrain_config=chunk)[0]
        in_batch = encoder(batch, src_key_padding_mask=padding, dynchunktrain_config=chunk)[0]
    torch.testing.assert_close(in_batch[:1, :37], alone, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_keeps_summarymixing_in_its_dtype_and_the_mean_accurate(dtype):
    encoder = _encoder("SummaryMixing")
    frames = torch.randn(2, 3000, 32, device=CUDA) + 5.0  # long, with a large mean
    seen = []
    branches = [module for name, module in encoder.named_modules()
                if name.endswith(("local_proj", "summary_proj"))]
    hooks = [branch.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
             for branch in branches]
    with torch.no_grad():
        reference = encoder(frames)[0]
        with torch.autocast("cuda", dtype=dtype):
            mixed = encoder(frames)[0]
    for hook in hooks:
        hook.remove()
    assert seen and set(seen[len(seen) // 2:]) == {dtype}  # the autocast pass
    assert torch.isfinite(mixed).all()
    error = (mixed.float() - reference).norm() / reference.norm()
    assert error < (2e-2 if dtype == torch.bfloat16 else 5e-3)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_pretraining_step_trains_without_waiting_for_the_device(precision):
    torch.manual_seed(0)
    batch = random_batch(3.0, 2, FbankFrontEnd(out_channels=[32, 32]))
    step = pretrain_step("SummaryMixing", "tiny", batch, CUDA, precision=precision)
    step()  # warm-up (allocations, cuDNN choices)
    step.settle()  # fp16: past the GradScaler's first, overflowing steps
    before = [p.detach().clone() for p in step.model.parameters()]
    syncs = step.sync_audit()
    assert all(torch.isfinite(p).all() for p in step.model.parameters())
    assert any(not torch.equal(b, p) for b, p in zip(before, step.model.parameters(), strict=True))
    assert not syncs, syncs  # fp16 too: the GradScaler hands its flags to the fused AdamW
