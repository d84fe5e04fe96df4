"""Peak resident memory of this process and every process it started (Ray workers included).

Sampled from ``/proc`` in a background thread, because a simulation's memory lives in child
processes that ``resource.getrusage`` only reports once they have exited. Linux only; elsewhere
the peak is reported as 0.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def _tree_rss_bytes(root: int) -> int:
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            pid = int(proc.name)
            children.setdefault(int(fields[1]), []).append(pid)
            rss[pid] = int(fields[21]) * page
        except (OSError, ValueError, IndexError):
            continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total


class PeakMemory:
    """``with PeakMemory() as peak: ...``; then ``peak.bytes`` is the largest sampled total."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        if Path("/proc").is_dir():
            self.bytes = max(self.bytes, _tree_rss_bytes(os.getpid()))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> "PeakMemory":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
