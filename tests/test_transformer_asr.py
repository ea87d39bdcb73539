"""``summarymixing.asr.TransformerASR``: SpeechBrain's ASR model with SummaryMixing encoders.

Built from YAML as a recipe builds it: it trains (CTC + attention) and decodes with SpeechBrain's
searchers for every encoder module; ``encode``, ``EncoderWrapper`` and Dynamic Chunk Training
take every argument SpeechBrain passes; streaming chunk by chunk equals the chunked ``encode``;
SpeechBrain's own attention types build SpeechBrain's model unchanged; the authors' published
``Transformer:`` blocks build with only the class path changed.
"""

from __future__ import annotations

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.decoders import ctc_greedy_decode
from speechbrain.lobes.models.transformer.TransformerASR import EncoderWrapper
from speechbrain.lobes.models.transformer.TransformerASR import (
    TransformerASR as SpeechBrainTransformerASR,
)
from speechbrain.nnet.losses import ctc_loss, kldiv_loss
from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig

from summarymixing import (
    BranchformerEncoder,
    ConformerEncoder,
    SummaryMixing,
    TransformerEncoder,
)
from summarymixing.architecture import build, describe
from summarymixing.asr import TransformerASR

ENCODER_MODULES = ("transformer", "conformer", "branchformer")
ENCODER_CLASSES = {
    "transformer": TransformerEncoder,
    "conformer": ConformerEncoder,
    "branchformer": BranchformerEncoder,
}
VOCAB, FEATURES, BOS, EOS = 10, 12, 1, 2

TINY_YAML = """
encoder_module: conformer
Transformer: !new:summarymixing.asr.TransformerASR
    input_size: 12
    tgt_vocab: 10
    d_model: 16
    nhead: 2
    num_encoder_layers: 2
    num_decoder_layers: 1
    d_ffn: 32
    dropout: 0.0
    encoder_module: !ref <encoder_module>
    kernel_size: 3
    csgu_linear_units: 32
    attention_type: SummaryMixing
    mode: SummaryMixing
    local_proj_hid_dim: [16]
    local_proj_out_dim: 16
    summary_hid_dim: [16]
    summary_out_dim: 16
    normalize_before: True
    causal: False
ctc_lin: !new:speechbrain.nnet.linear.Linear
    input_size: 16
    n_neurons: 10
seq_lin: !new:speechbrain.nnet.linear.Linear
    input_size: 16
    n_neurons: 10
ctc_scorer: !new:speechbrain.decoders.scorer.CTCScorer
    eos_index: 2
    blank_index: 0
    ctc_fc: !ref <ctc_lin>
scorer: !new:speechbrain.decoders.scorer.ScorerBuilder
    full_scorers: [!ref <ctc_scorer>]
    weights:
        ctc: 0.3
searcher: !new:speechbrain.decoders.S2STransformerBeamSearcher
    modules: [!ref <Transformer>, !ref <seq_lin>]
    bos_index: 1
    eos_index: 2
    min_decode_ratio: 0.0
    max_decode_ratio: 1.0
    beam_size: 3
    using_eos_threshold: False
    length_normalization: True
    scorer: !ref <scorer>
"""

# The authors' published Transformer blocks (SamsungLabs/SummaryMixing, branch main), with the
# values of the keys they reference, and only the class path changed.
COMMONVOICE_BRANCHFORMER = """
attention_type: SummaryMixing # SummaryMixing, regularMHA or RelPosMHAXL
mode: SummaryMixing # SummaryMixing or SummaryMixing-lite
d_model: 512
nhead: 1 # 1 is faster but 4 gives very slightly better performance (WER)
num_encoder_layers: 18
num_decoder_layers: 6
decoder_linear_units: 2048
csgu_linear_units: 3072
csgu_kernel_size: 31
local_proj_hid_dim: [512]
local_proj_out_dim: !ref <d_model>
summary_hid_dim: [512]
summary_out_dim: !ref <d_model>
transformer_dropout: 0.1
activation: !name:torch.nn.GELU
output_neurons: 1000 # We used 350 for Dutch and 1000 for italian

Transformer: !new:summarymixing.asr.TransformerASR # yamllint disable-line rule:line-length
    input_size: 640
    tgt_vocab: !ref <output_neurons>
    d_model: !ref <d_model>
    nhead: !ref <nhead>
    num_encoder_layers: !ref <num_encoder_layers>
    num_decoder_layers: !ref <num_decoder_layers>
    dropout: !ref <transformer_dropout>
    activation: !ref <activation>
    branchformer_activation: !ref <activation>
    encoder_module: branchformer
    csgu_linear_units: !ref <csgu_linear_units>
    kernel_size: !ref <csgu_kernel_size>
    attention_type: !ref <attention_type>
    local_proj_hid_dim: !ref <local_proj_hid_dim>
    local_proj_out_dim: !ref <local_proj_out_dim>
    summary_hid_dim: !ref <summary_hid_dim>
    summary_out_dim: !ref <summary_out_dim>
    mode: !ref <mode>
    normalize_before: True
    causal: False
"""

LIBRISPEECH_CONFORMER_TRANSDUCER = """
d_model: 512
joint_dim: 640
nhead: 4
num_encoder_layers: 12
num_decoder_layers: 0
d_ffn: 2048
transformer_dropout: 0.15
activation: !name:torch.nn.GELU
output_neurons: 1000
attention_type: SummaryMixing # SummaryMixing, regularMHA or RelPosMHAXL
mode: SummaryMixing-fast # SummaryMixing or SummaryMixing-lite
local_proj_hid_dim: [512]
local_proj_out_dim: 512
summary_hid_dim: [512]

Transformer: !new:summarymixing.asr.TransformerASR # yamllint disable-line rule:line-length
   input_size: 640
   tgt_vocab: !ref <output_neurons>
   d_model: !ref <d_model>
   nhead: !ref <nhead>
   num_encoder_layers: !ref <num_encoder_layers>
   num_decoder_layers: !ref <num_decoder_layers>
   d_ffn: !ref <d_ffn>
   dropout: !ref <transformer_dropout>
   activation: !ref <activation>
   encoder_module: conformer
   attention_type: !ref <attention_type>
   local_proj_hid_dim: !ref <local_proj_hid_dim>
   local_proj_out_dim: !ref <local_proj_out_dim>
   summary_hid_dim: !ref <summary_hid_dim>
   mode: !ref <mode>
   normalize_before: True
   causal: False

# We must call an encoder wrapper so the decoder isn't run (we don't have any)
enc: !new:speechbrain.lobes.models.transformer.TransformerASR.EncoderWrapper
   transformer: !ref <Transformer>
"""


def tiny_model(encoder_module: str, **overrides) -> dict:
    torch.manual_seed(0)
    return load_hyperpyyaml(TINY_YAML, {"encoder_module": encoder_module, **overrides})


def tiny_net(encoder_module: str = "conformer", **kwargs) -> TransformerASR:
    torch.manual_seed(0)
    arguments = {
        "tgt_vocab": VOCAB, "input_size": FEATURES, "d_model": 16, "nhead": 2,
        "num_encoder_layers": 2, "num_decoder_layers": 1, "d_ffn": 32, "kernel_size": 3,
        "csgu_linear_units": 32, "encoder_module": encoder_module,
        "attention_type": "SummaryMixing", "normalize_before": True, "causal": False,
        **kwargs,
    }
    return TransformerASR(**arguments)


def fixed_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features ``(2, 20, 12)``, relative lengths, tokens ``(2, 4)`` and their lengths."""
    generator = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 20, FEATURES, generator=generator)
    lengths = torch.tensor([1.0, 0.8])
    tokens = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 0]])
    return feats, lengths, tokens, torch.tensor([1.0, 0.75])


def asr_loss(model: dict, feats, lengths, tokens, token_lengths) -> torch.Tensor:
    """SpeechBrain's joint loss: 0.3 CTC + 0.7 KL on the decoder (BOS-shifted input)."""
    bos = torch.cat([torch.full((2, 1), BOS), tokens], dim=1)
    eos = torch.cat([tokens, torch.zeros(2, 1, dtype=torch.long)], dim=1)
    eos[0, 4], eos[1, 3] = EOS, EOS
    eos_lengths = (token_lengths * 4 + 1) / 5
    enc_out, dec_out = model["Transformer"](feats, bos, lengths)
    p_ctc = torch.log_softmax(model["ctc_lin"](enc_out), dim=-1)
    p_seq = torch.log_softmax(model["seq_lin"](dec_out), dim=-1)
    return 0.3 * ctc_loss(p_ctc, tokens, lengths, token_lengths, blank_index=0) + 0.7 * kldiv_loss(
        p_seq, eos, length=eos_lengths
    )


@pytest.mark.parametrize("encoder_module", ENCODER_MODULES)
def test_yaml_model_trains_and_decodes(encoder_module: str):
    model = tiny_model(encoder_module)
    net = model["Transformer"]
    assert type(net.encoder) is ENCODER_CLASSES[encoder_module]
    assert net.attention_type == "SummaryMixing"
    modules = torch.nn.ModuleList([net, model["ctc_lin"], model["seq_lin"]])
    optimizer = torch.optim.Adam(modules.parameters(), lr=3e-3)
    batch = fixed_batch()
    losses = []
    for _ in range(4):  # the loss before each of 3 steps, and after the last
        optimizer.zero_grad()
        loss = asr_loss(model, *batch)
        losses.append(float(loss.detach()))
        loss.backward()
        optimizer.step()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], losses

    modules.eval()
    feats, lengths, _, _ = batch
    with torch.no_grad():
        enc_out = net.encode(feats, lengths)
        hyps, hyp_lengths, scores, _ = model["searcher"](enc_out, lengths)
        greedy = ctc_greedy_decode(
            torch.log_softmax(model["ctc_lin"](enc_out), dim=-1), lengths, blank_id=0
        )
    assert len(hyps) == len(greedy) == 2
    for hyp in hyps:
        assert all(0 <= token < VOCAB for token in hyp)
    assert torch.isfinite(scores).all()
    for sequence, length in zip(greedy, (20, 16), strict=True):
        assert len(sequence) <= length and all(0 < token < VOCAB for token in sequence)


@pytest.mark.parametrize("encoder_module", ENCODER_MODULES)
def test_encode_takes_what_speechbrain_passes(encoder_module: str):
    net = tiny_net(encoder_module).eval()
    feats, lengths, tokens, _ = fixed_batch()
    chunks = DynChunkTrainConfig(chunk_size=4, left_context_size=1)
    # TransformerASR.encode's full signature, positionally and by keyword; 4-D features.
    full = net.encode(feats, lengths, 0, None)
    chunked = net.encode(feats, wav_len=lengths, pad_idx=0, dynchunktrain_config=chunks)
    assert full.shape == chunked.shape == (2, 20, 16)
    assert torch.allclose(net.encode(feats.view(2, 20, 3, 4), lengths), full, atol=1e-6)
    assert (full - chunked).abs().max() > 1e-3  # chunking restricts the context
    # EncoderWrapper (the transducer recipes' encoder) forwards **kwargs to encode.
    wrapper = EncoderWrapper(net)
    wrapped = wrapper(feats, lengths, pad_idx=0, dynchunktrain_config=chunks)
    assert torch.allclose(wrapped, chunked, atol=1e-6)
    # Dynamic Chunk Training of the whole model: the encoder output is the chunked encode.
    bos = torch.cat([torch.full((2, 1), BOS), tokens], dim=1)
    enc_out, dec_out = net(feats, bos, lengths, dynchunktrain_config=chunks)
    assert torch.allclose(enc_out, chunked, atol=1e-6) and dec_out.shape == (2, 5, 16)


@pytest.mark.parametrize("encoder_module", ENCODER_MODULES)
def test_one_chunk_is_the_plain_forward(encoder_module: str):
    """forward with a chunk as long as the input equals SpeechBrain's forward: the decoder
    path of the Dynamic Chunk Training forward is SpeechBrain's."""
    net = tiny_net(encoder_module).eval()
    feats, lengths, tokens, _ = fixed_batch()
    bos = torch.cat([torch.full((2, 1), BOS), tokens], dim=1)
    plain = net(feats, bos, lengths)
    one_chunk = net(feats, bos, lengths, dynchunktrain_config=DynChunkTrainConfig(20, None))
    for a, b in zip(plain, one_chunk, strict=True):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_chunked_forward_of_speechbrains_conformer():
    """The Dynamic Chunk Training forward also serves SpeechBrain's own Conformer."""
    net = tiny_net("conformer", attention_type="RelPosMHAXL").eval()
    feats, lengths, tokens, _ = fixed_batch()
    chunks = DynChunkTrainConfig(chunk_size=4, left_context_size=1)
    plain = net(feats, tokens, lengths)
    one_chunk = net(feats, tokens, lengths, dynchunktrain_config=DynChunkTrainConfig(20))
    for a, b in zip(plain, one_chunk, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    enc_out, _ = net(feats, tokens, lengths, dynchunktrain_config=chunks)
    assert torch.allclose(enc_out, net.encode(feats, lengths, dynchunktrain_config=chunks))


def test_output_hidden_states_through_transformer_asr():
    net = tiny_net("conformer", output_hidden_states=True).eval()
    feats, lengths, tokens, _ = fixed_batch()
    enc_out, hidden, dec_out = net(feats, tokens, lengths)
    assert len(hidden) == 3 and enc_out.shape == (2, 20, 16) and dec_out.shape == (2, 4, 16)
    enc_out, hidden = net.encode(feats, lengths, dynchunktrain_config=DynChunkTrainConfig(4))
    assert len(hidden) == 3


@pytest.mark.parametrize("left_context", [None, 0, 2])
@pytest.mark.parametrize("encoder_module", ENCODER_MODULES)
def test_streaming_equals_chunked_encode(encoder_module: str, left_context: int | None):
    """encode_streaming chunk by chunk (the last chunk shorter) equals encode with the same
    DynChunkTrainConfig; SpeechBrain's encode_streaming restarts the absolute positional
    encoding at every chunk, and differs."""
    net = tiny_net(encoder_module, num_decoder_layers=0).eval()
    feats = torch.randn(2, 22, FEATURES, generator=torch.Generator().manual_seed(2))
    config = DynChunkTrainConfig(chunk_size=4, left_context_size=left_context)
    with torch.no_grad():
        chunked = net.encode(feats, dynchunktrain_config=config)
        context = net.make_streaming_context(config)
        streamed = torch.cat(
            [net.encode_streaming(feats[:, i : i + 4], context) for i in range(0, 22, 4)], dim=1
        )
        assert context.frames_seen == 22
        assert (streamed - chunked).abs().max() <= 1e-5
        # The same through EncoderWrapper, as a streaming transducer calls it.
        wrapper = EncoderWrapper(net)
        context = wrapper.make_streaming_context(config)
        first = wrapper.forward_streaming(feats[:, :4], context)
        assert torch.allclose(first, chunked[:, :4], atol=1e-5)
        second = wrapper.forward_streaming(feats[:, 4:8], context)
        assert torch.allclose(second, chunked[:, 4:8], atol=1e-5)
        # SpeechBrain's own streaming path (positions restarting at 0 in each chunk) differs.
        context = net.make_streaming_context(config)
        SpeechBrainTransformerASR.encode_streaming(net, feats[:, :4], context)
        second = SpeechBrainTransformerASR.encode_streaming(net, feats[:, 4:8], context)
        assert (second - chunked[:, 4:8]).abs().max() > 1e-2


def test_streaming_refuses_a_stream_longer_than_max_length():
    net = tiny_net("conformer", num_decoder_layers=0, max_length=10).eval()
    context = net.make_streaming_context(DynChunkTrainConfig(4))
    with torch.no_grad():
        net.encode_streaming(torch.randn(1, 4, FEATURES), context)
        net.encode_streaming(torch.randn(1, 4, FEATURES), context)
        with pytest.raises(ValueError, match="max_length=10"):
            net.encode_streaming(torch.randn(1, 4, FEATURES), context)


@pytest.mark.parametrize(
    ("encoder_module", "attention_type"),
    [("conformer", "RelPosMHAXL"), ("transformer", "regularMHA"), ("branchformer", "RelPosMHAXL")],
)
def test_speechbrain_attention_types_build_speechbrains_model(encoder_module, attention_type):
    """Any other attention type is SpeechBrain's model, weight for weight; SummaryMixing's
    options are checked and unused, so that the mixer is swapped with one line."""
    arguments = {
        "tgt_vocab": VOCAB, "input_size": FEATURES, "d_model": 16, "nhead": 2,
        "num_encoder_layers": 2, "num_decoder_layers": 1, "d_ffn": 32, "kernel_size": 3,
        "csgu_linear_units": 32, "encoder_module": encoder_module,
        "attention_type": attention_type, "normalize_before": True, "causal": False,
    }
    torch.manual_seed(0)
    reference = SpeechBrainTransformerASR(**arguments).eval()
    torch.manual_seed(0)
    ours = TransformerASR(**arguments, mode="SummaryMixing-lite", summary_hid_dim=[8]).eval()
    assert type(ours.encoder) is type(reference.encoder)
    state, expected = ours.state_dict(), reference.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[key], expected[key]) for key in expected)
    feats, lengths, tokens, _ = fixed_batch()
    for a, b in zip(ours(feats, tokens, lengths), reference(feats, tokens, lengths), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="mode"):
        TransformerASR(**arguments, mode="SummaryMixing-xl")


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="local_proj_hidden"):
        tiny_net(local_proj_hidden=[16])
    with pytest.raises(ValueError, match="attention_type"):
        tiny_net(attention_type="SummaryMix")
    with pytest.raises(ValueError, match="encoder_module"):
        tiny_net(encoder_module="zipformer")
    with pytest.raises(ValueError, match="positional_encoding"):
        tiny_net(positional_encoding=None)
    with pytest.raises(ValueError, match="normalize_before"):
        tiny_net(normalize_before=False)
    with pytest.raises(ValueError, match="summary_out_dim"):
        tiny_net(mode="SummaryMixing-lite", summary_out_dim=8)


def test_published_commonvoice_branchformer_block_builds():
    hparams = load_hyperpyyaml(COMMONVOICE_BRANCHFORMER)
    net = hparams["Transformer"].eval()
    assert type(net.encoder) is BranchformerEncoder
    assert len(net.encoder.layers) == 18 and len(net.decoder.layers) == 6
    with torch.no_grad():
        enc_out, dec_out = net(torch.randn(1, 12, 640), torch.randint(0, 1000, (1, 3)))
    assert enc_out.shape == (1, 12, 512) and dec_out.shape == (1, 3, 512)


def test_published_conformer_transducer_block_builds_and_streams():
    hparams = load_hyperpyyaml(LIBRISPEECH_CONFORMER_TRANSDUCER)
    net = hparams["Transformer"].eval()
    assert type(net.encoder) is ConformerEncoder and not hasattr(net, "decoder")
    assert len(net.encoder.layers) == 12
    feats = torch.randn(1, 16, 640)
    config = DynChunkTrainConfig(chunk_size=8, left_context_size=2)
    with torch.no_grad():
        chunked = hparams["enc"](feats, torch.ones(1), dynchunktrain_config=config)
        context = hparams["enc"].make_streaming_context(config)
        streamed = [hparams["enc"].forward_streaming(feats[:, i : i + 8], context) for i in (0, 8)]
    assert (torch.cat(streamed, dim=1) - chunked).abs().max() <= 1e-5


@pytest.mark.parametrize("encoder_module", ["transformer", "conformer"])
def test_causal_model_sees_no_future(encoder_module: str):
    """causal=True (SpeechBrain's lookahead mask, a causal convolution): changing the frames
    after t changes no encoder output up to t."""
    net = tiny_net(encoder_module, causal=True).eval()
    feats = torch.randn(1, 20, FEATURES, generator=torch.Generator().manual_seed(3))
    changed = feats.clone()
    changed[:, 12:] += 1.0
    with torch.no_grad():
        before, after = net.encode(feats), net.encode(changed)
    assert torch.allclose(before[:, :12], after[:, :12], atol=1e-6)
    assert (before[:, 12:] - after[:, 12:]).abs().max() > 1e-2


def test_architecture_is_recorded_and_rebuilt():
    net = tiny_net("conformer", mode="SummaryMixing-fast", local_proj_out_dim=8)
    description = describe(net)
    assert description["class"] == "summarymixing.asr.TransformerASR"
    assert description["mode"] == "SummaryMixing-fast" and description["local_proj_out_dim"] == 8
    rebuilt = build(description)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in net.state_dict().items()
    }


def test_default_cell_is_the_published_asr_cell():
    """The authors' ASR cell has no layer norms (use_layernorm defaults to False here)."""
    cells = [m for m in tiny_net("conformer").encoder.modules() if isinstance(m, SummaryMixing)]
    assert len(cells) == 2 and not any(cell.use_layernorm for cell in cells)
    assert not any(isinstance(m, torch.nn.LayerNorm) for cell in cells for m in cell.modules())
    normed = tiny_net("conformer", use_layernorm=True).encoder.modules()
    assert all(cell.use_layernorm for cell in normed if isinstance(cell, SummaryMixing))


@pytest.mark.parametrize("chunks", [None, DynChunkTrainConfig(chunk_size=4, left_context_size=1)])
@pytest.mark.parametrize("encoder_module", ENCODER_MODULES)
def test_padding_changes_no_encoder_output(encoder_module: str, chunks):
    """An utterance encoded alone or padded in a batch (relative length 14 / 20) gives the same
    encoder output and the same decoder output."""
    net = tiny_net(encoder_module).eval()
    feats = torch.randn(2, 20, FEATURES, generator=torch.Generator().manual_seed(4))
    tokens = torch.tensor([[1, 3, 4], [1, 5, 6]])
    lengths = torch.tensor([1.0, 0.7])
    with torch.no_grad():
        batch_enc, batch_dec = net(feats, tokens, lengths, dynchunktrain_config=chunks)
        alone_enc, alone_dec = net(feats[1:, :14], tokens[1:], torch.ones(1),
                                   dynchunktrain_config=chunks)
    assert torch.allclose(batch_enc[1, :14], alone_enc[0], atol=1e-5)
    assert torch.allclose(batch_dec[1], alone_dec[0], atol=1e-5)
