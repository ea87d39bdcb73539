"""Export folders (hyperparams.yaml + encoder.ckpt), loading, architecture checks, inference
interface and feature extraction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.parameter_transfer import Pretrainer
from tiny_models import tiny_encoder, tiny_export

from summarymixing import export
from summarymixing.architecture import build, describe
from summarymixing.export import ArchitectureRecord, export_encoder, load_pretrained
from summarymixing.extract import main as extract_main
from summarymixing.inference import W2V2Features


def outputs_equal(first, second, wavs, lens) -> bool:
    with torch.no_grad():
        return all(
            torch.equal(a, b) for a, b in zip(first(wavs, lens), second(wavs, lens), strict=True)
        )


@pytest.mark.parametrize("context", ["conformer", "transformer"])
def test_export_round_trip(tmp_path: Path, context: str) -> None:
    torch.manual_seed(0)
    encoder = tiny_encoder(context=context, dropout=0.1, layerdrop_prob=0.2).eval()
    folder = export_encoder(encoder, tmp_path / "sub" / "encoder")
    wavs, lens = torch.randn(2, 12000), torch.tensor([1.0, 0.8])
    loaded = load_pretrained(folder, expected_arch={"attention_type": "SummaryMixing"})
    assert not loaded.training and outputs_equal(encoder, loaded, wavs, lens)
    assert describe(loaded) == describe(encoder)
    features = W2V2Features.from_hparams(source=str(folder))
    with torch.no_grad():
        for a, b in zip(features.encode_batch(wavs, lens), encoder(wavs, lens), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # same math, other kernels


def test_export_is_loadable_with_speechbrain_pretrainer(tmp_path: Path) -> None:
    """What a SpeechBrain YAML does: the architecture in YAML, the weights by a Pretrainer."""
    torch.manual_seed(0)
    encoder = tiny_encoder().eval()
    folder = export_encoder(encoder, tmp_path / "encoder")
    with open(folder / "hyperparams.yaml") as stream:
        fresh = load_hyperpyyaml(stream)["encoder"].eval()
    assert not outputs_equal(encoder, fresh, torch.randn(1, 8000), torch.ones(1))
    pretrainer = Pretrainer(loadables={"encoder": fresh},
                            paths={"encoder": str(folder / "encoder.ckpt")})
    pretrainer.collect_files()
    pretrainer.load_collected()
    assert outputs_equal(encoder, fresh, torch.randn(1, 8000), torch.ones(1))
    assert torch.load(folder / "encoder.ckpt", weights_only=True).keys() == \
        encoder.state_dict().keys()


def test_encode_file_equals_encode_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    folder = tiny_export(tmp_path / "encoder")
    wav = torch.randn(1, 9000) * 0.1
    sf.write(tmp_path / "a.wav", wav[0].numpy(), 16000, subtype="FLOAT")
    features = W2V2Features.from_hparams(source=str(folder))
    from_file = features.encode_file(str(tmp_path / "a.wav"))
    from_batch = features.encode_batch(wav)
    for a, b in zip(from_file, from_batch, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_expected_architecture_is_checked(tmp_path: Path) -> None:
    folder = tiny_export(tmp_path / "encoder")
    with pytest.raises(ValueError, match=r"'context.attention_type': expected 'regularMHA', "
                                         r"found 'SummaryMixing'"):
        load_pretrained(folder, expected_arch={"attention_type": "regularMHA"})
    with pytest.raises(ValueError, match="'context.num_layers': expected 12, found 2"):
        load_pretrained(folder, expected_arch={"num_layers": 12})
    with pytest.raises(ValueError, match="unknown architecture key 'layers'"):
        load_pretrained(folder, expected_arch={"layers": 2})
    load_pretrained(folder, expected_arch={"mode": "SummaryMixing", "context.d_ffn": 64})


def test_clear_errors_for_missing_or_broken_exports(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no pre-trained encoder at"):
        load_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no hyperparams.yaml in"):
        load_pretrained(tmp_path)
    old_style = tmp_path / "encoder.pt"
    old_style.write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="is a file: expected an export folder"):
        load_pretrained(old_style)
    folder = tiny_export(tmp_path / "encoder")
    weights = folder / "encoder.ckpt"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    with pytest.raises(ValueError, match=f"cannot read the weights file {weights}"):
        load_pretrained(folder)


def test_an_interrupted_export_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    first = tiny_encoder().eval()
    folder = export_encoder(first, tmp_path / "encoder")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        export_encoder(tiny_encoder(), folder)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder"], "no staging folder left"
    assert outputs_equal(first, load_pretrained(folder), torch.randn(1, 8000), torch.ones(1))
    second = tiny_encoder(num_layers=1).eval()
    export_encoder(second, folder)  # replaces it
    assert load_pretrained(folder).num_hidden_states == 2


def test_architecture_record_names_the_differing_key(tmp_path: Path) -> None:
    path = tmp_path / "architecture.ckpt"
    ArchitectureRecord(tiny_encoder()).save(path)
    ArchitectureRecord(tiny_encoder(dropout=0.3, summary_dropout="utterance")).load(path)
    with pytest.raises(ValueError, match="'context.d_ffn': expected 128, found 64"):
        ArchitectureRecord(tiny_encoder(d_ffn=128)).load(path)
    with pytest.raises(ValueError, match="'context.class': expected "
                                         "'summarymixing.encoders.TransformerEncoder'"):
        ArchitectureRecord(tiny_encoder(context="transformer")).load(path)


def test_a_crafted_architecture_builds_nothing_but_modules(tmp_path: Path) -> None:
    description = describe(tiny_encoder())
    assert type(build(description)).__name__ == "W2V2Encoder"
    for path in ("os.system", "builtins.eval", "subprocess.Popen", "speechbrain.utils.fetch"):
        crafted = {**description, "class": path}
        with pytest.raises(ValueError, match="refusing to build|cannot find"):
            build(crafted)
    crafted = json.loads(json.dumps(description))
    crafted["context"]["activation"] = {"name": "speechbrain.utils.distributed.run_on_main"}
    with pytest.raises(ValueError, match="not a torch.nn.Module class"):
        build(crafted)


def test_extract_writes_resumable_features(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tiny_export(tmp_path / "encoder")
    audio = tmp_path / "audio"
    (audio / "spk").mkdir(parents=True)
    waves = {"a": torch.randn(1, 8000) * 0.1, "spk/b": torch.randn(1, 12000) * 0.1}
    for uid, wav in waves.items():
        sf.write(audio / f"{uid}.wav", wav[0].numpy(), 16000)
    (audio / "spk" / "._b.wav").write_bytes(b"macOS resource fork")
    out = tmp_path / "features"
    assert extract_main([str(audio), "--model", str(model), "--out", str(out)]) == 0
    features = W2V2Features.from_hparams(source=str(model))
    for uid in waves:
        array = np.load(out / f"{uid}.npy", allow_pickle=False)
        expected = torch.stack([h[0] for h in features.encode_file(str(audio / f"{uid}.wav"))])
        np.testing.assert_allclose(array, expected.numpy(), atol=1e-5)
    index = (out / "features.csv").read_text().splitlines()
    assert index[0] == "ID,path,frames" and len(index) == 3
    stamp = (out / "a.npy").stat().st_mtime_ns
    (out / "spk" / "b.npy").unlink()  # as if killed before b
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"ID,wav\na,{audio / 'a.wav'}\nspk/b,{audio / 'spk' / 'b.wav'}\n")
    assert extract_main([str(manifest), "--model", str(model), "--out", str(out)]) == 0
    assert (out / "a.npy").stat().st_mtime_ns == stamp, "done utterances are not redone"
    assert (out / "spk" / "b.npy").is_file()
    layers = tmp_path / "layers"
    extract_main([str(manifest), "--model", str(model), "--out", str(layers), "--layers", "0,2"])
    assert np.load(layers / "a.npy").shape[0] == 2


def test_extract_reports_unreadable_files(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    model = tiny_export(tmp_path / "encoder")
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "good.wav", torch.randn(8000).numpy() * 0.1, 16000)
    (audio / "bad.flac").write_bytes(b"not audio")
    out = tmp_path / "features"
    assert extract_main([str(audio), "--model", str(model), "--out", str(out)]) == 1
    assert str(audio / "bad.flac") in caplog.text
    assert (out / "good.npy").is_file() and not (out / "features.csv").exists()
    manifest = tmp_path / "m.csv"
    manifest.write_text("ID,path\na,x.wav\n")
    with pytest.raises(ValueError, match="expected a column 'wav'"):
        extract_main([str(manifest), "--model", str(model), "--out", str(out)])
