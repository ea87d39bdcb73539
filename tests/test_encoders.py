"""Whole encoders: padding consistency, hidden states, sizes and the one-line YAML swap."""

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.nnet.activations import Swish
from speechbrain.nnet.attention import MultiheadAttention, RelPosMHAXL
from torch import nn

from summarymixing import ATTENTION_TYPES, ConformerEncoder, MultiheadSDPA, SummaryMixing
from summarymixing.encoders import TransformerEncoder

ENCODERS = [ConformerEncoder, TransformerEncoder]


def tiny(encoder_class, attention_type, **kwargs):
    torch.manual_seed(0)
    extra = {"kernel_size": 5} if encoder_class is ConformerEncoder else {}
    return encoder_class(
        2, 32, 64, 4, attention_type=attention_type, **extra, **kwargs
    ).eval()


@pytest.mark.parametrize("encoder_class", ENCODERS)
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_alone_equals_padded_in_batch(encoder_class, attention_type):
    encoder = tiny(encoder_class, attention_type)
    lengths = [17, 9, 4]
    torch.manual_seed(2)
    x = torch.randn(len(lengths), max(lengths), 32)
    padding = torch.arange(max(lengths))[None, :] >= torch.tensor(lengths)[:, None]
    x = x.masked_fill(padding.unsqueeze(-1), 50.0)  # loud padding must not leak
    with torch.no_grad():
        batched = encoder(x, src_key_padding_mask=padding)[0]
        for row, length in enumerate(lengths):
            alone = encoder(x[row : row + 1, :length])[0]
            assert (batched[row, :length] - alone[0]).abs().max() <= 1e-5
        nothing_padded = torch.zeros_like(padding)
        assert torch.isfinite(encoder(x, src_key_padding_mask=nothing_padded)[0]).all()


@pytest.mark.parametrize("encoder_class", ENCODERS)
def test_hidden_states_of_every_layer(encoder_class):
    encoder = tiny(encoder_class, "SummaryMixing", output_hidden_states=True)
    x = torch.randn(2, 7, 32)
    out, attentions, hidden = encoder(x)
    assert len(hidden) == 3 and len(attentions) == 2
    assert hidden[0] is x
    torch.testing.assert_close(out, encoder.norm(hidden[-1]))
    torch.testing.assert_close(hidden[1], encoder.layers[0](x)[0])


def test_layerdrop_keeps_one_hidden_state_per_layer():
    encoder = tiny(ConformerEncoder, "SummaryMixing", output_hidden_states=True,
                   layerdrop_prob=0.5).train()
    torch.manual_seed(3)
    counts = {len(encoder(torch.randn(1, 4, 32))[1]) for _ in range(20)}
    hidden = encoder(torch.randn(1, 4, 32))[2]
    assert len(hidden) == 3
    assert counts == {0, 1, 2}, "layers are dropped at random in training"
    encoder.eval()
    assert len(encoder(torch.randn(1, 4, 32))[1]) == 2


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_gradients_reach_every_parameter(attention_type):
    encoder = tiny(ConformerEncoder, attention_type).train()
    out = encoder(torch.randn(2, 6, 32))[0]
    out.pow(2).mean().backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_activation_checkpointing_gives_the_same_gradients():
    x = torch.randn(2, 6, 32)
    gradients = []
    for checkpointing in (False, True):
        encoder = tiny(ConformerEncoder, "SummaryMixing", activation_checkpointing=checkpointing)
        encoder.train()
        encoder(x)[0].sum().backward()
        gradients.append([p.grad for p in encoder.parameters()])
    for plain, recomputed in zip(*gradients, strict=True):
        torch.testing.assert_close(plain, recomputed)


def activations_of(cell: SummaryMixing) -> set[type]:
    """The activations after every branch layer (branches are [linear, activation] blocks) and in
    the combiner."""
    branches = (cell.local_proj, cell.summary_proj)
    return {type(block) for branch in branches for block in branch[1::2]} | {
        type(cell.combiner_activation)
    }


@pytest.mark.parametrize(
    ("encoder_class", "kwargs", "expected"),
    [(ConformerEncoder, {}, Swish),
     (ConformerEncoder, {"summary_options": {"activation": nn.GELU}}, nn.GELU),
     (TransformerEncoder, {}, nn.ReLU),
     (TransformerEncoder, {"activation": nn.GELU}, nn.GELU),
     (TransformerEncoder, {"activation": nn.GELU, "summary_options": {"activation": nn.SiLU}},
      nn.SiLU)],
)
def test_cell_gets_the_layers_activation_unless_told_otherwise(encoder_class, kwargs, expected):
    """As in the authors' Conformer, the cell uses the layer's activation (Swish there)."""
    encoder = tiny(encoder_class, "SummaryMixing", **kwargs)
    for layer in encoder.layers:
        cell = layer.mha_layer if encoder_class is ConformerEncoder else layer.self_att
        assert activations_of(cell) == {expected}


def test_cell_gets_the_layers_dropout_and_the_dropout_variant():
    encoder = tiny(ConformerEncoder, "SummaryMixing", dropout=0.1,
                   summary_options={"summary_dropout": "utterance"})
    cells = [layer.mha_layer for layer in encoder.layers]
    assert all(cell.dropout == 0.1 and cell.summary_dropout == "utterance" for cell in cells)
    assert tiny(ConformerEncoder, "SummaryMixing").layers[0].mha_layer.summary_dropout == "frame"


def test_unknown_attention_type_or_option():
    with pytest.raises(ValueError, match="expected attention_type in"):
        ConformerEncoder(1, 32, 64, 4, attention_type="FlashMixing")
    for attention_type in ("SummaryMixing", "regularMHA"):  # a typo is caught whatever the mixer
        with pytest.raises(ValueError, match="unknown SummaryMixing option 'summary_hidden'"):
            TransformerEncoder(1, 32, 64, 4, attention_type=attention_type,
                               summary_options={"summary_hidden": [32]})


def test_empty_input_is_an_error():
    with pytest.raises(ValueError, match="time > 0"):
        tiny(ConformerEncoder, "SummaryMixing")(torch.randn(2, 0, 32))


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_sizes():
    """The paper's w2v2 context encoder: 152.8M (SummaryMixing) vs 163.4M (regularMHA)."""
    config = {"num_layers": 12, "d_model": 768, "d_ffn": 3072, "nhead": 8,
              "summary_options": {"local_proj_hid_dim": [768], "summary_hid_dim": [768]}}
    summary_mixing = count(ConformerEncoder(attention_type="SummaryMixing", **config))
    attention = count(ConformerEncoder(attention_type="regularMHA", **config))
    assert summary_mixing == pytest.approx(152.8e6, rel=0.005)
    assert attention == pytest.approx(163.4e6, rel=0.005)


YAML = """
d_model: 32
attention_type: {attention_type}
encoder: !new:summarymixing.ConformerEncoder
    num_layers: 2
    d_model: !ref <d_model>
    d_ffn: 64
    nhead: 4
    kernel_size: 5
    attention_type: !ref <attention_type>
    summary_options:
        local_proj_hid_dim: [32]
        summary_hid_dim: [32]
"""


@pytest.mark.parametrize(
    ("attention_type", "mixer_class"),
    [("SummaryMixing", SummaryMixing), ("regularMHA", MultiheadAttention),
     ("RelPosMHAXL", RelPosMHAXL), ("SDPA", MultiheadSDPA)],
)
def test_yaml_swap_of_one_line(attention_type, mixer_class):
    hparams = load_hyperpyyaml(YAML.format(attention_type=attention_type))
    encoder = hparams["encoder"]
    assert all(type(layer.mha_layer) is mixer_class for layer in encoder.layers)
    assert encoder(torch.randn(2, 5, 32))[0].shape == (2, 5, 32)


@pytest.mark.parametrize("normalize_before", [True, False])
def test_layers_compute_speechbrains_layers(normalize_before):
    """Our layers (own forward, for chunking and streaming) compute SpeechBrain's layers: same
    weights, same output, for a Conformer and a pre- or post-norm Transformer."""
    from speechbrain.lobes.models.transformer.Conformer import ConformerEncoderLayer
    from speechbrain.lobes.models.transformer.Transformer import TransformerEncoderLayer

    torch.manual_seed(0)
    x = torch.randn(2, 11, 32)
    mask = torch.ones(11, 11, dtype=torch.bool).triu(1)
    pairs = [(
        TransformerEncoder(1, 32, 64, 4, attention_type="regularMHA",
                           normalize_before=normalize_before).layers[0],
        TransformerEncoderLayer(64, 4, 32, normalize_before=normalize_before),
    )]
    if normalize_before:
        pairs.append((
            tiny(ConformerEncoder, "regularMHA").layers[0],
            ConformerEncoderLayer(32, 64, 4, kernel_size=5, attention_type="regularMHA"),
        ))
    for ours, theirs in pairs:
        theirs.load_state_dict(ours.state_dict())
        ours.eval(), theirs.eval()
        with torch.no_grad():
            torch.testing.assert_close(ours(x, src_mask=mask)[0], theirs(x, src_mask=mask)[0])
