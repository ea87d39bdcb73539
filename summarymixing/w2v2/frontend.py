"""Mel filterbank + CNN front end of SummaryMixing wav2vec 2.0.

The paper replaces wav2vec 2.0's seven-layer waveform CNN by 80-dimensional log-mel filterbanks
(25 ms windows every 10 ms), normalised per sentence, followed by a two-layer 1-D CNN (kernels
``[3, 3]``, strides ``[2, 1]``, 512 channels): one latent frame every 20 ms.

Everything here is SpeechBrain's: ``Fbank``, ``InputNormalization(norm_type="sentence")`` and
``ConvolutionFrontEnd`` (the block SpeechBrain's ``W2VLatentExtractor`` uses, which only takes
raw waveforms). The one addition is exact length bookkeeping: :meth:`FbankFrontEnd.output_lengths`
is the single place that maps waveform lengths to latent-frame counts, read from the modules
themselves (no sample rate or hop is hard-coded).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.convolution import ConvolutionFrontEnd
from speechbrain.nnet.CNN import Conv1d
from speechbrain.nnet.normalization import LayerNorm
from speechbrain.processing.features import InputNormalization
from torch import nn

from summarymixing.architecture import RecordsArguments


class FbankFrontEnd(RecordsArguments, nn.Module):
    """Log-mel filterbank, sentence-level normalisation and a strided 1-D CNN.

    Arguments
    ---------
    sample_rate : int
        Sample rate of the input waveforms, in Hz.
    n_fft : int
        FFT size of the filterbank.
    n_mels : int
        Number of mel filters (the CNN's input channels).
    win_length : float
        Window length in milliseconds.
    hop_length : float
        Hop in milliseconds.
    out_channels : sequence of int
        Channels of each CNN layer; the last one is the latent size ``C``.
    kernel_sizes : sequence of int
        Kernel size of each CNN layer (``valid`` convolutions).
    strides : sequence of int
        Stride of each CNN layer.
    dropout : float
        Dropout after each CNN layer.

    Example
    -------
    >>> frontend = FbankFrontEnd(n_mels=40, out_channels=[32, 32])
    >>> wavs = torch.randn(2, 16000)
    >>> latents, padding = frontend(wavs, torch.tensor([1.0, 0.5]))
    >>> latents.shape, padding.sum(dim=1).tolist()
    (torch.Size([2, 48, 32]), [0, 25])
    >>> frontend.output_lengths(torch.tensor([16000, 8000])).tolist()
    [48, 23]
    """

    TRAINING_OPTIONS = ("dropout",)

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 400,
        n_mels: int = 80,
        win_length: float = 25.0,
        hop_length: float = 10.0,
        out_channels: Sequence[int] = (512, 512),
        kernel_sizes: Sequence[int] = (3, 3),
        strides: Sequence[int] = (2, 1),
        dropout: float = 0.0,
    ):
        super().__init__()
        if not len(out_channels) == len(kernel_sizes) == len(strides) > 0:
            raise ValueError(
                "expected out_channels, kernel_sizes and strides of the same non-zero length, "
                f"got {list(out_channels)}, {list(kernel_sizes)}, {list(strides)}"
            )
        self.fbank = Fbank(
            sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels, win_length=win_length,
            hop_length=hop_length,
        )
        self.normalize = InputNormalization(norm_type="sentence")
        num_blocks = len(out_channels)
        self.cnn = ConvolutionFrontEnd(
            (None, None, n_mels),
            num_blocks=num_blocks,
            num_layers_per_block=1,
            out_channels=list(out_channels),
            kernel_sizes=list(kernel_sizes),
            strides=list(strides),
            dilations=[1] * num_blocks,
            residuals=[False] * num_blocks,
            conv_module=Conv1d,
            activation=nn.GELU,
            norm=LayerNorm,
            dropout=dropout,
            conv_bias=False,
            padding="valid",
            conv_init="kaiming",
        )
        self.norm = nn.LayerNorm(out_channels[-1])
        self.kernel_sizes = list(kernel_sizes)
        self.strides = list(strides)
        self.out_dim = out_channels[-1]

    @property
    def hop_samples(self) -> int:
        """Filterbank hop in samples (as SpeechBrain's STFT rounds it)."""
        return self.fbank.compute_STFT.hop_length

    def fbank_lengths(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Filterbank frames of waveforms of ``num_samples`` samples (centred STFT)."""
        return torch.div(num_samples, self.hop_samples, rounding_mode="floor") + 1

    def output_lengths(
        self, lengths: torch.Tensor, num_samples: int | None = None
    ) -> torch.Tensor:
        """Number of latent frames the front end produces.

        Arguments
        ---------
        lengths : torch.Tensor
            ``(B,)`` absolute waveform lengths in samples, or, when ``num_samples`` is given,
            SpeechBrain relative lengths in ``(0, 1]`` of a batch padded to ``num_samples``.
        num_samples : int, optional
            Padded length of the batch the relative ``lengths`` refer to.

        Returns
        -------
        torch.Tensor
            ``(B,)`` long: latent frames (can be ``<= 0`` for inputs too short for the CNN).

        Example
        -------
        >>> frontend = FbankFrontEnd(n_mels=40, out_channels=[32, 32])
        >>> frontend.output_lengths(torch.tensor([1.0, 0.5]), num_samples=16000).tolist()
        [48, 23]
        """
        if num_samples is not None:
            lengths = torch.round(lengths.double() * num_samples)
        frames = self.fbank_lengths(lengths.long())
        for kernel, stride in zip(self.kernel_sizes, self.strides, strict=True):
            frames = torch.div(frames - kernel, stride, rounding_mode="floor") + 1
        return frames

    def forward(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute latent frames.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(B, S)`` waveforms, right-padded with zeros.
        wav_lens : torch.Tensor, optional
            ``(B,)`` relative lengths in ``(0, 1]`` (SpeechBrain convention); ``None`` = all 1.

        Returns
        -------
        latents : torch.Tensor
            ``(B, T, C)``; values at padded frames are meaningless.
        padding_mask : torch.Tensor
            ``(B, T)`` boolean, ``True`` at padded frames.
        """
        if wavs.dim() != 2:
            raise ValueError(
                f"expected waveforms of shape (batch, samples), got {tuple(wavs.shape)}"
            )
        batch, num_samples = wavs.shape
        if wav_lens is None:
            wav_lens = wavs.new_ones(batch)
        # Lengths are computed where wav_lens lives: on the CPU (as the recipes pass them) the
        # check below costs no wait for the device; elsewhere it is the one read of the step's
        # front end, before any of its work is queued.
        samples = torch.round(wav_lens.double() * num_samples).long()
        needed = self.min_samples()
        if int(samples.min()) < needed:
            raise ValueError(
                f"expected every waveform to hold at least {needed} samples for the front end, "
                f"got lengths {samples.tolist()}"
            )
        samples = samples.to(wavs.device, non_blocking=True)
        with torch.no_grad():
            feats = self.fbank(wavs)  # (B, F, n_mels)
            fbank_frames = self.fbank_lengths(samples)
            # Exact relative lengths so that the statistics cover exactly the valid frames.
            feats = self.normalize(feats, fbank_frames.to(feats.dtype) / feats.shape[1])
        latents = self.norm(self.cnn(feats))  # (B, T, C)
        frames = self.output_lengths(samples).to(latents.device)
        positions = torch.arange(latents.shape[1], device=latents.device)
        padding_mask = positions.unsqueeze(0) >= frames.unsqueeze(1)  # (B, T)
        return latents, padding_mask

    def _apply(
        self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True
    ) -> FbankFrontEnd:
        """``Module.to`` / ``cuda`` / ...; SpeechBrain's ``Fbank`` keeps its STFT window and its
        filters' frequencies as plain tensors, which ``to`` leaves on the CPU, so every call
        would copy them to the device and wait for it: they follow the module's device here
        (their dtype unchanged; they are not in the state dict)."""
        super()._apply(fn, recurse)
        device = next(self.cnn.parameters()).device
        stft, filters = self.fbank.compute_STFT, self.fbank.compute_fbanks
        stft.window = stft.window.to(device)
        for name in ("all_freqs_mat", "f_central", "band"):
            value = getattr(filters, name)
            if not isinstance(value, nn.Parameter):
                setattr(filters, name, value.to(device))
        filters.device_inp = device  # where its filters' zero floor is made
        return self

    def min_samples(self) -> int:
        """Smallest waveform length (in samples) that yields at least one latent frame.

        Example
        -------
        >>> FbankFrontEnd(n_mels=40, out_channels=[32, 32]).min_samples()
        960
        """
        frames = 1
        for kernel, stride in zip(reversed(self.kernel_sizes), reversed(self.strides), strict=True):
            frames = (frames - 1) * stride + kernel
        return (frames - 1) * self.hop_samples
