"""Data pipelines shared by the downstream recipes: manifests, audio, labels, loaders.

Manifests are the CSV files of ``data_prep/`` (first column ``ID``, ``duration`` in seconds,
``wav`` an absolute path; VoxCeleb adds ``start``/``stop`` sample offsets).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.dataio.sampler import DynamicBatchSampler

from data_prep.audio import read_audio

logger = logging.getLogger(__name__)


def load_manifest(
    csv_path: str | Path, sorting: str = "original", max_duration: float | None = None
) -> DynamicItemDataset:
    """Read a manifest into a dataset, refusing an empty one.

    Arguments
    ---------
    csv_path : str or Path
        SpeechBrain-style CSV manifest.
    sorting : str
        ``original`` (keep the file's order; shuffle in the loader), ``ascending`` or
        ``descending`` by ``duration``.
    max_duration : float, optional
        Drop utterances longer than this (seconds).

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "empty.csv"
    >>> _ = path.write_text("ID,duration,wav\\n")
    >>> load_manifest(path)
    Traceback (most recent call last):
    ...
    ValueError: .../empty.csv: expected a manifest with at least one utterance, got none
    """
    if sorting not in ("original", "ascending", "descending"):
        raise ValueError(f"expected sorting in original/ascending/descending, got {sorting!r}")
    if not Path(csv_path).is_file():
        raise FileNotFoundError(f"{csv_path}: manifest not found (run the data preparation)")
    data = sb.dataio.dataio.load_data_csv(str(csv_path))
    if not data:
        raise ValueError(f"{csv_path}: expected a manifest with at least one utterance, got none")
    dataset = DynamicItemDataset(data)
    if sorting != "original" or max_duration is not None:
        dataset = dataset.filtered_sorted(
            sort_key="duration" if sorting != "original" else None,
            reverse=sorting == "descending",
            key_max_value={"duration": max_duration} if max_duration is not None else {},
        )
    if len(dataset) == 0:
        raise ValueError(f"{csv_path}: no utterance left after max_duration={max_duration}")
    return dataset


def add_audio_pipeline(
    datasets: Sequence[DynamicItemDataset], sample_rate: int = 16000, offsets: bool = False
) -> None:
    """Add the dynamic item ``sig`` (1-D waveform) to every dataset.

    With ``offsets``, only the ``[start, stop)`` sample slice of each file is read (a manifest
    of segments of longer files, such as VoxCeleb's enrolment and test spans).

    Arguments
    ---------
    datasets : Sequence[DynamicItemDataset]
        Datasets with a ``wav`` column (and ``start``, ``stop`` with ``offsets``).
    sample_rate : int
        The rate the audio is resampled to when it differs.
    offsets : bool
        Read only the ``[start, stop)`` slice.
    """
    if offsets:

        @sb.utils.data_pipeline.takes("wav", "start", "stop")
        @sb.utils.data_pipeline.provides("sig")
        def audio_pipeline(wav: str, start: str, stop: str) -> torch.Tensor:
            return read_audio(wav, int(start), int(stop), sample_rate=sample_rate)

    else:

        @sb.utils.data_pipeline.takes("wav")
        @sb.utils.data_pipeline.provides("sig")
        def audio_pipeline(wav: str) -> torch.Tensor:
            return read_audio(wav, sample_rate=sample_rate)

    sb.dataio.dataset.add_dynamic_item(list(datasets), audio_pipeline)


def add_label_pipeline(
    key: str,
    train: DynamicItemDataset,
    others: dict[str, DynamicItemDataset],
    save_path: str | Path,
) -> CategoricalEncoder:
    """Fit a label encoder for column ``key`` on the training set; add ``<key>_encoded``.

    Every label of ``others`` (name -> dataset) must have been seen in training: an unseen one
    is a ``ValueError`` naming the split, the utterance and the label.

    Arguments
    ---------
    key : str
        The label column.
    train : DynamicItemDataset
        The training set, on which the encoder is fitted.
    others : dict[str, DynamicItemDataset]
        The other splits, by name.
    save_path : str or Path
        Where the encoder is saved (and loaded from when it exists).

    Returns
    -------
    CategoricalEncoder
        The fitted encoder.

    Example
    -------
    >>> import tempfile
    >>> train = DynamicItemDataset({"a": {"emo": "neu"}, "b": {"emo": "sad"}})
    >>> test = DynamicItemDataset({"c": {"emo": "hap"}})
    >>> add_label_pipeline("emo", train, {"test": test}, Path(tempfile.mkdtemp()) / "emo.txt")
    Traceback (most recent call last):
    ...
    ValueError: test utterance 'c': emo label 'hap' not seen in training (known: neu, sad)
    """
    encoder = CategoricalEncoder()
    datasets = [train, *others.values()]

    @sb.utils.data_pipeline.takes(key)
    @sb.utils.data_pipeline.provides(f"{key}_encoded")
    def label_pipeline(label: str) -> torch.Tensor:
        return torch.LongTensor([encoder.encode_label(label)])

    sb.dataio.dataset.add_dynamic_item(datasets, label_pipeline)
    encoder.load_or_create(path=str(save_path), from_didatasets=[train], output_key=key)
    known = set(encoder.lab2ind)
    for name, dataset in others.items():
        with dataset.output_keys_as(["id", key]):
            for item in dataset:
                if item[key] not in known:
                    raise ValueError(
                        f"{name} utterance {item['id']!r}: {key} label {item[key]!r} not seen "
                        f"in training (known: {', '.join(sorted(known))})"
                    )
    return encoder


def add_label_pipelines(
    datasets: Mapping[str, DynamicItemDataset], keys: Sequence[str], save_folder: str | Path
) -> dict[str, CategoricalEncoder]:
    """:func:`add_label_pipeline` for each label column of ``keys``: the encoders are fitted on
    ``datasets["train"]`` and saved as ``<save_folder>/<key>_encoder.txt``; every other split's
    labels must have been seen in training.

    Arguments
    ---------
    datasets : Mapping[str, DynamicItemDataset]
        The splits, by name; one of them is ``train``.
    keys : Sequence[str]
        The label columns.
    save_folder : str or Path
        Where the encoders are saved.

    Returns
    -------
    dict[str, CategoricalEncoder]
        The encoder of each label column.

    Example
    -------
    >>> import tempfile
    >>> splits = {"train": DynamicItemDataset({"a": {"emo": "neu"}, "b": {"emo": "sad"}}),
    ...           "test": DynamicItemDataset({"c": {"emo": "sad"}})}
    >>> encoders = add_label_pipelines(splits, ["emo"], tempfile.mkdtemp())
    >>> with splits["test"].output_keys_as(["emo_encoded"]):
    ...     len(encoders["emo"]), splits["test"][0]["emo_encoded"].tolist()
    (2, [1])
    """
    others = {name: dataset for name, dataset in datasets.items() if name != "train"}
    return {
        key: add_label_pipeline(
            key, datasets["train"], others, Path(save_folder) / f"{key}_encoder.txt"
        )
        for key in keys
    }


def loader_options(
    dataset: DynamicItemDataset, options: dict, dynamic_batching: dict | None = None
) -> dict:
    """Data-loader keyword arguments, with a ``DynamicBatchSampler`` when ``dynamic_batching``
    (its keyword arguments, lengths read from ``duration``) is given.

    Arguments
    ---------
    dataset : DynamicItemDataset
        The dataset the loader reads (with a ``duration`` column for dynamic batching).
    options : dict
        The YAML's data-loader options.
    dynamic_batching : dict, optional
        ``DynamicBatchSampler`` keyword arguments; ``batch_size``, ``shuffle`` and ``drop_last``
        of ``options`` are then left out (the sampler decides them).

    Returns
    -------
    dict
        The data-loader keyword arguments.

    Example
    -------
    >>> data = DynamicItemDataset({str(i): {"duration": 1.0 + i} for i in range(6)})
    >>> opts = loader_options(data, {"batch_size": 2}, {"max_batch_length": 6.0, "num_buckets": 2})
    >>> sorted(opts)
    ['batch_sampler']
    """
    if not dynamic_batching:
        return dict(options)
    sampler = DynamicBatchSampler(
        dataset, length_func=lambda item: float(item["duration"]), **dynamic_batching
    )
    kept = {k: v for k, v in options.items() if k not in ("batch_size", "shuffle", "drop_last")}
    return {**kept, "batch_sampler": sampler}
