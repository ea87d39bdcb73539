"""Save and load the pre-trained wav2vec 2.0 encoder with its architecture.

An exported file holds the architecture hyperparameters (``summarymixing.w2v2.ARCH_DEFAULTS``
keys) and the weights of the ``W2V2Encoder`` (front end + context encoder), so a downstream
YAML needs one key::

    encoder: !apply:summarymixing.export.load_pretrained
        path: !ref <pretrained_path>
        expected_arch: {attention_type: SummaryMixing}

``load_pretrained`` also reads a pre-training checkpoint directory written by SpeechBrain's
``Checkpointer`` (a ``CKPT+...`` folder holding ``architecture.ckpt`` and ``model.ckpt``), or
the ``save`` folder above it (newest checkpoint), and a Hugging Face wav2vec 2.0 checkpoint (a
hub id such as ``facebook/wav2vec2-base``, a ``save_pretrained`` folder, or ``hf:<either>``;
see ``summarymixing.downstream.huggingface``). From the command line::

    python -m summarymixing.export CHECKPOINT_DIR OUT_PATH
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

from summarymixing.downstream.huggingface import huggingface_source, load_huggingface
from summarymixing.w2v2.encoder import W2V2Encoder, build_encoder, complete_arch

if TYPE_CHECKING:
    from summarymixing.downstream.hf_encoder import HFWav2Vec2Encoder

logger = logging.getLogger(__name__)

FORMAT = "summarymixing-w2v2-encoder"
ARCH_FILE = "architecture.ckpt"
MODEL_FILE = "model.ckpt"
ENCODER_PREFIX = "encoder."


def check_arch(expected: Mapping[str, Any], found: Mapping[str, Any], source: str) -> None:
    """Raise ``ValueError`` naming the first key of ``expected`` whose value differs in
    ``found`` (both completed with the defaults).

    Example
    -------
    >>> check_arch({"d_model": 768}, {"d_model": 512}, "model.pt")
    Traceback (most recent call last):
    ...
    ValueError: architecture mismatch in model.pt for key 'd_model': expected 768, found 512
    """
    expected_full, found_full = complete_arch(expected), complete_arch(found)
    for key in expected:
        if expected_full[key] != found_full[key]:
            raise ValueError(
                f"architecture mismatch in {source} for key {key!r}: "
                f"expected {expected_full[key]!r}, found {found_full[key]!r}"
            )


@register_checkpoint_hooks
class ArchitectureRecord:
    """Checkpointer recoverable that stores the architecture hyperparameters beside the weights
    (``architecture.ckpt``, JSON) and refuses to resume from a checkpoint of another one.

    Arguments
    ---------
    arch : mapping
        Architecture hyperparameters (keys of ``summarymixing.w2v2.ARCH_DEFAULTS``).

    Example
    -------
    >>> import tempfile
    >>> record = ArchitectureRecord({"d_model": 16})
    >>> path = Path(tempfile.mkdtemp()) / ARCH_FILE
    >>> record.save(path)
    >>> ArchitectureRecord({"d_model": 32}).load(path)
    Traceback (most recent call last):
    ...
    ValueError: architecture mismatch in ... for key 'd_model': expected 32, found 16
    """

    def __init__(self, arch: Mapping[str, Any]):
        self.arch = complete_arch(arch)

    @mark_as_saver
    def save(self, path: str | os.PathLike) -> None:
        """Write the architecture as JSON."""
        Path(path).write_text(json.dumps(self.arch, indent=2, sort_keys=True), encoding="utf-8")

    @mark_as_loader
    def load(self, path: str | os.PathLike, end_of_epoch: bool = False) -> None:
        """Check that the checkpoint's architecture is this one."""
        del end_of_epoch
        check_arch(self.arch, read_arch(path), str(path))


def read_arch(path: str | os.PathLike) -> dict[str, Any]:
    """Read an ``architecture.ckpt`` JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_pretrained(
    encoder: W2V2Encoder, arch_hparams: Mapping[str, Any], path: str | os.PathLike
) -> Path:
    """Write ``encoder``'s weights and its architecture to one file.

    Arguments
    ---------
    encoder : W2V2Encoder
        The encoder (unwrapped from DDP).
    arch_hparams : mapping
        The architecture it was built from (``build_encoder(arch_hparams)`` rebuilds it).
    path : path-like
        Output file; parent folders are created.

    Returns
    -------
    Path
        The written file.

    Example
    -------
    >>> import tempfile
    >>> arch = {"n_mels": 40, "cnn_channels": [32, 32], "d_model": 16, "num_layers": 1,
    ...         "nhead": 4, "d_ffn": 32, "conv_kernel_size": 3, "local_proj_hid_dim": [16],
    ...         "summary_hid_dim": [16]}
    >>> path = save_pretrained(build_encoder(arch), arch, Path(tempfile.mkdtemp()) / "enc.pt")
    >>> load_pretrained(path, expected_arch={"d_model": 16}).d_model
    16
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT,
        "arch": complete_arch(arch_hparams),
        "state_dict": {key: value.detach().cpu() for key, value in encoder.state_dict().items()},
    }
    torch.save(state, path)
    logger.info("Saved the pre-trained encoder to %s", path)
    return path


def _newest_checkpoint(folder: Path) -> Path | None:
    """The newest ``CKPT+*`` sub-folder of a Checkpointer's folder, by its meta time."""
    candidates = [p for p in folder.glob("CKPT+*") if (p / ARCH_FILE).is_file()]
    if not candidates:
        return None

    def unixtime(ckpt: Path) -> float:
        meta = yaml.safe_load((ckpt / "CKPT.yaml").read_text(encoding="utf-8")) or {}
        return float(meta.get("unixtime", 0.0))

    return max(candidates, key=unixtime)


def _read_state(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """Architecture and encoder weights from an export file or a checkpoint folder."""
    if not path.exists():
        raise FileNotFoundError(f"no pre-trained encoder at {path}")
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"expected a {FORMAT!r} file written by save_pretrained, got {path}")
        return state["arch"], state["state_dict"], str(path)
    ckpt = path if (path / ARCH_FILE).is_file() else _newest_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(
            f"no {ARCH_FILE} in {path} nor in any CKPT+* folder below it: expected a "
            "pre-training checkpoint directory"
        )
    model_file = ckpt / MODEL_FILE
    if not model_file.is_file():
        raise FileNotFoundError(f"missing {model_file} in the checkpoint {ckpt}")
    weights = torch.load(model_file, map_location="cpu", weights_only=True)
    encoder_state = {
        key[len(ENCODER_PREFIX):]: value
        for key, value in weights.items()
        if key.startswith(ENCODER_PREFIX)
    }
    if not encoder_state:
        raise ValueError(f"expected {ENCODER_PREFIX}* weights in {model_file}, found none")
    return read_arch(ckpt / ARCH_FILE), encoder_state, str(ckpt)


def load_pretrained(
    path: str | os.PathLike, expected_arch: Mapping[str, Any] | None = None
) -> W2V2Encoder | HFWav2Vec2Encoder:
    """Build the encoder stored at ``path`` and load its weights.

    Arguments
    ---------
    path : path-like
        One of:

        - a file written by ``save_pretrained``, a pre-training ``CKPT+...`` folder, or the
          Checkpointer folder holding them (the newest checkpoint is used);
        - a Hugging Face wav2vec 2.0 checkpoint (see
          ``summarymixing.downstream.huggingface``): a local ``save_pretrained`` folder
          holding ``config.json`` (``model_type: wav2vec2``) and ``preprocessor_config.json``,
          a hub id ``owner/name`` that is no existing path (``facebook/wav2vec2-base``,
          ``facebook/wav2vec2-large-lv60``), or either of them after an explicit ``hf:``.
    expected_arch : mapping, optional
        Architecture hyperparameters the caller relies on; each given key must match. For a
        Hugging Face checkpoint, keys are ``config.json`` fields or ``d_model``,
        ``num_layers``, ``nhead``, ``d_ffn``; SummaryMixing keys (``attention_type``, ...)
        are refused.

    Returns
    -------
    W2V2Encoder or HFWav2Vec2Encoder
        In evaluation mode, on CPU; called as ``encoder(wavs, wav_lens)``, it returns its
        ``num_hidden_states`` hidden states ``(B, T, d_model)``.

    Raises
    ------
    FileNotFoundError
        When ``path`` (or a file a checkpoint needs) does not exist, or is a folder that is
        neither a checkpoint folder nor a Hugging Face folder; the message names it.
    ValueError
        When a key of ``expected_arch`` differs from the stored one (names the key, the expected
        and the found values) or does not apply to the checkpoint.

    Example
    -------
    >>> import tempfile
    >>> load_pretrained(tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: no architecture.ckpt in ... expected a pre-training checkpoint ...
    """
    hf_source = huggingface_source(path)
    if hf_source is not None:
        return load_huggingface(hf_source, expected_arch)
    folder = Path(path)
    arch_file = folder / ARCH_FILE
    if folder.is_dir() and not arch_file.is_file() and _newest_checkpoint(folder) is None:
        raise FileNotFoundError(
            f"no {ARCH_FILE} in {folder} nor in any CKPT+* folder below it, and no config.json: "
            "expected a pre-training checkpoint directory or a Hugging Face wav2vec 2.0 folder"
        )
    arch, state_dict, source = _read_state(folder)
    if expected_arch is not None:
        check_arch(expected_arch, arch, source)
    encoder = build_encoder(arch)
    encoder.load_state_dict(state_dict)
    logger.info("Loaded the pre-trained encoder from %s", source)
    return encoder.eval()


def main(argv: list[str] | None = None) -> Path:
    """Command line: export the encoder of a pre-training checkpoint to one file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="CKPT+... folder, or the Checkpointer's save folder")
    parser.add_argument("out", help="output file")
    args = parser.parse_args(argv)
    arch, state_dict, source = _read_state(Path(args.checkpoint))
    encoder = build_encoder(arch)
    encoder.load_state_dict(state_dict)
    logger.info("Exporting the encoder of %s", source)
    return save_pretrained(encoder, arch, args.out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
