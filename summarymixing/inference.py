"""Every hidden state of a pre-trained encoder, with SpeechBrain's inference interface.

::

    from summarymixing.inference import W2V2Features

    features = W2V2Features.from_hparams(source="results/pretrain/SummaryMixing_w2v2/1986/encoder")
    hidden_states = features.encode_file("utterance.flac")   # L + 1 tensors (1, T, D)
    hidden_states = features.encode_batch(wavs, wav_lens)    # L + 1 tensors (B, T, D)

``source`` is an export folder (``summarymixing.export.export_encoder``: ``hyperparams.yaml`` +
``encoder.ckpt``), local or on the Hugging Face hub, loaded by SpeechBrain's ``Pretrained``
machinery (``run_opts={"device": "cuda"}`` etc. work as for any SpeechBrain model).
"""

from __future__ import annotations

import torch
from speechbrain.inference.interfaces import Pretrained

from data_prep.audio import read_audio


class W2V2Features(Pretrained):
    """A pre-trained SummaryMixing (or MHSA) wav2vec 2.0 encoder for feature extraction.

    Arguments
    ---------
    modules : dict
        ``{"encoder": W2V2Encoder}`` (``from_hparams`` builds it).
    hparams : dict
        ``sample_rate`` (and an ``audio_normalizer``).
    **kwargs
        SpeechBrain's ``Pretrained`` options (``run_opts``, ``freeze_params``).

    Example
    -------
    >>> import tempfile
    >>> from summarymixing import ConformerEncoder
    >>> from summarymixing.export import export_encoder
    >>> from summarymixing.w2v2 import FbankFrontEnd, W2V2Encoder
    >>> folder = export_encoder(
    ...     W2V2Encoder(FbankFrontEnd(n_mels=40, out_channels=[32, 32]),
    ...                 ConformerEncoder(2, 16, 32, 4, kernel_size=3, output_hidden_states=True),
    ...                 d_model=16),
    ...     tempfile.mkdtemp() + "/encoder",
    ... )
    >>> features = W2V2Features.from_hparams(source=str(folder))
    >>> hidden = features.encode_batch(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
    >>> len(hidden), hidden[-1].shape
    (3, torch.Size([2, 48, 16]))
    >>> features.frame_lengths(torch.tensor([1.0, 0.5]), 16000).tolist()
    [48, 23]
    """

    HPARAMS_NEEDED = ["sample_rate"]
    MODULES_NEEDED = ["encoder"]

    def encode_batch(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Hidden states of a batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(B, S)`` waveforms at ``hparams.sample_rate``.
        wav_lens : torch.Tensor, optional
            ``(B,)`` relative lengths in ``(0, 1]`` (``None``: no padding).

        Returns
        -------
        list of torch.Tensor
            ``num_hidden_states`` tensors ``(B, T, D)``: the input embeddings, then every
            layer's output; frames past :meth:`frame_lengths` are padding.
        """
        wavs = wavs.to(self.device).float()
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=self.device)
        with torch.no_grad():
            return self.mods.encoder(wavs, wav_lens.to(self.device))

    def encode_file(self, path: str) -> list[torch.Tensor]:
        """Hidden states ``(1, T, D)`` of one local audio file (WAV, FLAC, MP3, OGG: read with
        soundfile, mixed to mono, resampled to ``hparams.sample_rate``)."""
        waveform = read_audio(str(path), sample_rate=self.hparams.sample_rate)
        return self.encode_batch(waveform.unsqueeze(0))

    def frame_lengths(self, wav_lens: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Valid frames ``(B,)`` of each utterance of a batch padded to ``num_samples``."""
        return self.mods.encoder.output_lengths(wav_lens.cpu(), num_samples)

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None) -> list:
        """:meth:`encode_batch`."""
        return self.encode_batch(wavs, wav_lens)
