"""wav2vec 2.0 pre-training pieces around ``W2V2Encoder``: the model with its quantiser, the
masking collate function and the objective.

The quantiser (``W2VTargetQuantiser``) and span masking (``compute_mask`` through
``w2v_mask_collate_fn``) are SpeechBrain's; this module composes them with the filterbank front
end. The contrastive loss is SpeechBrain's ``ContrastiveLoss`` on the negatives of its
``sample_negatives`` (same random draw, same logits, same loss and gradients), computed without
materialising the ``(num_negatives, B, M, final_dim)`` negatives: every masked frame is scored
once against the targets its negatives are drawn from (a ``(B, M, M)`` similarity) and the
sampled negatives' scores are gathered (``contrastive_logits``).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from speechbrain.lobes.models.wav2vec import W2VTargetQuantiser, w2v_mask_collate_fn
from speechbrain.nnet.losses import ContrastiveLoss
from torch import nn

from summarymixing.w2v2.encoder import W2V2Encoder
from summarymixing.w2v2.frontend import FbankFrontEnd


class W2V2Pretrainer(nn.Module):
    """The whole pre-training model: encoder, target quantiser and output projection.

    One module so that DDP wraps (and synchronises) everything in one ``forward``.

    Arguments
    ---------
    encoder : W2V2Encoder
        Front end + context encoder.
    quantiser : W2VTargetQuantiser
        Gumbel quantiser of the front-end latents (``in_dim`` = the latent size).
    final_dim : int
        Size of the contrastive space (the quantiser's ``out_dim``).

    Example
    -------
    >>> from summarymixing import ConformerEncoder
    >>> from summarymixing.w2v2 import FbankFrontEnd
    >>> encoder = W2V2Encoder(FbankFrontEnd(n_mels=40, out_channels=[32, 32]),
    ...                       ConformerEncoder(1, 16, 32, 4, kernel_size=3,
    ...                                        output_hidden_states=True), d_model=16)
    >>> model = W2V2Pretrainer(encoder, W2VTargetQuantiser(32, 8, num_vars=10), 8)
    >>> mask = torch.zeros(2, 48, dtype=torch.bool)
    >>> mask[:, 5:15] = True
    >>> out = model(torch.randn(2, 16000), torch.ones(2), mask)
    >>> out["embeddings"].shape, out["targets"].shape
    (torch.Size([2, 10, 8]), torch.Size([2, 10, 8]))
    """

    def __init__(self, encoder: W2V2Encoder, quantiser: W2VTargetQuantiser, final_dim: int):
        super().__init__()
        self.encoder = encoder
        self.quantiser = quantiser
        self.feat_proj = nn.Linear(encoder.d_model, final_dim)

    def forward(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor, mask: torch.Tensor
    ) -> dict[str, Any]:
        """Encode masked inputs; predict and quantise the masked frames.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(B, S)`` waveforms.
        wav_lens : torch.Tensor
            ``(B,)`` relative lengths.
        mask : torch.Tensor
            ``(B, T)`` boolean, ``True`` at masked latent frames; the same number per row.

        Returns
        -------
        dict
            ``embeddings`` and ``targets`` ``(B, M, final_dim)`` at the ``M`` masked frames of
            each row, ``num_masked``, and the quantiser's ``diversity_loss``, ``code_perplex``,
            ``prob_perplex``, ``num_vars``, ``temp``.
        """
        masked_per_row = masked_frames_per_row(mask)  # read before any work is queued
        mask = mask.to(wavs.device, non_blocking=True)
        latents, padding_mask = self.encoder.frontend(wavs, wav_lens)  # (B, T, C)
        if mask.shape != latents.shape[:2]:
            raise ValueError(
                f"expected a mask of shape {tuple(latents.shape[:2])} (latent frames), "
                f"got {tuple(mask.shape)}"
            )
        # The masked frames' positions (B, M) in time order, without a data-dependent shape.
        positions = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)[:, :masked_per_row]
        context = self.encoder.encode(latents, padding_mask, mask)[-1]  # (B, T, D)
        embeddings = self.feat_proj(_gather_frames(context, positions))  # (B, M, final_dim)
        targets, meta = self.quantiser(_gather_frames(latents, positions))
        return {"embeddings": embeddings, "targets": targets, "num_masked": mask.sum(), **meta}


def masked_frames_per_row(mask: torch.Tensor) -> int:
    """The number ``M`` of masked frames in every row of ``mask`` ``(B, T)``; fails unless all
    rows hold the same number, at least 2 (what the contrastive objective needs).

    This reads the mask's row counts on the host: one read of the device, cheap at the start
    of a step (none when the mask is on the CPU, as the collate function makes it).

    Example
    -------
    >>> masked_frames_per_row(torch.tensor([[True, True, False], [False, True, True]]))
    2
    """
    per_row = mask.sum(dim=1).tolist()
    if min(per_row) != max(per_row) or per_row[0] < 2:
        raise ValueError(
            f"expected the same number (>= 2) of masked frames in every row, got {per_row}"
        )
    return per_row[0]


def _gather_frames(frames: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``frames`` ``(B, T, C)`` at ``positions`` ``(B, M)``: ``(B, M, C)``."""
    return frames.gather(1, positions.unsqueeze(-1).expand(-1, -1, frames.shape[-1]))


def min_maskable_frames(mask_prob: float, mask_length: int) -> int:
    """Fewest frames for which SpeechBrain's ``compute_mask`` always succeeds: it places up to
    ``int(mask_prob * frames / mask_length + 2)`` spans of ``mask_length`` frames and fails
    (at random) when they cannot fit in the utterance.

    Example
    -------
    >>> min_maskable_frames(0.65, 10)
    58
    """
    return math.floor(2 * mask_length / (1.0 - mask_prob)) + 1


class MaskedBatch(tuple):
    """A pre-training batch ``(wavs, wav_lens, mask)`` that also carries its utterance ids as
    ``id`` (as SpeechBrain's ``PaddedBatch`` does), so errors can name them.

    Example
    -------
    >>> batch = MaskedBatch((torch.ones(1, 4), torch.ones(1), torch.ones(1, 2)), ["a"])
    >>> wavs, wav_lens, mask = batch
    >>> batch.id, wavs.shape
    (['a'], torch.Size([1, 4]))
    """

    id: list[str]

    def __new__(cls, tensors: tuple, ids: list[str]) -> MaskedBatch:
        batch = super().__new__(cls, tensors)
        batch.id = list(ids)
        return batch

    def __reduce__(self) -> tuple:
        """Picklable across data-loader workers."""
        return MaskedBatch, (tuple(self), self.id)


def _collate_with_ids(samples: list[dict], **kwargs: Any) -> MaskedBatch:
    return MaskedBatch(w2v_mask_collate_fn(samples, **kwargs), [s["id"] for s in samples])


def mask_collate_fn(
    frontend: FbankFrontEnd, mask_prob: float, mask_length: int
) -> partial:
    """SpeechBrain's ``w2v_mask_collate_fn`` with this front end's exact output lengths: a
    collate function turning ``[{"id", "sig"}, ...]`` into a :class:`MaskedBatch`
    ``(wavs, wav_lens, mask)`` with the ids.

    Example
    -------
    >>> collate = mask_collate_fn(FbankFrontEnd(n_mels=40, out_channels=[32, 32]), 0.65, 10)
    >>> batch = collate([{"id": "a", "sig": torch.randn(32000)},
    ...                  {"id": "b", "sig": torch.randn(24000)}])
    >>> wavs, lens, mask = batch
    >>> wavs.shape, mask.shape, mask.sum(dim=1)[0] == mask.sum(dim=1)[1], batch.id
    (torch.Size([2, 32000]), torch.Size([2, 98]), tensor(True), ['a', 'b'])
    """
    return partial(
        _collate_with_ids,
        get_out_len_fn=frontend.output_lengths,
        mask_prob=mask_prob,
        mask_length=mask_length,
    )


def sample_negative_indices(
    batch: int, frames: int, num_negatives: int, device: torch.device | None = None
) -> torch.Tensor:
    """The negatives SpeechBrain's ``sample_negatives`` draws, as indices: the same random draw
    (one ``torch.randint`` of ``(B, M * N)`` on the CPU generator), without gathering targets.

    ``sample_negatives`` draws, for frame ``t`` of row ``b``, an index ``j`` in ``0 .. M - 1``
    other than ``t`` and takes the target at flat position ``b * (M - 1) + j`` of the ``(B * M,
    F)`` targets: row ``b``'s window starts ``b`` frames before row ``b`` itself (for ``b > 0``
    it reaches into the end of row ``b - 1`` and may hit frame ``t``'s own target, which
    ``ContrastiveLoss`` then masks). ``contrastive_logits`` keeps exactly these semantics.

    Arguments
    ---------
    batch : int
        ``B``.
    frames : int
        ``M``, masked frames per row (>= 2).
    num_negatives : int
        ``N``.
    device : torch.device, optional
        Where to put the indices (drawn on the CPU, as SpeechBrain does).

    Returns
    -------
    torch.Tensor
        ``(B, M, N)`` long, ``j`` in ``0 .. M - 1``, never ``t``: window positions.

    Example
    -------
    >>> idx = sample_negative_indices(2, 5, 3)
    >>> idx.shape, bool((idx != torch.arange(5).view(1, 5, 1)).all())
    (torch.Size([2, 5, 3]), True)
    """
    if frames < 2:
        raise ValueError(f"expected at least 2 masked frames per row, got {frames}")
    with torch.no_grad():
        own = torch.arange(frames).unsqueeze(-1).expand(-1, num_negatives).flatten()  # (M * N,)
        indices = torch.randint(low=0, high=frames - 1, size=(batch, frames * num_negatives))
        indices[indices >= own] += 1  # skip the frame itself, uniform over the others
    indices = indices.view(batch, frames, num_negatives)
    if device is not None and torch.device(device).type == "cuda":
        # Through page-locked memory: the copy is queued, the host does not wait for the device.
        return indices.pin_memory().to(device, non_blocking=True)
    return indices.to(device)


def _windows(rows: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
    """Row ``b``'s window of ``sample_negatives``: flat positions ``b * (M - 1) .. b * (M - 1)
    + M - 1`` of ``rows`` ``(B * M, ...)``, as a view ``(B, ..., M)`` (``unfold``, whose backward
    adds the gradients of the overlapping frames)."""
    return rows.unfold(0, frames, frames - 1)[:batch]


def contrastive_logits(
    embeddings: torch.Tensor, targets: torch.Tensor, neg_indices: torch.Tensor,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Cosine similarities of every masked frame's embedding with its target and its sampled
    negatives, as SpeechBrain's ``ContrastiveLoss`` computes them from ``sample_negatives``
    (fp32, ``-inf`` where a negative equals the target, cast back to the embeddings' dtype),
    without materialising the negatives: each frame is scored once against its whole window of
    targets (``(B, M, M)``) and the sampled scores are gathered.

    Arguments
    ---------
    embeddings : torch.Tensor
        ``(B, M, F)`` predictions at the masked frames.
    targets : torch.Tensor
        ``(B, M, F)`` quantised targets.
    neg_indices : torch.Tensor
        ``(B, M, N)`` window positions from ``sample_negative_indices``.
    eps : float
        Smallest norm (as ``torch.cosine_similarity``).

    Returns
    -------
    torch.Tensor
        ``(B, M, 1 + N)``: the target's similarity first, then the negatives'.

    Example
    -------
    >>> y = torch.randn(2, 6, 4)
    >>> logits = contrastive_logits(y, y, sample_negative_indices(2, 6, 3))
    >>> logits.shape, torch.allclose(logits[..., 0], torch.ones(2, 6))
    (torch.Size([2, 6, 4]), True)
    """
    batch, frames, size = targets.shape
    if embeddings.shape != targets.shape or neg_indices.shape[:2] != (batch, frames):
        raise ValueError(
            f"expected embeddings and targets (B, M, F) and neg_indices (B, M, N) alike, got "
            f"{tuple(embeddings.shape)}, {tuple(targets.shape)}, {tuple(neg_indices.shape)}"
        )
    with torch.autocast(embeddings.device.type, enabled=False):
        x = embeddings.float()
        y = targets.float()
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(eps)  # (B, M, F) unit rows
        y = y / y.norm(dim=-1, keepdim=True).clamp_min(eps)
        positive = (x * y).sum(dim=-1, keepdim=True)  # (B, M, 1)
        windows = _windows(y.reshape(batch * frames, size), batch, frames)  # (B, F, M)
        scores = torch.bmm(x, windows)  # (B, M, M): frame t against window position j
        negative = scores.gather(2, neg_indices)  # (B, M, N)
        logits = torch.cat([positive, negative], dim=-1).type_as(embeddings)
    with torch.no_grad():
        # Negatives equal (in value, as SpeechBrain compares) to the target: compared through
        # exact integer keys of the targets' bits (no data-dependent shape, no host read).
        keys = _exact_keys(targets.reshape(batch * frames, size))  # (B * M,)
        window_keys = _windows(keys, batch, frames)  # (B, M)
        neg_keys = window_keys.gather(1, neg_indices.flatten(1)).view_as(neg_indices)
        neg_is_pos = neg_keys == keys.view(batch, frames, 1)  # (B, M, N)
    return logits.masked_fill(F.pad(neg_is_pos, (1, 0)), float("-inf"))


def _exact_keys(rows: torch.Tensor) -> torch.Tensor:
    """An int64 key per row of ``rows`` ``(R, F)``: equal rows (as ``==`` compares floats, so
    ``-0.0`` equals ``0.0``) get equal keys, whatever the reduction order, since the key is a
    sum modulo 2**64 of each element's bits times a fixed odd multiplier; different rows share
    a key with probability about 2**-60."""
    bits = (rows + 0.0).contiguous()  # -0.0 + 0.0 = +0.0
    integer = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[bits.element_size()]
    values = bits.view(integer).long()  # (R, F)
    generator = torch.Generator(values.device).manual_seed(0x5EED)  # drawn where the rows are
    multipliers = torch.randint(-(2**62), 2**62, (values.shape[1],), generator=generator,
                                device=values.device) * 2 + 1
    return (values * multipliers).sum(dim=1)


def w2v2_objectives(
    outputs: dict[str, Any],
    loss_fn: ContrastiveLoss,
    num_negatives: int,
    diversity_loss_weight: float,
) -> dict[str, torch.Tensor]:
    """Contrastive loss against ``num_negatives`` distractors plus the weighted diversity loss.

    The contrastive loss is SpeechBrain's ``ContrastiveLoss`` (its ``logit_temp``) on the
    negatives its ``sample_negatives`` draws, computed by ``contrastive_logits`` without
    materialising them (same random draw, loss and gradients).

    As in wav2vec 2.0 (and SpeechBrain's recipe), the contrastive loss is summed over masked
    frames and the diversity loss is scaled by their number, so ``loss`` is a sum;
    ``contrastive_per_frame`` is the mean for logging.

    Arguments
    ---------
    outputs : dict
        ``W2V2Pretrainer``'s outputs: ``embeddings`` and ``targets`` ``(B, M, F)``,
        ``num_masked``, ``diversity_loss``, ``code_perplex``, ``prob_perplex``.
    loss_fn : ContrastiveLoss
        SpeechBrain's loss; its ``logit_temp`` divides the cosine similarities.
    num_negatives : int
        Distractors per masked frame.
    diversity_loss_weight : float
        Weight of the diversity loss.

    Returns
    -------
    dict
        ``loss`` (to back-propagate), ``contrastive_per_frame``, ``accuracy`` (of picking the
        true target; chance is ``1 / (num_negatives + 1)``), ``diversity_loss``,
        ``code_perplex``, ``prob_perplex``.

    Example
    -------
    >>> outputs = {"embeddings": torch.randn(2, 12, 8), "targets": torch.randn(2, 12, 8),
    ...            "num_masked": torch.tensor(24), "diversity_loss": torch.tensor(0.5),
    ...            "code_perplex": torch.tensor(3.0), "prob_perplex": torch.tensor(4.0)}
    >>> stats = w2v2_objectives(outputs, ContrastiveLoss(0.1), 5, 0.1)
    >>> bool(stats["loss"] > 0), 0.0 <= float(stats["accuracy"]) <= 1.0
    (True, True)
    """
    targets = outputs["targets"]
    batch, frames, _ = targets.shape
    neg_indices = sample_negative_indices(batch, frames, num_negatives, targets.device)
    logits = contrastive_logits(outputs["embeddings"], targets, neg_indices).flatten(0, 1)
    true_class = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    contrastive = F.cross_entropy(logits / loss_fn.logit_temp, true_class, reduction="sum")
    accuracy = (logits.argmax(dim=-1) == 0).float().mean()
    num_masked = outputs["num_masked"].to(contrastive.dtype)
    diversity = outputs["diversity_loss"]
    return {
        "loss": contrastive + diversity_loss_weight * diversity * num_masked,
        "contrastive_per_frame": contrastive.detach() / num_masked,
        "accuracy": accuracy.detach(),
        "diversity_loss": diversity.detach(),
        "code_perplex": outputs["code_perplex"].detach(),
        "prob_perplex": outputs["prob_perplex"].detach(),
    }
