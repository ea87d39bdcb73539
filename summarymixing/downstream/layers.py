"""The bridge between a pre-trained encoder and a downstream head.

- :class:`HiddenStates` runs the encoder and stacks its hidden states (input embeddings and every
  layer) into one ``(B, T, L + 1, D)`` tensor; it owns the frozen / fine-tuned switch.
- :class:`WeightedLayerSum` is the MP3S read-out: a learned softmax-weighted sum over the
  ``L + 1`` hidden states (Zaiem et al., "Speech Self-Supervised Representations Benchmarking:
  a Case for Larger Probing Heads", 2023).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


class WeightedLayerSum(nn.Module):
    """Softmax-weighted sum of the ``L + 1`` hidden states of an encoder.

    Arguments
    ---------
    num_hidden_states : int
        ``L + 1``: the input embeddings and every layer's output.
    layer_norm : bool
        Normalise each hidden state over its features (no learned affine) before the sum. Off
        by default, as in the authors' MP3S runs (a plain softmax-weighted sum); an option that
        makes the weights compare layers of different scales.

    Example
    -------
    >>> mix = WeightedLayerSum(3)
    >>> mix(torch.randn(2, 7, 3, 16)).shape
    torch.Size([2, 7, 16])
    >>> mix.weights().tolist()  # uniform at initialisation
    [0.3333333432674408, 0.3333333432674408, 0.3333333432674408]
    """

    def __init__(self, num_hidden_states: int, layer_norm: bool = False):
        super().__init__()
        if num_hidden_states < 1:
            raise ValueError(f"expected num_hidden_states >= 1, got {num_hidden_states}")
        self.logits = nn.Parameter(torch.zeros(num_hidden_states))
        self.layer_norm = layer_norm

    def weights(self) -> torch.Tensor:
        """The current layer weights ``(L + 1,)`` (a softmax: positive, summing to one)."""
        return self.logits.softmax(dim=0)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Mix ``hidden_states`` ``(B, T, L + 1, D)`` into ``(B, T, D)``.

        Arguments
        ---------
        hidden_states : torch.Tensor
            ``(B, T, L + 1, D)``.

        Returns
        -------
        torch.Tensor
            ``(B, T, D)``.
        """
        if hidden_states.dim() != 4 or hidden_states.shape[2] != self.logits.numel():
            raise ValueError(
                f"expected hidden states of shape (batch, time, {self.logits.numel()}, D), "
                f"got {tuple(hidden_states.shape)}"
            )
        if self.layer_norm:
            hidden_states = F.layer_norm(hidden_states, hidden_states.shape[-1:])
        weights = self.weights().to(hidden_states.dtype)
        return torch.einsum("btld,l->btd", hidden_states, weights)  # (B, T, D)


class HiddenStates(nn.Module):
    """Run a pre-trained encoder and stack all its hidden states, frozen or fine-tuned.

    Frozen (``freeze=True``, the default protocol), the encoder's parameters do not require
    gradients, it stays in eval mode whatever ``train()`` asks (no dropout, no layer drop), and
    its forward pass runs under ``torch.no_grad()``. Fine-tuned (``freeze=False``), its
    parameters require gradients; :meth:`set_frozen` pauses it (eval mode, no graph) for the
    first steps of fine-tuning without touching ``requires_grad``, which DDP needs fixed.

    Arguments
    ---------
    encoder : nn.Module
        Called as ``encoder(wavs, wav_lens)`` and returning the list of ``L + 1`` hidden states
        ``(B, T, D)`` (``summarymixing.w2v2.encoder.W2V2Encoder``).
    freeze : bool
        Freeze for good (``True``) or fine-tune (``False``).

    Example
    -------
    >>> class Toy(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.proj = nn.Linear(4, 8)
    ...     def forward(self, wavs, wav_lens):
    ...         x = self.proj(wavs.unflatten(1, (-1, 4)))  # (B, T, 8)
    ...         return [x, x.relu()]
    >>> states = HiddenStates(Toy()).train()
    >>> out = states(torch.randn(2, 40), torch.ones(2))
    >>> out.shape, out.requires_grad, states.encoder.training
    (torch.Size([2, 10, 2, 8]), False, False)
    """

    def __init__(self, encoder: nn.Module, freeze: bool = True):
        super().__init__()
        self.encoder = encoder
        self.freeze = freeze
        self.frozen = freeze
        encoder.requires_grad_(not freeze)
        encoder.train(False)
        self.training = False

    def set_frozen(self, frozen: bool) -> None:
        """Pause (``True``) or resume (``False``) fine-tuning; an encoder built frozen stays
        frozen.

        Arguments
        ---------
        frozen : bool
            Pause (``True``) or resume (``False``).
        """
        if self.freeze and not frozen:
            raise ValueError("expected an encoder built with freeze=False to unfreeze, got frozen")
        self.frozen = frozen
        self.encoder.train(self.training and not frozen)

    def train(self, mode: bool = True) -> HiddenStates:
        """Set train mode; a frozen encoder stays in eval mode.

        Arguments
        ---------
        mode : bool
            Train (``True``) or eval (``False``) mode.

        Returns
        -------
        HiddenStates
            This module.
        """
        self.training = mode
        self.encoder.train(mode and not self.frozen)
        return self

    def frame_lengths(
        self, wav_lens: torch.Tensor, num_samples: int, num_frames: int
    ) -> torch.Tensor:
        """Relative lengths ``(B,)`` of the hidden states (``num_frames`` frames) of a batch of
        waveforms padded to ``num_samples`` with relative lengths ``wav_lens`` ``(B,)``.

        They count the frames each utterance has when encoded alone (the encoder's
        ``output_lengths``); scaling ``wav_lens`` by ``num_frames`` instead can be off by one
        frame, which then enters the head's pooling and CTC lengths and makes the result depend
        on the batch's padding. Encoders without ``output_lengths`` keep ``wav_lens``.

        Arguments
        ---------
        wav_lens : torch.Tensor
            ``(B,)`` relative lengths of the waveforms.
        num_samples : int
            The padded length of the waveforms.
        num_frames : int
            The padded length of the hidden states.

        Returns
        -------
        torch.Tensor
            ``(B,)`` relative lengths of the hidden states.
        """
        output_lengths = getattr(self.encoder, "output_lengths", None)
        if output_lengths is None:
            return wav_lens
        frames = output_lengths(wav_lens, num_samples).clamp(1, num_frames)  # (B,)
        return frames.to(wav_lens.dtype) / num_frames

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
        """Encode ``wavs`` ``(B, S)`` (relative lengths ``wav_lens`` ``(B,)``) into the stacked
        hidden states ``(B, T, L + 1, D)``.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(B, S)`` padded waveforms.
        wav_lens : torch.Tensor
            ``(B,)`` relative lengths.

        Returns
        -------
        torch.Tensor
            ``(B, T, L + 1, D)``.
        """
        context = torch.no_grad() if self.frozen else contextlib.nullcontext()
        with context:
            hidden = self.encoder(wavs, wav_lens)
            return torch.stack(list(hidden), dim=2)  # (B, T, L + 1, D)

