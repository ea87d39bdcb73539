"""The wav2vec 2.0 encoder: front end + projection + positions + context encoder.

``W2V2Encoder`` is what pre-training learns and what downstream tasks reuse. It returns every
hidden state ``[input embeddings, layer 1, ..., layer L]`` for the downstream weighted layer sum.
It is built in YAML from its parts, so the context encoder is any encoder of this package
(Conformer, Transformer, ...) with any mixer::

    encoder: !new:summarymixing.w2v2.W2V2Encoder
        frontend: !new:summarymixing.w2v2.FbankFrontEnd
            n_mels: 80
            out_channels: [512, 512]
        context: !new:summarymixing.ConformerEncoder
            num_layers: 12
            d_model: 768
            d_ffn: 3072
            nhead: 8
            attention_type: SummaryMixing
            output_hidden_states: True
        d_model: 768

The arguments it was built with are its architecture (``summarymixing.architecture``), stored
with every checkpoint and export.
"""

from __future__ import annotations

import torch
from speechbrain.lobes.models.transformer.Transformer import PositionalEncoding
from torch import nn

from summarymixing.architecture import RecordsArguments
from summarymixing.encoders import MixerEncoder
from summarymixing.w2v2.frontend import FbankFrontEnd


class W2V2Encoder(RecordsArguments, nn.Module):
    """Front end, input projection, mask embedding, sinusoidal positions and context encoder.

    Arguments
    ---------
    frontend : FbankFrontEnd
        Waveform to latent frames ``(B, T, C)``.
    context : MixerEncoder
        Context encoder (e.g. ``summarymixing.ConformerEncoder``) built with
        ``output_hidden_states=True``.
    d_model : int
        Context encoder size ``D``.
    dropout_encoder_input : float
        Dropout on the projected latents.
    max_positions : int
        Latent frames of the stored positional table (3500: 70 s); longer inputs get the
        same sinusoids computed for their length.

    Example
    -------
    >>> from summarymixing import ConformerEncoder
    >>> frontend = FbankFrontEnd(n_mels=40, out_channels=[32, 32])
    >>> context = ConformerEncoder(2, 16, 32, 4, kernel_size=3, output_hidden_states=True)
    >>> encoder = W2V2Encoder(frontend, context, d_model=16).eval()
    >>> hidden = encoder(torch.randn(2, 16000), torch.tensor([1.0, 0.7]))
    >>> len(hidden) == encoder.num_hidden_states, hidden[-1].shape
    (True, torch.Size([2, 48, 16]))
    """

    TRAINING_OPTIONS = ("dropout_encoder_input",)

    def __init__(
        self,
        frontend: FbankFrontEnd,
        context: MixerEncoder,
        d_model: int,
        dropout_encoder_input: float = 0.0,
        max_positions: int = 3500,
    ):
        super().__init__()
        if not context.output_hidden_states:
            raise ValueError(
                "expected a context encoder built with output_hidden_states=True, got False"
            )
        self.frontend = frontend
        self.input_projector = nn.Linear(frontend.out_dim, d_model)
        self.dropout_encoder_input = nn.Dropout(dropout_encoder_input)
        self.mask_emb = nn.Parameter(torch.empty(d_model).uniform_())
        self.positional_encoding = PositionalEncoding(d_model, max_len=max_positions)
        self.context = context
        self.d_model = d_model
        self.max_positions = max_positions
        self.num_hidden_states = len(context.layers) + 1

    def embed(
        self, latents: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Project latents ``(B, T, C)`` to ``(B, T, D)``, replace the frames where ``mask``
        ``(B, T)`` is ``True`` by the learnt mask embedding, and add positions."""
        embeddings = self.dropout_encoder_input(self.input_projector(latents))  # (B, T, D)
        if mask is not None:
            if mask.shape != embeddings.shape[:2]:
                raise ValueError(
                    f"expected a mask of shape {tuple(embeddings.shape[:2])}, "
                    f"got {tuple(mask.shape)}"
                )
            mask_emb = self.mask_emb.to(embeddings.dtype)
            embeddings = torch.where(mask.unsqueeze(-1), mask_emb, embeddings)
        if embeddings.shape[1] <= self.max_positions:
            return embeddings + self.positional_encoding(embeddings)
        # Longer than the stored table: the same sinusoids, computed for this length.
        longer = PositionalEncoding(self.d_model, max_len=embeddings.shape[1])
        return embeddings + longer.to(embeddings.device)(embeddings)

    def encode(
        self,
        latents: torch.Tensor,
        padding_mask: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Run the context encoder on front-end latents.

        Arguments
        ---------
        latents : torch.Tensor
            ``(B, T, C)`` front-end output.
        padding_mask : torch.Tensor
            ``(B, T)``, ``True`` at padded frames.
        mask : torch.Tensor, optional
            ``(B, T)``, ``True`` at the frames to replace by the mask embedding (pre-training).

        Returns
        -------
        list of torch.Tensor
            ``num_hidden_states`` tensors ``(B, T, D)``: the input embeddings, then each layer's
            output; the last one is after the encoder's final layer norm.
        """
        embeddings = self.embed(latents, mask)
        output, _, hidden_states = self.context(embeddings, src_key_padding_mask=padding_mask)
        return [*hidden_states[:-1], output]

    def output_lengths(self, wav_lens: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Frames ``(B,)`` (long) of each utterance of a batch padded to ``num_samples``
        samples, from relative lengths ``wav_lens`` ``(B,)``: what it gives alone."""
        return self.frontend.output_lengths(wav_lens, num_samples)

    def forward(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """All hidden states of waveforms ``wavs`` ``(B, S)`` with relative lengths
        ``wav_lens`` ``(B,)`` in ``(0, 1]``: a list of ``num_hidden_states`` tensors
        ``(B, T, D)`` (values at padded frames are meaningless)."""
        latents, padding_mask = self.frontend(wavs, wav_lens)
        return self.encode(latents, padding_mask)
