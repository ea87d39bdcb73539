"""The memory fields of this process's ``/proc/self/status`` (Linux), read by the step logs
(peak resident set size) and by the benchmarks (resident set before and peak during a step)."""

from __future__ import annotations


def process_status_kib(field: str) -> int:
    """The value, in KiB, of a ``Vm*`` line of ``/proc/self/status`` (e.g. ``VmRSS``, ``VmHWM``).

    Raises ``OSError`` where the file cannot be read (not Linux) and ``LookupError`` where it has
    no such line.

    Example
    -------
    >>> process_status_kib("VmRSS") > 0
    True
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(f"/proc/self/status has no {field} line")
