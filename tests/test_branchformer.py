"""The Branchformer encoder: SpeechBrain's layer with our mixer, the authors' SummaryMixing merge,
a cgMLP convolution that is SpeechBrain's without padding and padding-exact with it."""

import pytest
import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml
from speechbrain.lobes.models.convolution import ConvolutionalSpatialGatingUnit
from speechbrain.lobes.models.transformer.Branchformer import BranchformerEncoderLayer
from torch import nn

from summarymixing import BranchformerEncoder, SummaryMixing
from summarymixing.architecture import build, describe
from summarymixing.branchformer import ChunkedSpatialGatingUnit, reflect_window_indices


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def authors_layer_count(d_model, csgu, kernel, local_hid, local_out, summary_hid, summary_out):
    """Parameters of one SummaryMixing Branchformer layer of the authors' model (nhead 1),
    from its structure: cell (local and summary MLPs, two layer norms, combiner), two layer norms,
    cgMLP (projections, layer norm, depthwise convolution), and the merge MLP over
    [mixer; cgMLP] with hidden sizes summary_hid_dim."""
    sizes_local = [d_model, *local_hid, local_out]
    sizes_summary = [d_model, *summary_hid, summary_out]
    cell = sum(linear(a, b) for a, b in zip(sizes_local[:-1], sizes_local[1:], strict=True))
    cell += sum(linear(a, b) for a, b in zip(sizes_summary[:-1], sizes_summary[1:], strict=True))
    cell += 2 * local_out + 2 * summary_out + linear(local_out + summary_out, d_model)
    norms = 2 * (2 * d_model)
    half = csgu // 2
    cgmlp = linear(d_model, csgu) + 2 * half + (half * kernel + half) + linear(half, d_model)
    merge_sizes = [2 * d_model, *summary_hid, d_model]
    merge = sum(linear(a, b) for a, b in zip(merge_sizes[:-1], merge_sizes[1:], strict=True))
    return cell + norms + cgmlp + merge


def test_summary_mixing_merge_is_the_authors_mlp():
    encoder = BranchformerEncoder(1, 16, 1, kernel_size=3, csgu_linear_units=32,
                                  summary_options={"summary_hid_dim": [24]})
    merge = encoder.layers[0].merge_proj
    linears = [m for m in merge if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 24), (24, 16)]
    assert [type(m) for m in merge] == [nn.Linear, nn.GELU, nn.Linear, nn.GELU]
    attention = BranchformerEncoder(1, 16, 1, kernel_size=3, csgu_linear_units=32,
                                    attention_type="regularMHA")
    assert isinstance(attention.layers[0].merge_proj, nn.Linear)  # SpeechBrain's merge
    assert isinstance(encoder.layers[0].mha_layer, SummaryMixing)
    assert all(isinstance(m, nn.GELU) for m in encoder.layers[0].mha_layer.summary_proj[1::2])


def test_parameter_count_of_the_published_librispeech_configuration():
    """The authors' LibriSpeech Branchformer + SummaryMixing encoder: d_model 512, nhead 1,
    18 layers, csgu_linear_units 3072, kernel 31, local [512] -> 512, summary [512] -> 512."""
    encoder = BranchformerEncoder(
        18, 512, 1, kernel_size=31, csgu_linear_units=3072,
        summary_options={"local_proj_hid_dim": [512], "local_proj_out_dim": 512,
                         "summary_hid_dim": [512], "summary_out_dim": 512},
    )
    expected = 18 * authors_layer_count(512, 3072, 31, [512], 512, [512], 512) + 2 * 512
    assert count(encoder) == expected
    assert expected == 86_078_464  # 86.08M encoder parameters


def test_regular_mha_layer_is_speechbrains():
    """Without padding or chunks, our layer with SpeechBrain's attention is SpeechBrain's layer
    (same weights, same output)."""
    torch.manual_seed(0)
    ours = BranchformerEncoder(1, 16, 4, kernel_size=5, csgu_linear_units=32,
                               attention_type="regularMHA").layers[0].eval()
    theirs = BranchformerEncoderLayer(16, 4, kernel_size=5, csgu_linear_units=32,
                                      attention_type="regularMHA").eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 13, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], theirs(x)[0])


def test_gating_unit_is_speechbrains_and_padding_exact():
    torch.manual_seed(0)
    ours = ChunkedSpatialGatingUnit(16, kernel_size=7).eval()
    nn.init.normal_(ours.conv.conv.weight)  # SpeechBrain starts it near zero
    theirs = ConvolutionalSpatialGatingUnit(16, kernel_size=7).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 12, 16)
    torch.testing.assert_close(ours(x), theirs(x))
    padded = torch.cat([x, 50.0 * torch.randn(2, 5, 16)], dim=1)
    padding = torch.arange(17)[None, :] >= 12
    torch.testing.assert_close(ours(padded, padding.expand(2, -1))[:, :12], theirs(x))
    # SpeechBrain's own unit reads the padding (why ours exists).
    assert (theirs(padded)[:, :12] - theirs(x)).abs().max() > 1e-2


def test_reflect_indices_are_reflect_padding():
    """One chunk over the whole sequence: the windows of F.pad(mode='reflect')."""
    time, half = 9, 3
    indices = reflect_window_indices(time, torch.tensor([time]), time, half)[0, 0]
    positions = torch.arange(time, dtype=torch.float32)[None, None]
    expected = F.pad(positions, (half, half), mode="reflect")[0, 0].long()
    assert indices.tolist() == expected.tolist()


def test_even_kernel_is_refused():
    with pytest.raises(ValueError, match="kernel size must be an odd number"):
        BranchformerEncoder(1, 16, 4, kernel_size=4, csgu_linear_units=32)


def test_yaml_and_architecture_round_trip():
    hparams = load_hyperpyyaml("""
encoder: !new:summarymixing.BranchformerEncoder
    num_layers: 2
    d_model: 16
    nhead: 1
    kernel_size: 3
    csgu_linear_units: 32
    activation: !name:torch.nn.GELU
    attention_type: SummaryMixing
    summary_options:
        summary_hid_dim: [24]
""")
    encoder = hparams["encoder"]
    rebuilt = build(describe(encoder))
    assert count(rebuilt) == count(encoder)
    assert describe(rebuilt) == describe(encoder)
    assert encoder(torch.randn(2, 5, 16))[0].shape == (2, 5, 16)
