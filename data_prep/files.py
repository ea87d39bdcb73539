"""Atomic file writes: a file is either absent, its previous version, or complete.

Every writer of manifests, metrics, benchmark tables and stage markers goes through
``atomic_write``: the content goes to ``<name>.partial`` beside the target, is flushed to disk, and
only then replaces the target.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

PARTIAL_SUFFIX = ".partial"


def atomic_write(path: str | os.PathLike, write: Callable[[TextIO], object]) -> None:
    """Call ``write(handle)`` on a temporary sibling of ``path`` (UTF-8 text, no newline
    translation), then put it in place of ``path``; on error the temporary file is removed.

    Arguments
    ---------
    path : str or PathLike
        The file to write (its folder is created if needed).
    write : Callable[[TextIO], object]
        Writes the whole content to the handle it is given.

    Example
    -------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "a.txt"
    >>> atomic_write(out, lambda handle: handle.write("complete"))
    >>> out.read_text(), out.with_name("a.txt.partial").exists()
    ('complete', False)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        with open(partial, "w", newline="", encoding="utf-8") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically.

    Arguments
    ---------
    path : str or PathLike
        The file to write.
    text : str
        Its whole content (UTF-8).

    Example
    -------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "b.txt"
    >>> atomic_write_text(out, "hello")
    >>> out.read_text()
    'hello'
    """
    atomic_write(path, lambda handle: handle.write(text))
