"""Crash-safe checkpoints and one run per output folder.

:class:`SafeCheckpointer` is SpeechBrain's ``Checkpointer`` (same YAML arguments, same
``CKPT+...`` folders) made safe against a kill or a full disk at any instant of a save:

- a checkpoint is written into a hidden staging folder (``.staging-CKPT+...``), its files flushed
  to disk, and renamed to its ``CKPT+...`` name only when complete, so a checkpoint folder is
  either complete or absent (SpeechBrain writes ``CKPT.yaml`` first and the files in place);
- staging folders left by a killed save are removed when the next run recovers, naming them;
- recovery checks the checkpoints newest (most important) first and, when one is damaged (an
  empty or truncated file: every ``torch.save`` zip archive's checksums are verified; a missing
  recoverable; an unreadable ``CKPT.yaml``), warns naming it and falls back to the previous one.
  Loading itself is SpeechBrain's: any other error (an architecture mismatch) is raised as is.

:class:`RunLock` refuses a second run in an output folder while a first one is alive (an
``flock`` released by the operating system when the process ends, ``kill -9`` included).

In a YAML::

    checkpointer: !new:summarymixing.checkpoints.SafeCheckpointer
        checkpoints_dir: !ref <save_folder>
        recoverables: {...}
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import yaml
from speechbrain.utils.checkpoints import (
    CKPT_PREFIX,
    METAFNAME,
    Checkpoint,
    Checkpointer,
)
from speechbrain.utils.distributed import ddp_barrier, if_main_process

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format


def _fsync_folder(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as stream:
                os.fsync(stream.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class SafeCheckpointer(Checkpointer):
    """SpeechBrain's ``Checkpointer`` whose checkpoints are complete or absent (see the module
    docstring). Arguments are ``Checkpointer``'s.

    Example
    -------
    >>> import tempfile, torch
    >>> folder = Path(tempfile.mkdtemp())
    >>> model = torch.nn.Linear(2, 2)
    >>> checkpointer = SafeCheckpointer(folder, recoverables={"model": model})
    >>> saved = checkpointer.save_checkpoint()
    >>> sorted(p.name for p in saved.path.iterdir())
    ['CKPT.yaml', 'model.ckpt']
    >>> _ = (saved.path / "model.ckpt").write_bytes(b"")  # damaged after the fact
    >>> SafeCheckpointer(folder, recoverables={"model": model}).recover_if_possible() is None
    True
    """

    def _new_checkpoint_dirpath(self) -> Path:
        final = super()._new_checkpoint_dirpath()
        return final.with_name(STAGING_PREFIX + final.name)

    def _custom_checkpoint_dirpath(self, name: str) -> Path:
        final = super()._custom_checkpoint_dirpath(name)
        return final.with_name(STAGING_PREFIX + final.name)

    def save_checkpoint(
        self, meta: dict | None = None, end_of_epoch: bool = True, name: str | None = None,
        verbosity: int = logging.INFO,
    ) -> Checkpoint | None:
        """SpeechBrain's save into a staging folder, renamed to ``CKPT+...`` once complete."""
        staged = super().save_checkpoint(
            meta or {}, end_of_epoch=end_of_epoch, name=name, verbosity=logging.DEBUG
        )
        final = None
        if if_main_process():
            final = staged.path.with_name(staged.path.name[len(STAGING_PREFIX):])
            _fsync_folder(staged.path)
            if final.exists():  # a custom name saved again: replace the old one
                shutil.rmtree(final)
            staged.path.rename(final)
            logger.log(verbosity, "Saved a checkpoint in %s", final)
        ddp_barrier()
        if final is None:
            return None
        paramfiles = {key: final / path.name for key, path in staged.paramfiles.items()}
        return Checkpoint(final, staged.meta, paramfiles)

    def _readable(self, folder: Path) -> Checkpoint | None:
        try:
            with open(folder / METAFNAME, encoding="utf-8") as stream:
                meta = yaml.safe_load(stream)
            if not isinstance(meta, dict):
                raise ValueError(f"expected a mapping in {folder / METAFNAME}")
        except (OSError, yaml.YAMLError, ValueError, UnicodeDecodeError) as err:
            logger.warning("skipping checkpoint %s: unreadable %s (%s)", folder, METAFNAME, err)
            return None
        paramfiles = {path.stem: path for path in folder.glob("*.ckpt")}
        missing = [name for name in self.recoverables if name not in paramfiles
                   and not self.optional_recoverables.get(name, False)]
        empty = [path.name for path in paramfiles.values() if path.stat().st_size == 0]
        if missing or empty:
            logger.warning("skipping incomplete checkpoint %s (missing: %s, empty: %s)",
                           folder, missing or "none", empty or "none")
            return None
        return Checkpoint(folder, meta, paramfiles)

    def list_checkpoints(self) -> list[Checkpoint]:
        """The complete, readable checkpoints (others are named in a warning and skipped)."""
        folders = [
            path for path in self.checkpoints_dir.iterdir()
            if path.is_dir() and path.name.startswith(CKPT_PREFIX)
        ]
        return [ckpt for ckpt in map(self._readable, folders) if ckpt is not None]

    def recover_if_possible(
        self, importance_key: Any = None, max_key: Any = None, min_key: Any = None,
        ckpt_predicate: Any = None,
    ) -> Checkpoint | None:
        """Remove staging folders left by an interrupted save (naming them), then load the best
        checkpoint that is not damaged, falling back (with a warning naming the damaged one) to
        the next best."""
        if if_main_process():
            for stale in self.checkpoints_dir.glob(f"{STAGING_PREFIX}*"):
                logger.warning("removing %s, left by an interrupted checkpoint save", stale)
                shutil.rmtree(stale, ignore_errors=True)
        candidates = self.find_checkpoints(
            importance_key, max_key, min_key, ckpt_predicate, max_num_checkpoints=None
        )
        for checkpoint in candidates:
            damage = damaged_file(checkpoint)
            if damage is not None:
                logger.warning("skipping damaged checkpoint %s (%s); trying the previous one",
                               checkpoint.path, damage)
                continue
            self.load_checkpoint(checkpoint)
            return checkpoint
        if candidates:
            logger.warning("no checkpoint of %s could be loaded: starting from scratch",
                           self.checkpoints_dir)
        else:
            logger.info("Would load a checkpoint here, but none found yet.")
        return None


def damaged_file(checkpoint: Checkpoint) -> str | None:
    """Why a checkpoint's files cannot be loaded (empty, or a zip archive whose structure or
    checksums are broken), or ``None``."""
    for path in checkpoint.paramfiles.values():
        try:
            with open(path, "rb") as stream:
                head = stream.read(len(ZIP_MAGIC))
            if not head:
                return f"{path.name} is empty"
            if head == ZIP_MAGIC:
                with zipfile.ZipFile(path) as archive:
                    broken = archive.testzip()
                if broken is not None:
                    return f"{path.name}: bad checksum in {broken}"
        except (OSError, zipfile.BadZipFile, EOFError) as err:
            return f"{path.name}: {err}"
    return None


class RunLock:
    """An exclusive lock on ``<folder>/.run.lock`` held until the process ends (or
    :meth:`release`); a second run in the same folder is refused, naming the first one's PID.

    Arguments
    ---------
    folder : str or os.PathLike
        The run's output folder (created if needed).

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> lock = RunLock(folder)
    >>> RunLock(folder)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    RuntimeError: another run (PID ...) is using .../.run.lock: wait for it to finish or ...
    >>> lock.release()
    """

    def __init__(self, folder: str | os.PathLike):
        path = Path(folder) / ".run.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._stream = open(path, "a+", encoding="utf-8")  # held open: the lock lives with it
        try:
            fcntl.flock(self._stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._stream.seek(0)
            holder = self._stream.read().strip() or "unknown"
            self._stream.close()
            raise RuntimeError(
                f"another run (PID {holder}) is using {path}: wait for it to finish or choose "
                "another output_folder"
            ) from None
        self._stream.seek(0)
        self._stream.truncate()
        self._stream.write(str(os.getpid()))
        self._stream.flush()

    def release(self) -> None:
        """Release the lock."""
        fcntl.flock(self._stream, fcntl.LOCK_UN)
        self._stream.close()
