"""Export and load the pre-trained wav2vec 2.0 encoder, the SpeechBrain way.

An export is a folder, as SpeechBrain's pre-trained models are::

    hyperparams.yaml   builds ``encoder`` with ``!new:`` (its architecture, written from the
                       arguments it was built with), lists ``modules`` and a SpeechBrain
                       ``Pretrainer`` that loads encoder.ckpt
    encoder.ckpt       the encoder's weights (filterbank front end + context encoder), a state
                       dict (loads with ``torch.load(..., weights_only=True)``)

It loads with ``summarymixing.inference.W2V2Features.from_hparams(source=folder)``, or in a
downstream YAML with one key::

    encoder: !apply:summarymixing.export.load_pretrained
        path: !ref <pretrained_path>
        expected_arch: {attention_type: SummaryMixing}

``load_pretrained`` also reads a pre-training checkpoint written by SpeechBrain's
``Checkpointer`` (a ``CKPT+...`` folder holding ``architecture.ckpt`` and ``model.ckpt``, or
the ``save`` folder above them: its newest checkpoint), and a Hugging Face wav2vec 2.0
checkpoint (a hub id such as ``facebook/wav2vec2-base``, a ``save_pretrained`` folder, or
``hf:<either>``; see ``summarymixing.downstream.huggingface``). A checkpoint's architecture is
JSON data from which only ``torch.nn.Module`` classes of this package, SpeechBrain and
``torch.nn`` are built (``summarymixing.architecture.build``); an export's
``hyperparams.yaml`` is code, as every SpeechBrain ``hyperparams.yaml``: load exports you trust.

Exports are written into a temporary folder and renamed into place when complete, so an
interrupted export never leaves a half-written model. From the command line::

    python -m summarymixing.export CHECKPOINT_DIR OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

from summarymixing.architecture import build, check_architecture, describe, to_yaml
from summarymixing.checkpoints import SafeCheckpointer
from summarymixing.downstream.huggingface import huggingface_source, load_huggingface
from summarymixing.w2v2.encoder import W2V2Encoder

if TYPE_CHECKING:
    from summarymixing.downstream.hf_encoder import HFWav2Vec2Encoder

logger = logging.getLogger(__name__)

ARCH_FILE = "architecture.ckpt"
MODEL_FILE = "model.ckpt"
ENCODER_PREFIX = "encoder."
HPARAMS_FILE = "hyperparams.yaml"
WEIGHTS_FILE = "encoder.ckpt"


@register_checkpoint_hooks
class ArchitectureRecord:
    """Checkpointer recoverable that stores a module's architecture beside its weights
    (``architecture.ckpt``, JSON: ``summarymixing.architecture.describe``) and refuses to resume
    from a checkpoint of another architecture, naming the first key that differs. List it
    first among the recoverables so that the check runs before any weights are loaded.

    Arguments
    ---------
    module : nn.Module
        A module of this package (e.g. the ``W2V2Encoder``) built from YAML.

    Example
    -------
    >>> import tempfile
    >>> from summarymixing import TransformerEncoder
    >>> path = Path(tempfile.mkdtemp()) / ARCH_FILE
    >>> ArchitectureRecord(TransformerEncoder(2, 16, 32, 4)).save(path)
    >>> ArchitectureRecord(TransformerEncoder(2, 16, 64, 4)).load(path)
    Traceback (most recent call last):
    ...
    ValueError: architecture mismatch in ... for key 'd_ffn': expected 64, found 32
    """

    def __init__(self, module: torch.nn.Module):
        self.architecture = describe(module)

    @mark_as_saver
    def save(self, path: str | os.PathLike) -> None:
        """Write the architecture as JSON."""
        Path(path).write_text(json.dumps(self.architecture, indent=2), encoding="utf-8")

    @mark_as_loader
    def load(self, path: str | os.PathLike, end_of_epoch: bool = False) -> None:
        """Check that the checkpoint's architecture is this one."""
        del end_of_epoch
        check_architecture(self.architecture, read_architecture(path), str(path))


def read_architecture(path: str | os.PathLike) -> dict[str, Any]:
    """Read an ``architecture.ckpt`` JSON file (names the file when it is not JSON)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read the architecture file {path}: {err}") from err


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict saved with ``torch.save``, loaded without unpickling code
    (``weights_only=True``); a truncated or foreign file gives an error naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"missing weights file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated / foreign files
        raise ValueError(f"cannot read the weights file {path}: {err}") from err
    if not isinstance(state, dict):
        raise ValueError(f"expected a state dict in {path}, got {type(state).__name__}")
    return state


def export_yaml(encoder: W2V2Encoder) -> str:
    """The ``hyperparams.yaml`` of an export of ``encoder``."""
    sample_rate = encoder.frontend.init_arguments["sample_rate"]
    return "\n".join([
        "# SummaryMixing wav2vec 2.0 encoder (summarymixing.export).",
        "# Load: summarymixing.inference.W2V2Features.from_hparams(source=<this folder>)",
        "#   or summarymixing.export.load_pretrained(<this folder>).",
        f"sample_rate: {sample_rate}",
        to_yaml(describe(encoder), "encoder"),
        "audio_normalizer: !new:speechbrain.dataio.preprocess.AudioNormalizer",
        "    sample_rate: !ref <sample_rate>",
        "modules:",
        "    encoder: !ref <encoder>",
        "pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer",
        "    loadables:",
        "        encoder: !ref <encoder>",
        "",
    ])


def export_encoder(encoder: W2V2Encoder, folder: str | os.PathLike) -> Path:
    """Write ``encoder`` as an export folder (``hyperparams.yaml`` + ``encoder.ckpt``),
    replacing ``folder`` only once the new export is complete.

    Arguments
    ---------
    encoder : W2V2Encoder
        The encoder (unwrapped from DDP), built from YAML.
    folder : path-like
        The export folder; parent folders are created.

    Returns
    -------
    Path
        ``folder``.

    Example
    -------
    >>> import tempfile
    >>> from summarymixing import ConformerEncoder
    >>> from summarymixing.w2v2 import FbankFrontEnd
    >>> encoder = W2V2Encoder(FbankFrontEnd(n_mels=40, out_channels=[32, 32]),
    ...                       ConformerEncoder(1, 16, 32, 4, kernel_size=3,
    ...                                        output_hidden_states=True), d_model=16)
    >>> folder = export_encoder(encoder, Path(tempfile.mkdtemp()) / "encoder")
    >>> sorted(p.name for p in folder.iterdir())
    ['encoder.ckpt', 'hyperparams.yaml']
    >>> load_pretrained(folder, expected_arch={"d_model": 16}).num_hidden_states
    2
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        (staging / HPARAMS_FILE).write_text(export_yaml(encoder), encoding="utf-8")
        state = {key: value.detach().cpu() for key, value in encoder.state_dict().items()}
        torch.save(state, staging / WEIGHTS_FILE)
        for path in staging.iterdir():
            with open(path, "rb") as stream:
                os.fsync(stream.fileno())
        staging.chmod(0o755)
        previous = None
        if folder.exists():
            previous = folder.with_name(f".{folder.name}.previous")
            shutil.rmtree(previous, ignore_errors=True)
            folder.rename(previous)
        staging.rename(folder)
        if previous is not None:
            shutil.rmtree(previous)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Exported the pre-trained encoder to %s", folder)
    return folder


def find_checkpoint_folder(path: Path) -> Path:
    """The checkpoint to read: ``path`` itself when it holds ``architecture.ckpt``, else the
    newest complete checkpoint of the Checkpointer folder ``path`` (``find_checkpoint``)."""
    if (path / ARCH_FILE).is_file():
        return path
    checkpoint = SafeCheckpointer(path).find_checkpoint(
        ckpt_predicate=lambda ckpt: (ckpt.path / ARCH_FILE).is_file()
    )
    if checkpoint is None:
        raise FileNotFoundError(
            f"no {HPARAMS_FILE} in {path} (an export), no {ARCH_FILE} (a pre-training "
            "checkpoint) nor any CKPT+* checkpoint below it, and no config.json (a Hugging Face "
            "wav2vec 2.0 folder)"
        )
    return Path(checkpoint.path)


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """Architecture and encoder weights of a pre-training checkpoint (see
    :func:`find_checkpoint_folder`); reads data only (JSON and ``weights_only``)."""
    checkpoint = find_checkpoint_folder(path)
    weights = load_weights(checkpoint / MODEL_FILE)
    encoder_state = {
        key[len(ENCODER_PREFIX):]: value
        for key, value in weights.items()
        if key.startswith(ENCODER_PREFIX)
    }
    if not encoder_state:
        raise ValueError(f"expected {ENCODER_PREFIX}* weights in {checkpoint / MODEL_FILE}")
    return read_architecture(checkpoint / ARCH_FILE), encoder_state, str(checkpoint)


def load_export(folder: Path, expected_arch: Mapping[str, Any] | None = None) -> W2V2Encoder:
    """The encoder of an export folder (built by its ``hyperparams.yaml``, the weights of
    ``encoder.ckpt`` read once, as its ``Pretrainer`` would)."""
    hparams_file = folder / HPARAMS_FILE
    with open(hparams_file, encoding="utf-8") as stream:
        hparams = load_hyperpyyaml(stream)
    encoder = hparams["encoder"]
    if expected_arch is not None:
        check_architecture(expected_arch, describe(encoder), str(hparams_file))
    encoder.load_state_dict(load_weights(folder / WEIGHTS_FILE))  # read once; errors name it
    return encoder


def load_pretrained(
    path: str | os.PathLike, expected_arch: Mapping[str, Any] | None = None
) -> W2V2Encoder | HFWav2Vec2Encoder:
    """Build the encoder stored at ``path`` and load its weights.

    Arguments
    ---------
    path : path-like
        One of:

        - an export folder (:func:`export_encoder`), a pre-training ``CKPT+...`` folder, or the
          Checkpointer folder holding them (the newest checkpoint is used);
        - a Hugging Face wav2vec 2.0 checkpoint (see
          ``summarymixing.downstream.huggingface``): a local ``save_pretrained`` folder
          holding ``config.json`` (``model_type: wav2vec2``) and ``preprocessor_config.json``,
          a hub id ``owner/name`` that is no existing path (``facebook/wav2vec2-base``,
          ``facebook/wav2vec2-large-lv60``), or either of them after an explicit ``hf:``.
    expected_arch : mapping, optional
        Architecture keys the caller relies on, each of which must match: a key matches every
        stored argument of that name (``attention_type`` is the context encoder's,
        ``d_model`` both the encoder's and its context encoder's; a dotted key such as
        ``context.num_layers`` is exact). For a Hugging Face checkpoint, keys are
        ``config.json`` fields or ``d_model``, ``num_layers``, ``nhead``, ``d_ffn``;
        SummaryMixing keys (``attention_type``, ...) are refused.

    Returns
    -------
    W2V2Encoder or HFWav2Vec2Encoder
        In evaluation mode, on CPU; called as ``encoder(wavs, wav_lens)``, it returns its
        ``num_hidden_states`` hidden states ``(B, T, d_model)``.

    Raises
    ------
    FileNotFoundError
        When ``path`` (or a file it needs) does not exist, or is a folder that is none of the
        above; the message names it.
    ValueError
        When a key of ``expected_arch`` differs from the stored one (names the key, the expected
        and the found values) or does not apply, or a stored file is unreadable (names it).

    Example
    -------
    >>> import tempfile
    >>> load_pretrained(tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: no hyperparams.yaml in ... (an export), no architecture.ckpt ...
    """
    hf_source = huggingface_source(path)
    if hf_source is not None:
        return load_huggingface(hf_source, expected_arch)
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"no pre-trained encoder at {folder}")
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} is a file: expected an export folder ({HPARAMS_FILE} + {WEIGHTS_FILE}), "
            "a pre-training checkpoint folder or a Hugging Face wav2vec 2.0 folder"
        )
    if (folder / HPARAMS_FILE).is_file():
        encoder = load_export(folder, expected_arch)
        source = str(folder)
    else:
        architecture, state_dict, source = read_checkpoint(folder)
        if expected_arch is not None:
            check_architecture(expected_arch, architecture, source)
        encoder = build(architecture)
        encoder.load_state_dict(state_dict)
    logger.info("Loaded the pre-trained encoder from %s", source)
    return encoder.eval()


def main(argv: list[str] | None = None) -> Path:
    """Command line: export the encoder of a pre-training checkpoint to a folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="CKPT+... folder, or the Checkpointer's save folder")
    parser.add_argument("out", help="output folder")
    args = parser.parse_args(argv)
    architecture, state_dict, source = read_checkpoint(Path(args.checkpoint))
    encoder = build(architecture)
    encoder.load_state_dict(state_dict)
    logger.info("Exporting the encoder of %s", source)
    return export_encoder(encoder, args.out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
