"""A Hugging Face wav2vec 2.0 checkpoint as the downstream encoder (the paper's w2v2 rows).

:class:`HFWav2Vec2Encoder` composes SpeechBrain's Hugging Face wrapper
(``speechbrain.integrations.huggingface.wav2vec2.Wav2Vec2``, formerly
``speechbrain.lobes.models.huggingface_transformers.wav2vec2``) with ``output_all_hiddens``, and
follows the contract of ``summarymixing.w2v2.encoder.W2V2Encoder``: ``encoder(wavs, wav_lens)``
returns the ``num_hidden_states`` hidden states ``(B, T, D)`` (13 for a base model, 25 for a
large one), with attributes ``num_hidden_states`` and ``d_model``. ``summarymixing.export.
load_pretrained`` builds it for a hub id (``facebook/wav2vec2-base``), an ``hf:`` source or a
local ``save_pretrained`` folder, so every downstream YAML takes a Hugging Face checkpoint
through ``--pretrained_path`` unchanged.

What the checkpoint decides (read from its ``config.json`` and ``preprocessor_config.json``):

- **Waveform normalisation**: ``do_normalize`` of the feature extractor. When set, each
  utterance is scaled to zero mean and unit variance over its own samples (padding excluded),
  as ``Wav2Vec2FeatureExtractor`` does (variance + 1e-7), and its padding stays zero.
  SpeechBrain's wrapper normalises the whole padded row instead, which lets padding change the
  result, so that step is replaced here. (Models with a group-norm front end, such as
  ``facebook/wav2vec2-base``, are nearly invariant to this scaling: the first convolution has
  no bias and its group norm removes each channel's offset and scale.)
- **Padding**: a front end with ``feat_extract_norm == "layer"`` (``facebook/wav2vec2-large-lv60``)
  treats padding exactly with an ``attention_mask``, so batches run at once with one. A
  ``"group"`` front end (``facebook/wav2vec2-base``) normalises each channel over the whole
  padded time axis, and the base models were trained without attention masks; Hugging Face
  passes none for them, and then padding changes the hidden states. Here each utterance of such
  a model is encoded alone at its own length by default (``per_utterance=True``), which is
  exact; ``per_utterance=False`` runs the padded batch without a mask as Hugging Face does.
- Hidden states are zero at padded frames in every mode.

SpeechBrain's MP3S benchmark (``WeightedSSLModel``), with which the authors evaluated the w2v2
rows, calls the model on the raw padded batch with neither normalisation nor attention mask;
following each checkpoint's own preprocessing is a deliberate difference from those runs.

Freezing belongs to ``summarymixing.downstream.HiddenStates`` (``requires_grad``, eval mode,
``no_grad``), as for our own encoder: the SpeechBrain wrapper is built with ``freeze=False``,
``freeze_feature_extractor=False`` and ``apply_spec_augment=False``, so its own switches never
disagree with ``freeze_encoder`` and fine-tuning (``freeze_encoder: False``) trains the whole
model. In training mode the checkpoint's dropouts and layer drop apply (fine-tuning only; a
frozen encoder stays in eval mode).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from speechbrain.dataio.dataio import length_to_mask
from speechbrain.integrations.huggingface.wav2vec2 import Wav2Vec2

from summarymixing.downstream.huggingface import MODEL_TYPE, check_local_folder

logger = logging.getLogger(__name__)

NORM_EPS = 1e-7  # Wav2Vec2FeatureExtractor's zero-mean unit-variance normalisation


class HFWav2Vec2Encoder(Wav2Vec2):
    """SpeechBrain's Hugging Face wav2vec 2.0 wrapper returning every hidden state, exactly
    padded (see the module docstring for normalisation, padding and freezing).

    Arguments
    ---------
    source : str
        Hub id (``facebook/wav2vec2-large-lv60``) or local ``save_pretrained`` folder holding
        ``config.json``, the weights and ``preprocessor_config.json``.
    save_path : str, optional
        Download cache; defaults to Hugging Face's hub cache (``HF_HUB_CACHE``).
    per_utterance : bool, optional
        Encode each utterance alone at its own length (exact for any front end); by default
        only for a group-norm front end, whose padded batches are not exact.

    Example
    -------
    >>> import tempfile
    >>> from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model
    >>> folder = tempfile.mkdtemp()
    >>> config = Wav2Vec2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
    ...     intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3),
    ...     num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2)
    >>> Wav2Vec2Model(config).save_pretrained(folder)
    >>> Wav2Vec2FeatureExtractor().save_pretrained(folder)  # doctest: +ELLIPSIS
    [...]
    >>> encoder = HFWav2Vec2Encoder(folder).eval()
    >>> hidden = encoder(torch.randn(2, 4000), torch.tensor([1.0, 0.6]))
    >>> encoder.num_hidden_states, encoder.d_model, len(hidden), tuple(hidden[0].shape)
    (3, 16, 3, (2, 399, 16))
    """

    def __init__(
        self, source: str, save_path: str | None = None, per_utterance: bool | None = None
    ):
        if Path(source).is_dir():
            check_local_folder(Path(source))
        if save_path is None:
            from huggingface_hub.constants import HF_HUB_CACHE

            save_path = HF_HUB_CACHE
        super().__init__(
            source,
            save_path,
            output_norm=False,
            freeze=False,  # HiddenStates owns freezing
            freeze_feature_extractor=False,
            apply_spec_augment=False,  # the recipes' own feat_augment, if any
            output_all_hiddens=True,
        )
        config = self.model.config
        if config.model_type != MODEL_TYPE:
            raise ValueError(
                f"expected model_type {MODEL_TYPE!r} in {source}, got {config.model_type!r}"
            )
        self.source = source
        self.d_model = config.hidden_size
        self.num_hidden_states = config.num_hidden_layers + 1
        self.use_attention_mask = config.feat_extract_norm == "layer"
        self.per_utterance = not self.use_attention_mask if per_utterance is None else per_utterance
        if self.feature_extractor.return_attention_mask != self.use_attention_mask:
            logger.warning(
                "%s: feat_extract_norm=%r but its feature extractor has return_attention_mask=%s; "
                "the attention mask follows the architecture (%s)",
                source, config.feat_extract_norm, self.feature_extractor.return_attention_mask,
                self.use_attention_mask,
            )
        if self.per_utterance:
            mode = "one utterance at a time"
        elif self.use_attention_mask:
            mode = "batched with an attention mask"
        else:
            mode = "batched without attention mask (padding changes the result)"
        logger.info(
            "Hugging Face wav2vec 2.0 %s: %d hidden states of size %d, feat_extract_norm=%r, "
            "do_normalize=%s, %s",
            source, self.num_hidden_states, self.d_model, config.feat_extract_norm,
            self.normalize_wav, mode,
        )

    def sample_lengths(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None) -> torch.Tensor:
        """Absolute lengths ``(B,)`` in samples of relative lengths ``wav_lens`` ``(B,)``
        (rounded as SpeechBrain's ``make_padding_masks``); each must give one frame or more.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(B, S)`` padded waveforms.
        wav_lens : torch.Tensor or None
            ``(B,)`` relative lengths in ``(0, 1]`` (``None``: all whole).

        Returns
        -------
        torch.Tensor
            ``(B,)`` lengths in samples (long).
        """
        if wavs.dim() != 2 or wavs.shape[0] == 0:
            raise ValueError(
                f"expected waveforms of shape (batch >= 1, samples), got {tuple(wavs.shape)}"
            )
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=wavs.device)
        if wav_lens.shape != wavs.shape[:1] or bool(((wav_lens <= 0) | (wav_lens > 1)).any()):
            raise ValueError(
                f"expected {wavs.shape[0]} relative lengths in (0, 1], got {wav_lens.tolist()}"
            )
        lengths = torch.round(wav_lens * wavs.shape[1]).long()
        shortest = int(lengths.min())
        if int(self.model._get_feat_extract_output_lengths(shortest)) < 1:
            raise ValueError(
                f"expected utterances long enough for one frame of {self.source}, got one of "
                f"{shortest} samples"
            )
        return lengths

    def output_lengths(self, wav_lens: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Frames ``(B,)`` (long) of each utterance of a batch padded to ``num_samples``
        samples, from relative lengths ``wav_lens`` ``(B,)``: what it gives alone.

        Arguments
        ---------
        wav_lens : torch.Tensor
            ``(B,)`` relative lengths.
        num_samples : int
            The padded length of the batch, in samples.

        Returns
        -------
        torch.Tensor
            ``(B,)`` numbers of frames (long).
        """
        samples = torch.round(wav_lens * num_samples).long()
        return self.model._get_feat_extract_output_lengths(samples)

    def normalize(self, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Zero mean, unit variance over each utterance's own samples; padding set to zero.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(B, S)`` padded waveforms.
        lengths : torch.Tensor
            ``(B,)`` lengths in samples.

        Returns
        -------
        torch.Tensor
            ``(B, S)``.
        """
        valid = length_to_mask(lengths, wavs.shape[1]).to(wavs.dtype)  # (B, S), 1 = sample
        count = lengths.to(wavs.dtype).unsqueeze(1)  # (B, 1)
        mean = (wavs * valid).sum(1, keepdim=True) / count
        var = ((wavs - mean) ** 2 * valid).sum(1, keepdim=True) / count
        return (wavs - mean) / torch.sqrt(var + NORM_EPS) * valid

    def extract_features(
        self, wav: torch.Tensor, wav_lens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Stacked hidden states ``(L + 1, B, T, D)`` of waveforms ``wav`` ``(B, S)`` with
        relative lengths ``wav_lens`` ``(B,)``; zero at padded frames. (Called by the
        wrapper's ``forward``, replacing its padded-row normalisation and unconditional
        attention mask.)

        Arguments
        ---------
        wav : torch.Tensor
            ``(B, S)`` padded waveforms.
        wav_lens : torch.Tensor, optional
            ``(B,)`` relative lengths (``None``: all whole).

        Returns
        -------
        torch.Tensor
            ``(L + 1, B, T, D)``.
        """
        lengths = self.sample_lengths(wav, wav_lens)
        if self.normalize_wav:
            wav = self.normalize(wav, lengths)
        frames = self.model._get_feat_extract_output_lengths(lengths)  # (B,)
        total = int(self.model._get_feat_extract_output_lengths(wav.shape[1]))
        if self.per_utterance:
            rows = [
                torch.stack(self.model(row[None, :length], output_hidden_states=True).hidden_states)
                for row, length in zip(wav, lengths.tolist(), strict=True)
            ]  # each (L + 1, 1, T_i, D)
            return torch.cat(
                [torch.nn.functional.pad(r, (0, 0, 0, total - r.shape[2])) for r in rows], dim=1
            )  # (L + 1, B, T, D)
        attention_mask = (
            length_to_mask(lengths, wav.shape[1]).long() if self.use_attention_mask else None
        )
        hidden = self.model(wav, attention_mask=attention_mask, output_hidden_states=True)
        stacked = torch.stack(hidden.hidden_states)  # (L + 1, B, T, D)
        valid = length_to_mask(frames, total).to(stacked.dtype)  # (B, T)
        return stacked * valid[None, :, :, None]

    def forward(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """All hidden states of waveforms ``wavs`` ``(B, S)`` with relative lengths
        ``wav_lens`` ``(B,)``: a list of ``num_hidden_states`` tensors ``(B, T, D)``.

        Arguments
        ---------
        wavs : torch.Tensor
            ``(B, S)`` padded waveforms.
        wav_lens : torch.Tensor, optional
            ``(B,)`` relative lengths (``None``: all whole).

        Returns
        -------
        list of torch.Tensor
            ``num_hidden_states`` tensors ``(B, T, D)``, the input embeddings first.
        """
        return list(super().forward(wavs, wav_lens).unbind(0))
