"""Precomputed frozen features: run a frozen encoder once, train heads from disk.

Each utterance's stacked hidden states ``(T, L + 1, D)`` are saved to
``<folder>/<encoder fingerprint>/<sha1 of ID>.pt``; the fingerprint hashes the encoder's
weights, so a different encoder never reads another's features. Waveform augmentation (speed
perturbation) cannot be combined with a cache; feature masks still can.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.dataloader import make_dataloader
from speechbrain.dataio.dataset import DynamicItemDataset
from torch import nn

logger = logging.getLogger(__name__)


def fingerprint(module: nn.Module) -> str:
    """SHA-1 of a module's parameters and buffers (names, shapes, values).

    Arguments
    ---------
    module : nn.Module
        The module (the frozen encoder).

    Returns
    -------
    str
        The hexadecimal digest.

    Example
    -------
    >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    >>> fingerprint(a) == fingerprint(a), fingerprint(a) == fingerprint(b)
    (True, False)
    """
    digest = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Disk cache of the stacked hidden states of a frozen encoder.

    Arguments
    ---------
    folder : str or Path
        Cache root; one sub-folder per encoder fingerprint.
    dtype : torch.dtype
        Storage type (``float16`` halves the disk use; features come back as ``float32``).
    batch_size : int
        Utterances encoded together while filling the cache (each is trimmed to its length).

    Example
    -------
    >>> import tempfile
    >>> from summarymixing.downstream.layers import HiddenStates
    >>> class Toy(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.proj = nn.Linear(4, 3)
    ...     def forward(self, wavs, wav_lens):
    ...         x = self.proj(wavs.unflatten(1, (-1, 4)))
    ...         return [x, 2 * x]
    >>> data = DynamicItemDataset({"a": {"sig": torch.randn(8)}, "b": {"sig": torch.randn(16)}})
    >>> cache = FeatureCache(tempfile.mkdtemp(), dtype=torch.float32)
    >>> cache.fill([data], HiddenStates(Toy()), torch.device("cpu"))
    2
    >>> cache.add_pipeline([data])
    >>> data.set_output_keys(["id", "hidden"])
    >>> [tuple(item["hidden"].shape) for item in data]
    [(2, 2, 3), (4, 2, 3)]
    """

    def __init__(
        self, folder: str | Path, dtype: torch.dtype = torch.float16, batch_size: int = 8
    ):
        self.root = Path(folder)
        self.dtype = dtype
        self.batch_size = batch_size
        self.folder: Path | None = None

    def path(self, utt_id: str) -> Path:
        """Cache file of one utterance (IDs may hold ``/``, hence the hash).

        Arguments
        ---------
        utt_id : str
            The utterance's ID.

        Returns
        -------
        Path
            ``<folder>/<sha1 of utt_id>.pt``.
        """
        if self.folder is None:
            raise RuntimeError("FeatureCache.fill must run before features are read")
        return self.folder / f"{hashlib.sha1(utt_id.encode()).hexdigest()}.pt"

    def bind(self, extractor: nn.Module) -> Path:
        """Select the cache sub-folder of ``extractor``'s weights (every process calls this;
        only the main one fills the cache).

        Arguments
        ---------
        extractor : nn.Module
            The frozen ``HiddenStates`` whose features are cached.

        Returns
        -------
        Path
            The sub-folder, named by the first 16 digits of :func:`fingerprint`.
        """
        self.folder = self.root / fingerprint(extractor)[:16]
        return self.folder

    @torch.no_grad()
    def fill(
        self, datasets: Sequence[DynamicItemDataset], extractor: nn.Module, device: torch.device
    ) -> int:
        """Encode and save every utterance (dynamic item ``sig``) not yet cached.

        ``extractor`` maps ``(wavs, wav_lens)`` to ``(B, T, L + 1, D)`` (a frozen
        ``HiddenStates``). Returns the number of utterances encoded.

        Arguments
        ---------
        datasets : Sequence[DynamicItemDataset]
            Datasets providing ``id`` and ``sig``.
        extractor : nn.Module
            The frozen ``HiddenStates``.
        device : torch.device
            Where to run ``extractor``.

        Returns
        -------
        int
            The number of utterances encoded.
        """
        self.bind(extractor)
        self.folder.mkdir(parents=True, exist_ok=True)
        was_training = extractor.training
        extractor.eval()
        encoded = 0
        for dataset in datasets:
            missing = [i for i in dataset.data_ids if not self.path(i).is_file()]
            if not missing:
                continue
            subset = dataset.filtered_sorted(key_test={"id": lambda i, m=set(missing): i in m})
            with subset.output_keys_as(["id", "sig"]):
                loader = make_dataloader(subset, batch_size=self.batch_size)
                for batch in loader:
                    wavs, lens = batch.sig
                    hidden = extractor(wavs.to(device), lens.to(device))  # (B, T, L + 1, D)
                    frame_lens = extractor.frame_lengths(lens, wavs.shape[1], hidden.shape[1])
                    frames = torch.round(frame_lens * hidden.shape[1]).long().clamp(min=1)
                    for utt_id, states, count in zip(batch.id, hidden, frames, strict=True):
                        torch.save(states[:count].to("cpu", self.dtype).clone(), self.path(utt_id))
                    encoded += len(batch.id)
        extractor.train(was_training)
        logger.info("Feature cache %s: encoded %d utterances", self.folder, encoded)
        return encoded

    def add_pipeline(self, datasets: Sequence[DynamicItemDataset]) -> None:
        """Add the dynamic item ``hidden``: the cached ``(T, L + 1, D)`` float32 features.

        Arguments
        ---------
        datasets : Sequence[DynamicItemDataset]
            Datasets whose features :meth:`fill` cached.
        """

        @sb.utils.data_pipeline.takes("id")
        @sb.utils.data_pipeline.provides("hidden")
        def cache_pipeline(utt_id: str) -> torch.Tensor:
            return torch.load(self.path(utt_id), weights_only=True).float()

        sb.dataio.dataset.add_dynamic_item(list(datasets), cache_pipeline)
