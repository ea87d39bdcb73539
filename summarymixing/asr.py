"""SpeechBrain's ``TransformerASR`` that also knows ``attention_type: SummaryMixing``.

:class:`TransformerASR` subclasses ``speechbrain.lobes.models.transformer.TransformerASR.
TransformerASR`` and takes its arguments unchanged, plus SummaryMixing's options as flat
keyword arguments, as the authors' published ASR YAMLs pass them (``mode``,
``local_proj_hid_dim``, ``local_proj_out_dim``, ``summary_hid_dim``, ``summary_out_dim``, ...).
Those YAMLs run with pip SpeechBrain once their class path is changed::

    Transformer: !new:summarymixing.asr.TransformerASR
        input_size: 640
        tgt_vocab: !ref <output_neurons>
        d_model: 512
        nhead: 4
        num_encoder_layers: 12
        num_decoder_layers: 6
        d_ffn: 2048
        encoder_module: conformer         # or transformer, branchformer
        attention_type: SummaryMixing     # or regularMHA, RelPosMHAXL: SpeechBrain's own model
        mode: SummaryMixing
        local_proj_hid_dim: [512]
        summary_hid_dim: [512]
        normalize_before: True
        causal: False

With ``attention_type: SummaryMixing`` the encoder is this project's ``ConformerEncoder``,
``TransformerEncoder`` or ``BranchformerEncoder``, built with the arguments SpeechBrain gives its
own encoders; everything else (input projection, absolute positional encoding, Transformer
decoder, ``encode``, ``decode``, ``EncoderWrapper``, the searchers) is SpeechBrain's. Any other
attention type builds SpeechBrain's model exactly; the SummaryMixing options are still checked,
and unused, so that swapping the mixer is the one ``attention_type`` line.

Two additions: ``forward`` accepts a ``dynchunktrain_config`` (Dynamic Chunk Training of a CTC +
attention model: the encoder is chunked as in ``encode``, the decoder is not; every SummaryMixing
encoder and SpeechBrain's Conformer support it, SpeechBrain's Transformer and Branchformer
encoders refuse it), and, for SummaryMixing, ``encode_streaming`` adds the absolute positional
encoding at the chunk's position in the stream, so that chunk-by-chunk streaming equals the
chunked ``encode`` (SpeechBrain's restarts it at every chunk).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from speechbrain.lobes.models.transformer.TransformerASR import (
    TransformerASR as SpeechBrainTransformerASR,
)
from speechbrain.lobes.models.transformer.TransformerASR import (
    TransformerASRStreamingContext,
    make_transformer_src_tgt_masks,
)
from speechbrain.nnet.activations import Swish
from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig
from torch import nn

from summarymixing.architecture import RecordsArguments
from summarymixing.branchformer import BranchformerEncoder
from summarymixing.cell import MODES
from summarymixing.encoders import ConformerEncoder, TransformerEncoder
from summarymixing.mixers import summary_mixing_options

SPEECHBRAIN_ATTENTION_TYPES = ("regularMHA", "RelPosMHAXL", "hypermixing", "RoPEMHA")
ENCODER_MODULES = ("transformer", "conformer", "branchformer")


@dataclass
class SummaryMixingStreamingContext(TransformerASRStreamingContext):
    """SpeechBrain's streaming context of a ``TransformerASR``, plus the number of frames
    already encoded: the position of the next chunk in the stream (its absolute positional
    encoding starts there)."""

    frames_seen: int = 0


class TransformerASR(RecordsArguments, SpeechBrainTransformerASR):
    """SpeechBrain's ``TransformerASR`` with ``attention_type="SummaryMixing"`` available.

    Arguments
    ---------
    tgt_vocab, input_size, d_model, nhead, num_encoder_layers, num_decoder_layers, d_ffn, \
dropout, activation, positional_encoding, normalize_before, kernel_size, bias, encoder_module, \
conformer_activation, branchformer_activation, max_length, causal, csgu_linear_units, \
gate_activation, use_linear_after_conv, output_hidden_states, layerdrop_prob
        As in SpeechBrain's ``TransformerASR`` (same defaults; ``causal=None`` warns and means
        ``True``, as there).
    attention_type : str
        ``SummaryMixing`` (this project's encoders) or one of SpeechBrain's
        (``regularMHA``, ``RelPosMHAXL``, ``hypermixing``, ``RoPEMHA``: SpeechBrain's model).
        SummaryMixing needs ``positional_encoding="fixed_abs_sine"`` (the cell has no notion of
        position; SpeechBrain's ``TransformerASR`` supports no other choice for it).
    mode, local_proj_hid_dim, local_proj_out_dim, summary_hid_dim, summary_out_dim, \
use_layernorm, summary_dropout
        SummaryMixing's options (``summarymixing.SummaryMixing``; ``None`` sizes mean
        ``d_model``, as in the cell). ``use_layernorm`` is ``False`` by default here: the
        authors' published ASR cell has no layer norms (their wav2vec 2.0 cell has them, and
        so does the cell's own default). The cell's dropout is ``dropout`` and its activation
        the encoder layers' (``activation`` for the Transformer, ``conformer_activation``,
        ``branchformer_activation``).

    Raises
    ------
    ValueError
        For an unknown ``attention_type`` or ``encoder_module``, a SummaryMixing option out of
        range, or a configuration SpeechBrain refuses (a Conformer without
        ``normalize_before``). An unknown keyword argument is Python's ``TypeError``, naming it.

    Example
    -------
    >>> net = TransformerASR(
    ...     tgt_vocab=20, input_size=12, d_model=16, nhead=2, num_encoder_layers=2,
    ...     num_decoder_layers=1, d_ffn=32, encoder_module="conformer", kernel_size=3,
    ...     attention_type="SummaryMixing", mode="SummaryMixing", local_proj_hid_dim=[16],
    ...     normalize_before=True, causal=False,
    ... )
    >>> type(net.encoder).__name__
    'ConformerEncoder'
    >>> encoder_out, decoder_out = net(torch.randn(3, 9, 12), torch.randint(0, 20, (3, 4)))
    >>> encoder_out.shape, decoder_out.shape
    (torch.Size([3, 9, 16]), torch.Size([3, 4, 16]))
    """

    TRAINING_OPTIONS = ("dropout", "layerdrop_prob", "summary_dropout")

    def __init__(
        self,
        tgt_vocab: int,
        input_size: int,
        d_model: int = 512,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        d_ffn: int = 2048,
        dropout: float = 0.1,
        activation: type[nn.Module] = nn.ReLU,
        positional_encoding: str | None = "fixed_abs_sine",
        normalize_before: bool = False,
        kernel_size: int | None = 31,
        bias: bool = True,
        encoder_module: str = "transformer",
        conformer_activation: type[nn.Module] = Swish,
        branchformer_activation: type[nn.Module] = nn.GELU,
        attention_type: str = "regularMHA",
        max_length: int = 2500,
        causal: bool | None = None,
        csgu_linear_units: int = 3072,
        gate_activation: type[nn.Module] = nn.Identity,
        use_linear_after_conv: bool = False,
        output_hidden_states: bool = False,
        layerdrop_prob: float = 0.0,
        mode: str = "SummaryMixing",
        local_proj_hid_dim: Sequence[int] | None = None,
        local_proj_out_dim: int | None = None,
        summary_hid_dim: Sequence[int] | None = None,
        summary_out_dim: int | None = None,
        use_layernorm: bool = False,
        summary_dropout: str = "frame",
    ):
        summary_options = summary_mixing_options({
            "mode": mode, "local_proj_hid_dim": local_proj_hid_dim,
            "local_proj_out_dim": local_proj_out_dim, "summary_hid_dim": summary_hid_dim,
            "summary_out_dim": summary_out_dim, "use_layernorm": use_layernorm,
            "summary_dropout": summary_dropout,
        })
        if mode not in MODES:  # checked whatever the attention type, as the option names
            raise ValueError(f"expected mode in {MODES}, got {mode!r}")
        if attention_type not in ("SummaryMixing", *SPEECHBRAIN_ATTENTION_TYPES):
            raise ValueError(
                f"expected attention_type in {('SummaryMixing', *SPEECHBRAIN_ATTENTION_TYPES)}, "
                f"got {attention_type!r}"
            )
        if encoder_module not in ENCODER_MODULES:
            raise ValueError(
                f"expected encoder_module in {ENCODER_MODULES}, got {encoder_module!r}"
            )
        summary_mixing = attention_type == "SummaryMixing"
        if summary_mixing:
            if positional_encoding != "fixed_abs_sine":
                raise ValueError(
                    "expected positional_encoding='fixed_abs_sine' with attention_type "
                    f"SummaryMixing (the cell sees no positions), got {positional_encoding!r}"
                )
            if encoder_module == "conformer" and not normalize_before:
                raise ValueError(
                    "expected normalize_before=True for a Conformer encoder, got False"
                )
            if num_encoder_layers < 1:
                raise ValueError(f"expected num_encoder_layers >= 1, got {num_encoder_layers}")
        super().__init__(
            tgt_vocab, input_size, d_model=d_model, nhead=nhead,
            # SummaryMixing: SpeechBrain builds no encoder (or, when there is no decoder either,
            # which it refuses, a one-layer one replaced below); everything else is its own.
            num_encoder_layers=(
                (0 if num_decoder_layers > 0 else 1) if summary_mixing else num_encoder_layers
            ),
            num_decoder_layers=num_decoder_layers, d_ffn=d_ffn, dropout=dropout,
            activation=activation, positional_encoding=positional_encoding,
            normalize_before=normalize_before, kernel_size=kernel_size, bias=bias,
            encoder_module="transformer" if summary_mixing else encoder_module,
            conformer_activation=conformer_activation,
            branchformer_activation=branchformer_activation,
            attention_type="regularMHA" if summary_mixing else attention_type,
            max_length=max_length, causal=causal, csgu_linear_units=csgu_linear_units,
            gate_activation=gate_activation, use_linear_after_conv=use_linear_after_conv,
            output_hidden_states=output_hidden_states, layerdrop_prob=layerdrop_prob,
        )
        if not summary_mixing:
            return
        self.attention_type = attention_type
        common = {
            "num_layers": num_encoder_layers, "d_model": d_model, "nhead": nhead,
            "dropout": dropout, "attention_type": attention_type,
            "summary_options": summary_options, "layerdrop_prob": layerdrop_prob,
            "output_hidden_states": output_hidden_states,
        }
        if encoder_module == "transformer":
            self.encoder = TransformerEncoder(
                d_ffn=d_ffn, activation=activation, normalize_before=normalize_before, **common
            )
        elif encoder_module == "conformer":
            self.encoder = ConformerEncoder(
                d_ffn=d_ffn, kernel_size=kernel_size, activation=conformer_activation,
                bias=bias, causal=self.causal, **common,
            )
        else:
            self.encoder = BranchformerEncoder(
                kernel_size=kernel_size, activation=branchformer_activation,
                csgu_linear_units=csgu_linear_units, gate_activation=gate_activation,
                use_linear_after_conv=use_linear_after_conv, **common,
            )
        self._init_params()  # SpeechBrain's initialisation of every weight, the encoder's too

    def forward(
        self,
        src: torch.Tensor,
        tgt: torch.Tensor,
        wav_len: torch.Tensor | None = None,
        pad_idx: int = 0,
        dynchunktrain_config: DynChunkTrainConfig | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Encode ``src`` and decode ``tgt`` (teacher forcing): SpeechBrain's ``forward``, plus
        Dynamic Chunk Training of the encoder.

        Arguments
        ---------
        src : torch.Tensor
            Features ``(B, T, input_size)`` (or ``(B, T, C1, C2)``, flattened).
        tgt : torch.Tensor
            Decoder input tokens ``(B, U)``.
        wav_len : torch.Tensor, optional
            Relative lengths ``(B,)``.
        pad_idx : int
            Padding token of ``tgt``.
        dynchunktrain_config : DynChunkTrainConfig, optional
            Chunk the encoder as ``encode`` does (chunk mask, chunked convolution); ``None``:
            SpeechBrain's ``forward`` exactly.

        Returns
        -------
        encoder_out : torch.Tensor
            ``(B, T, d_model)``.
        hidden_states : list of torch.Tensor
            Only with ``output_hidden_states``.
        decoder_out : torch.Tensor
            ``(B, U, d_model)``.
        """
        if dynchunktrain_config is None:
            return super().forward(src, tgt, wav_len, pad_idx)
        encoded = self.encode(src, wav_len, pad_idx, dynchunktrain_config)
        encoder_out, hidden_states = encoded if self.output_hidden_states else (encoded, None)
        src_key_padding_mask, tgt_key_padding_mask, _, tgt_mask = make_transformer_src_tgt_masks(
            encoder_out, tgt, wav_len, pad_idx=pad_idx
        )
        tgt = self.custom_tgt_module(tgt)  # (B, U, d_model)
        # The decoder's positional encoding, as SpeechBrain's forward adds it.
        if self.attention_type in ("RelPosMHAXL", "RoPEMHA"):
            tgt = tgt + self.positional_encoding_decoder(tgt)
        elif self.positional_encoding_type == "fixed_abs_sine" or (
            self.attention_type == "hypermixing"
        ):
            tgt = tgt + self.positional_encoding(tgt)
        decoder_out, _, _ = self.decoder(
            tgt=tgt, memory=encoder_out, memory_mask=None, tgt_mask=tgt_mask,
            tgt_key_padding_mask=tgt_key_padding_mask,
            memory_key_padding_mask=src_key_padding_mask, pos_embs_tgt=None, pos_embs_src=None,
        )
        if self.output_hidden_states:
            return encoder_out, hidden_states, decoder_out
        return encoder_out, decoder_out

    def make_streaming_context(
        self, dynchunktrain_config: DynChunkTrainConfig, encoder_kwargs: dict | None = None
    ) -> TransformerASRStreamingContext:
        """A blank streaming context (SpeechBrain's; for SummaryMixing, with the stream
        position, :class:`SummaryMixingStreamingContext`).

        Arguments
        ---------
        dynchunktrain_config : DynChunkTrainConfig
            Chunk size and left context, as in training.
        encoder_kwargs : dict, optional
            More arguments of the encoder's ``make_streaming_context``.

        Returns
        -------
        TransformerASRStreamingContext
        """
        encoder_kwargs = encoder_kwargs or {}
        if self.attention_type != "SummaryMixing":
            return super().make_streaming_context(dynchunktrain_config, encoder_kwargs)
        return SummaryMixingStreamingContext(
            dynchunktrain_config=dynchunktrain_config,
            encoder_context=self.encoder.make_streaming_context(
                dynchunktrain_config, **encoder_kwargs
            ),
        )

    def encode_streaming(
        self, src: torch.Tensor, context: TransformerASRStreamingContext
    ) -> torch.Tensor:
        """Encode the next chunk of a stream, updating ``context``.

        For SummaryMixing the chunk's absolute positional encoding starts at the number of
        frames already encoded, as in the chunked ``encode`` of the whole utterance (other
        attention types: SpeechBrain's ``encode_streaming``).

        Arguments
        ---------
        src : torch.Tensor
            The chunk's features ``(B, C, input_size)`` (or ``(B, C, C1, C2)``).
        context : TransformerASRStreamingContext
            From :meth:`make_streaming_context`; mutated.

        Returns
        -------
        torch.Tensor
            The chunk's encoder output ``(B, C, d_model)``.

        Example
        -------
        >>> net = TransformerASR(20, 12, d_model=16, nhead=2, num_encoder_layers=1,
        ...     num_decoder_layers=0, d_ffn=32, encoder_module="conformer", kernel_size=3,
        ...     attention_type="SummaryMixing", normalize_before=True, causal=False).eval()
        >>> context = net.make_streaming_context(DynChunkTrainConfig(4, 2))
        >>> chunks = [net.encode_streaming(torch.randn(2, 4, 12), context) for _ in range(3)]
        >>> chunks[-1].shape, context.frames_seen
        (torch.Size([2, 4, 16]), 12)
        """
        if self.attention_type != "SummaryMixing":
            return super().encode_streaming(src, context)
        if not isinstance(context, SummaryMixingStreamingContext):
            raise TypeError(
                "expected the context of this model's make_streaming_context, got "
                f"{type(context).__name__}"
            )
        if src.dim() == 4:
            src = src.flatten(2)  # (B, C, C1 * C2)
        start, end = context.frames_seen, context.frames_seen + src.shape[1]
        if end > self.positional_encoding.max_len:
            raise ValueError(
                f"expected a stream of at most max_length={self.positional_encoding.max_len} "
                f"frames (the absolute positional encoding's length), got {end}"
            )
        src = self.custom_src_module(src) + self.positional_encoding.pe[:, start:end]
        context.frames_seen = end
        encoder_out, _ = self.encoder.forward_streaming(src, context.encoder_context)
        return encoder_out
