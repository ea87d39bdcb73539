"""The ASR recipe (recipes/asr/train.py, hparams/asr/mini.yaml) end to end on the mini CommonVoice
Welsh corpus: a SummaryMixing Conformer CTC + attention model trained from scratch with Dynamic
Chunk Training (CPU, one intra-op thread, well under 90 s), decoded with SpeechBrain's searchers,
and streamed chunk by chunk from its checkpoint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from data_prep.audio import read_audio
from recipes.asr.train import main
from summarymixing.asr import TransformerASR

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(mini_corpora: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("asr") / "mini"
    metrics = main([
        str(ROOT / "hparams" / "asr" / "mini.yaml"),
        f"--data_folder={mini_corpora / 'cv-corpus-mini' / 'cy'}",
        f"--output_folder={out}",
    ])
    return out, metrics


def test_recipe_learns_and_decodes(trained):
    out, metrics = trained
    assert json.loads((out / "metrics.json").read_text()) == metrics
    test = metrics["test"]
    # The decoder's next-token accuracy is far above chance (1 / 32 characters); the beam search
    # (CTC-scored attention decoding) and CTC greedy decoding give error rates (in %; insertions
    # can take the WER over 100).
    assert test["ACC"] > 0.2, test
    assert test["CER"] < 90.0, test
    for key in ("WER", "CER", "WER_ctc_greedy"):
        assert 0.0 <= test[key] < 1000.0, key
    log = (out / "train_log.txt").read_text()
    train_losses = [float(x) for x in re.findall(r"train loss: ([0-9.e+-]+)", log)]
    assert len(train_losses) == 10 and train_losses[-1] < 0.8 * train_losses[0], train_losses
    assert "valid WER" in log.splitlines()[-2]  # the last epoch decodes (valid_search_interval)
    assert "nonfinite: 0" in log
    assert (out / "wer_test.txt").read_text().startswith("%WER")
    assert list((out / "save" / "tokenizer").glob("*.model"))
    # num_checkpoints_to_keep (2) best by accuracy, and SpeechBrain keeps the latest one too
    assert len(list((out / "save").glob("CKPT+*"))) in (2, 3)
    assert (out / "train.py").is_file() and (out / "hyperparams.yaml").is_file()


def test_trained_model_streams_as_it_was_evaluated(trained):
    """The checkpoint's encoder, fed one test utterance chunk by chunk (encode_streaming),
    gives the chunked encode the test stage used (the YAML's test_config)."""
    out, _ = trained
    with open(out / "hyperparams.yaml", encoding="utf-8") as stream:
        hparams = load_hyperpyyaml(stream)
    hparams["checkpointer"].recover_if_possible(max_key="ACC")
    net: TransformerASR = hparams["Transformer"].eval()
    config = hparams["dynchunktrain_config_sampler"].test_config
    assert config.chunk_size == 8 and config.left_context_size == 2
    row = sb.dataio.dataio.load_data_csv(hparams["test_csv"])
    signal = read_audio(next(iter(row.values()))["wav"], sample_rate=hparams["sample_rate"])
    with torch.no_grad():
        feats = hparams["compute_features"](signal[None])
        feats = hparams["normalize"].eval()(feats, torch.ones(1))
        src = hparams["CNN"].eval()(feats)  # (1, T, C, F)
        chunked = net.encode(src, torch.ones(1), dynchunktrain_config=config)
        full_context = net.encode(src, torch.ones(1))
        context = net.make_streaming_context(config)
        frames = src.shape[1]
        streamed = torch.cat(
            [net.encode_streaming(src[:, i : i + 8], context) for i in range(0, frames, 8)], dim=1
        )
    assert frames > 3 * config.chunk_size
    assert (streamed - chunked).abs().max() <= 1e-5
    assert (full_context - chunked).abs().max() > 1e-2  # the chunks do restrict the context


@pytest.mark.parametrize(
    ("yaml", "encoder", "layers"),
    [("conformer_summarymixing.yaml", "ConformerEncoder", 12),
     ("branchformer_summarymixing.yaml", "BranchformerEncoder", 18)],
)
def test_full_yamls_build_the_published_sizes(yaml: str, encoder: str, layers: int, tmp_path):
    with open(ROOT / "hparams" / "asr" / yaml, encoding="utf-8") as stream:
        hparams = load_hyperpyyaml(
            stream, {"data_folder": "unused", "output_folder": str(tmp_path)}
        )
    net = hparams["Transformer"]
    assert isinstance(net, TransformerASR) and net.attention_type == "SummaryMixing"
    assert type(net.encoder).__name__ == encoder and len(net.encoder.layers) == layers
    assert len(net.decoder.layers) == 6 and net.encoder.norm.norm.normalized_shape == (512,)
    assert hparams["output_neurons"] == 1000 and not hparams["streaming"]
