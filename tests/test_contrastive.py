"""The contrastive loss without materialised negatives equals SpeechBrain's ``ContrastiveLoss`` on
the negatives of its ``sample_negatives`` (same random draw): loss, accuracy and gradients."""

import pytest
import torch
from speechbrain.lobes.models.wav2vec import sample_negatives
from speechbrain.nnet.losses import ContrastiveLoss

from summarymixing.w2v2.pretrain import (
    _exact_keys,
    contrastive_logits,
    masked_frames_per_row,
    sample_negative_indices,
    w2v2_objectives,
)


def _inputs(batch: int, frames: int, size: int, codes: int | None, seed: int):
    """Embeddings and targets requiring grad; with ``codes``, targets drawn from a codebook of
    that many vectors, so many negatives equal their target (as quantised targets do)."""
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(batch, frames, size, generator=generator)
    if codes is None:
        targets = torch.randn(batch, frames, size, generator=generator)
    else:
        codebook = torch.randn(codes, size, generator=generator)
        targets = codebook[torch.randint(codes, (batch, frames), generator=generator)]
    return embeddings.requires_grad_(), targets.requires_grad_()


def _speechbrain(embeddings, targets, num_negatives, logit_temp, seed):
    torch.manual_seed(seed)
    negatives = sample_negatives(targets, num_negatives)  # (N, B, M, F)
    loss, accuracy = ContrastiveLoss(logit_temp)(embeddings, targets, negatives)
    return loss, accuracy, torch.rand(3)  # the generator's state after the draw


def _ours(embeddings, targets, num_negatives, logit_temp, seed):
    torch.manual_seed(seed)
    batch, frames, _ = targets.shape
    outputs = {"embeddings": embeddings, "targets": targets,
               "num_masked": torch.tensor(batch * frames), "diversity_loss": torch.tensor(0.0),
               "code_perplex": torch.tensor(1.0), "prob_perplex": torch.tensor(1.0)}
    stats = w2v2_objectives(outputs, ContrastiveLoss(logit_temp), num_negatives, 0.0)
    return stats["loss"], stats["accuracy"], torch.rand(3)


@pytest.mark.parametrize(
    ("batch", "frames", "size", "num_negatives", "codes"),
    [(1, 9, 6, 4, None), (3, 7, 5, 4, None), (4, 12, 8, 20, 3), (2, 2, 4, 3, None)],
)
def test_loss_and_gradients_equal_speechbrain(batch, frames, size, num_negatives, codes):
    results = []
    for compute in (_speechbrain, _ours):
        embeddings, targets = _inputs(batch, frames, size, codes, seed=batch * 100 + frames)
        loss, accuracy, after = compute(embeddings, targets, num_negatives, 0.1, seed=7)
        loss.backward()
        results.append((loss.detach(), accuracy, after, embeddings.grad, targets.grad))
    (loss_sb, acc_sb, after_sb, gx_sb, gy_sb), (loss, acc, after, gx, gy) = results
    assert torch.isfinite(loss_sb)
    torch.testing.assert_close(loss, loss_sb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(acc, acc_sb)
    torch.testing.assert_close(after, after_sb, rtol=0, atol=0)  # same random draws
    torch.testing.assert_close(gx, gx_sb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gy, gy_sb, rtol=1e-5, atol=1e-5)


def test_negatives_equal_to_the_target_are_masked():
    # Two distinct targets per row: every negative of another value scores, every equal one is
    # -inf, exactly where SpeechBrain's negatives equal the target.
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat(3, 1).view(2, 3, 2)
    torch.manual_seed(0)
    negatives = sample_negatives(targets, 5)  # (N, B, M, F)
    torch.manual_seed(0)
    logits = contrastive_logits(targets, targets, sample_negative_indices(2, 3, 5))
    expected = (negatives == targets).all(-1).permute(1, 2, 0)  # (B, M, N)
    assert bool(expected.any()) and not bool(expected.all())
    assert torch.equal(torch.isneginf(logits[..., 1:]), expected)
    assert torch.equal(logits[..., 1:][~expected], torch.zeros(int((~expected).sum())))


def test_sample_negative_indices_rejects_one_frame():
    with pytest.raises(ValueError, match="at least 2 masked frames"):
        sample_negative_indices(1, 1, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_exact_keys_equal_exactly_for_equal_rows(dtype):
    generator = torch.Generator().manual_seed(0)
    distinct = torch.randn(50, 16, generator=generator).to(dtype)
    rows = torch.cat([distinct, distinct[:10], -distinct[:5] * 0.0, distinct[:5] * 0.0])
    keys = _exact_keys(rows)
    assert len(set(keys[:50].tolist())) == 50  # distinct rows, distinct keys
    assert torch.equal(keys[50:60], keys[:10])  # the repeated rows
    assert torch.equal(keys[60:65], keys[65:70])  # -0.0 == 0.0, as == compares floats
    nudged = distinct.clone()
    nudged[:, 3] = torch.nextafter(nudged[:, 3], torch.full_like(nudged[:, 3], 10.0))
    assert not (_exact_keys(nudged) == keys[:50]).any()  # one ulp in one element differs


def test_masked_frames_per_row_needs_the_same_count_of_at_least_two():
    assert masked_frames_per_row(torch.tensor([[1, 1, 0], [0, 1, 1]]).bool()) == 2
    with pytest.raises(ValueError, match=r"same number \(>= 2\).*\[2, 1\]"):
        masked_frames_per_row(torch.tensor([[1, 1, 0], [0, 0, 1]]).bool())
    with pytest.raises(ValueError, match=r"got \[1, 1\]"):
        masked_frames_per_row(torch.tensor([[1, 0], [0, 1]]).bool())
