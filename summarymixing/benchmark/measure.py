"""Timing, memory measurement and reporting (table, CSV, PNG) shared by the benchmarks.

Time: the steps are interleaved round-robin in one process, after warm-up; each reports the
median, the minimum and the spread (``max - min``) of its timed steps.

Deterministic memory (:func:`saved_tensor_bytes`, :func:`training_state_bytes`): the bytes of the
tensors autograd saves for backward (unique storages, seen through saved-tensor hooks) plus the
parameters, their gradients and the optimizer state. It does not depend on the allocator.

Peak memory is the growth of memory during one step above what was held before it:
``torch.cuda.max_memory_allocated`` on CUDA; on CPU, the process's peak resident set size
(Linux ``VmHWM``, reset through ``/proc/self/clear_refs``), with glibc's ``mmap`` threshold pinned
so that freed tensors go back to the system instead of staying in the heap.
"""

from __future__ import annotations

import csv
import ctypes
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TextIO

import torch

from data_prep.files import atomic_write
from summarymixing.memory import process_status_kib

logger = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 64 * 1024


def pin_cpu_allocator() -> None:
    """Make glibc serve every allocation above 64 KiB with ``mmap`` (returned on free), so the
    resident set size follows the live tensors. A no-op where glibc is not the allocator."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        logger.warning("could not pin glibc's mmap threshold: CPU peak memory is approximate")


def peak_memory_of(step: Callable[[], None], device: torch.device) -> float:
    """Bytes by which one call of ``step`` raised the peak memory above its starting level
    (NaN where the platform does not tell).

    Example
    -------
    >>> pin_cpu_allocator()  # fresh pages for each large tensor
    >>> peak = peak_memory_of(lambda: torch.ones(1 << 24).sum(), torch.device("cpu"))
    >>> peak > 32 * 2**20 or math.isnan(peak)
    True
    """
    if device.type == "cuda":
        wait_for(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        step()
        wait_for(device)
        return float(torch.cuda.max_memory_allocated(device) - start)
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current resident set size
        start_kib = process_status_kib("VmRSS")
    except OSError:
        return math.nan
    step()
    return float(process_status_kib("VmHWM") - start_kib) * 1024


def wait_for(device: torch.device) -> None:
    """Block until the work queued on ``device`` has run (CUDA; the CPU runs it in line).

    Example
    -------
    >>> wait_for(torch.device("cpu"))
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_of(step: Callable[[], None], device: torch.device) -> float:
    """Wall-clock seconds of one call of ``step`` (synchronised on CUDA).

    Example
    -------
    >>> seconds_of(lambda: None, torch.device("cpu")) >= 0
    True
    """
    wait_for(device)
    start = time.perf_counter()
    step()
    wait_for(device)
    return time.perf_counter() - start


def saved_tensor_bytes(
    step: Callable[[], None], exclude: Iterable[torch.Tensor] = ()
) -> int:
    """Bytes of the tensors autograd saves for backward during one call of ``step``: the sum of
    ``nbytes`` over the unique storages packed by the saved-tensor hooks, leaving out the
    storages of ``exclude`` (e.g. the parameters, counted apart).

    Arguments
    ---------
    step : Callable
        Runs a forward (and usually backward) pass.
    exclude : Iterable[torch.Tensor]
        Tensors whose storages are not counted.

    Returns
    -------
    int
        Bytes.

    Example
    -------
    >>> layer = torch.nn.Linear(4, 3)
    >>> x = torch.ones(2, 4)
    >>> saved_tensor_bytes(lambda: torch.tanh(layer(x)).sum().backward(), layer.parameters())
    56
    """
    excluded = {tensor.untyped_storage().data_ptr() for tensor in exclude}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return sum(storages.values())


def training_state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the trainable parameters, one gradient per trainable parameter, and every tensor
    in the optimizer's state (AdamW: ``exp_avg``, ``exp_avg_sq``, ``step``).

    Example
    -------
    >>> layer = torch.nn.Linear(4, 3)  # 15 float32 parameters
    >>> optimizer = torch.optim.AdamW(layer.parameters())
    >>> layer(torch.ones(1, 4)).sum().backward(); optimizer.step()
    >>> training_state_bytes(layer, optimizer)  # 4 x 15 x 4 bytes + 2 step counters
    248
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    weights = sum(p.nbytes for p in parameters)
    state = sum(
        value.nbytes for per_parameter in optimizer.state.values()
        for value in per_parameter.values() if isinstance(value, torch.Tensor)
    )
    return 2 * weights + state


def measure_side_by_side(
    steps: dict[str, Callable[[], None]], device: torch.device, repeats: int, warmup: int = 1
) -> dict[str, dict[str, float]]:
    """Time and peak memory of each step, the steps interleaved round-robin (after ``warmup``
    calls each) so that machine noise hits them alike.

    Returns ``{name: {"seconds": median, "min_seconds", "max_seconds", "spread_seconds":
    max - min, "peak_bytes": peak}}``.

    Example
    -------
    >>> result = measure_side_by_side({"a": lambda: None}, torch.device("cpu"), repeats=2)
    >>> sorted(result["a"])
    ['max_seconds', 'min_seconds', 'peak_bytes', 'seconds', 'spread_seconds']
    """
    if repeats < 1:
        raise ValueError(f"expected at least one timed step, got repeats={repeats}")
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(seconds_of(step, device))
    return {
        name: {
            "seconds": statistics.median(times[name]),
            "min_seconds": min(times[name]),
            "max_seconds": max(times[name]),
            "spread_seconds": max(times[name]) - min(times[name]),
            "peak_bytes": peak_memory_of(step, device),
        }
        for name, step in steps.items()
    }


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A plain-text table (Markdown pipe syntax) of ``rows`` restricted to ``columns``.

    Example
    -------
    >>> print(format_table([{"a": 1, "b": 0.5}], ["a", "b"]))
    | a | b |
    |---|---|
    | 1 | 0.5 |
    """

    def cell(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[column]) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(rows: Sequence[dict], path: Path) -> None:
    """Write ``rows`` (same keys each) to ``path`` atomically (temporary file, then rename).

    Example
    -------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "rows.csv"
    >>> write_csv([{"frames": 250, "seconds": 0.1}], out)
    >>> out.read_text().splitlines()[0]
    'frames,seconds'
    """

    def write(stream: TextIO) -> None:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    atomic_write(path, write)


def plot_time_and_memory(
    rows: Sequence[dict], x_key: str, x_label: str, title: str, path: Path,
    memory_keys: Sequence[str] = ("peak_mib",),
) -> None:
    """Two log-log panels, seconds and memory (MiB, each of ``memory_keys``: solid, dashed, ...)
    against ``x_key``, one colour per ``model``.

    Example
    -------
    >>> rows = [{"model": "m", "frames": t, "seconds": t / 1e3, "peak_mib": t / 10}
    ...         for t in (250, 500)]
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "plot.png"
    >>> plot_time_and_memory(rows, "frames", "frames", "demo", out)
    >>> out.stat().st_size > 0
    True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for model in dict.fromkeys(row["model"] for row in rows):
        mine = [row for row in rows if row["model"] == model]
        xs = [row[x_key] for row in mine]
        (line,) = time_axis.plot(xs, [row["seconds"] for row in mine], marker="o", label=model)
        for key, style in zip(memory_keys, ("-", "--", ":", "-."), strict=False):
            label = model if len(memory_keys) == 1 else f"{model} {key}"
            memory_axis.plot(xs, [row[key] for row in mine], marker="o", linestyle=style,
                             color=line.get_color(), label=label)
    for axis, label in ((time_axis, "seconds per step"), (memory_axis, "memory (MiB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel(x_label)
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
