"""Hugging Face wav2vec 2.0 checkpoints as downstream encoders (the paper's w2v2 rows): which
``pretrained_path`` names one, what a local folder must hold, and ``expected_arch`` checks.

``summarymixing.export.load_pretrained`` calls :func:`huggingface_source` on every
``pretrained_path``; for a hub id (``facebook/wav2vec2-base``), an ``hf:`` source or a local
``save_pretrained`` folder it builds ``summarymixing.downstream.hf_encoder.HFWav2Vec2Encoder``
with :func:`load_huggingface`, so every downstream YAML takes a Hugging Face checkpoint through
``--pretrained_path`` unchanged. The encoder lives in its own module because importing
``transformers`` takes seconds, which our own encoder files should not pay.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from summarymixing.downstream.hf_encoder import HFWav2Vec2Encoder


logger = logging.getLogger(__name__)

HF_PREFIX = "hf:"
CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
MODEL_TYPE = "wav2vec2"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Architecture keys of our encoders (summarymixing.architecture) with a Hugging Face counterpart
ARCH_TO_CONFIG = {
    "d_model": "hidden_size",
    "num_layers": "num_hidden_layers",
    "nhead": "num_attention_heads",
    "d_ffn": "intermediate_size",
}


def huggingface_source(path: str | os.PathLike) -> str | None:
    """The Hugging Face source named by ``path``, or ``None`` for our own encoder files.

    ``hf:<hub id or folder>`` is always Hugging Face; otherwise an existing folder holding a
    ``config.json``, or a string shaped like a hub id (``owner/name``) that is no existing path.

    Arguments
    ---------
    path : path-like
        The ``pretrained_path`` of a downstream YAML.

    Returns
    -------
    str or None
        The hub id or folder to load with :class:`HFWav2Vec2Encoder`.

    Example
    -------
    >>> huggingface_source("facebook/wav2vec2-base"), huggingface_source("hf:/models/large")
    ('facebook/wav2vec2-base', '/models/large')
    >>> huggingface_source("/models/summarymixing.pt") is None
    True
    """
    text = os.fspath(path)
    if text.startswith(HF_PREFIX):
        return text[len(HF_PREFIX):]
    local = Path(text)
    if local.is_dir():
        return text if (local / CONFIG_FILE).is_file() else None
    if not local.exists() and HUB_ID.match(text):
        return text
    return None


def check_local_folder(folder: Path) -> None:
    """Refuse a local folder that is not a Hugging Face wav2vec 2.0 checkpoint.

    Arguments
    ---------
    folder : Path
        A local folder given as the pre-trained encoder.

    Raises
    ------
    FileNotFoundError
        When ``config.json`` or ``preprocessor_config.json`` is missing (names the file).
    ValueError
        When ``config.json`` is not a wav2vec 2.0 model's (names ``model_type``).
    """
    config_file = folder / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(
            f"no {CONFIG_FILE} in {folder}: expected a Hugging Face wav2vec 2.0 folder written "
            "by save_pretrained"
        )
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    if model_type != MODEL_TYPE:
        raise ValueError(f"expected model_type {MODEL_TYPE!r} in {config_file}, got {model_type!r}")
    if not (folder / PREPROCESSOR_FILE).is_file():
        raise FileNotFoundError(
            f"no {PREPROCESSOR_FILE} in {folder}: the feature extractor config says whether the "
            "waveform is normalised; save it beside the model with "
            "Wav2Vec2FeatureExtractor.from_pretrained(<hub id>).save_pretrained(folder)"
        )


def check_hf_arch(expected: Mapping[str, Any], config: Any, source: str) -> None:
    """Check ``expected_arch`` against a Hugging Face config.

    Keys are ``config.json`` fields (``hidden_size``, ``feat_extract_norm``, ...) or our
    architecture keys that have a counterpart (``d_model``, ``num_layers``, ``nhead``,
    ``d_ffn``); any other key of ours (``attention_type``, ``mode``, ...) describes a
    SummaryMixing encoder and is refused.

    Arguments
    ---------
    expected : Mapping[str, Any]
        The ``expected_arch`` keys and values.
    config : transformers.Wav2Vec2Config
        The checkpoint's config.
    source : str
        The checkpoint's folder or hub id, for the error message.

    Raises
    ------
    ValueError
        Naming the key, the expected and the found values, or the key that does not apply.

    Example
    -------
    >>> from transformers import Wav2Vec2Config
    >>> check_hf_arch({"d_model": 768, "num_hidden_layers": 12}, Wav2Vec2Config(), "base")
    >>> check_hf_arch({"attention_type": "SummaryMixing"}, Wav2Vec2Config(), "base")
    Traceback (most recent call last):
    ...
    ValueError: expected_arch key 'attention_type' does not apply to the Hugging Face ...
    >>> check_hf_arch({"num_layers": 24}, Wav2Vec2Config(), "base")
    Traceback (most recent call last):
    ...
    ValueError: architecture mismatch in base for key 'num_layers': expected 24, found 12
    """
    fields = config.to_dict()
    for key, value in expected.items():
        name = ARCH_TO_CONFIG.get(key, key)
        if name not in fields:
            raise ValueError(
                f"expected_arch key {key!r} does not apply to the Hugging Face wav2vec 2.0 "
                f"checkpoint {source} (its attention is multi-head self-attention); use "
                f"config.json fields or one of {list(ARCH_TO_CONFIG)}"
            )
        found = fields[name]
        if isinstance(found, (list, tuple)):
            found, value = list(found), list(value)
        if found != value:
            raise ValueError(
                f"architecture mismatch in {source} for key {key!r}: expected {value!r}, "
                f"found {found!r}"
            )


def load_huggingface(
    source: str, expected_arch: Mapping[str, Any] | None = None
) -> HFWav2Vec2Encoder:
    """Build ``HFWav2Vec2Encoder`` for ``source`` and check ``expected_arch`` against its
    config (:func:`check_hf_arch`). Returned in eval mode, on CPU.

    Arguments
    ---------
    source : str
        A local Hugging Face folder or a hub id.
    expected_arch : Mapping[str, Any], optional
        Architecture keys to check (:func:`check_hf_arch`).

    Returns
    -------
    HFWav2Vec2Encoder
        The encoder, in eval mode.

    Raises
    ------
    FileNotFoundError
        For a local folder without ``config.json`` / ``preprocessor_config.json``.
    FileNotFoundError
        Also when a hub id cannot be loaded (not cached and no network, or no such model); the
        message names it.
    """
    from summarymixing.downstream.hf_encoder import HFWav2Vec2Encoder

    try:
        encoder = HFWav2Vec2Encoder(source)
    except OSError as error:
        if Path(source).exists():
            raise
        raise FileNotFoundError(
            f"no pre-trained encoder at {source!r}: it is no local file or folder, and loading "
            f"it as a Hugging Face hub id failed: {error}"
        ) from error
    if expected_arch:
        check_hf_arch(expected_arch, encoder.model.config, source)
    logger.info("Loaded the Hugging Face wav2vec 2.0 encoder %s", source)
    return encoder.eval()
