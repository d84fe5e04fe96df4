"""Peak resident memory of this process and every process it started (Ray workers included).

Sampled from ``/proc`` in a background thread, because a simulation's memory lives in child
processes that ``resource.getrusage`` only reports once they have exited. Linux only; elsewhere
the peak is reported as 0.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def _proc_table() -> tuple[dict[int, list[int]], dict[int, int]]:
    """Children of every process, and every process's resident bytes, from ``/proc``."""
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
    return children, rss


def process_tree(root: int) -> list[int]:
    """``root`` and every live process descended from it (Linux; ``[root]`` elsewhere)."""
    if not Path("/proc").is_dir():
        return [root]
    children, _ = _proc_table()
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack += children.get(pid, [])
    return tree


def _pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages (torch's libraries) split among their users, so
    the sum over a process tree does not count them once per process."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _tree_rss_bytes(root: int) -> int:
    children, rss = _proc_table()
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total


def _tree_pss_bytes(root: int) -> int:
    return sum(_pss_bytes(pid) for pid in process_tree(root))


class PeakMemory:
    """``with PeakMemory() as peak: ...``; then ``peak.bytes`` is the largest sampled total.

    ``root`` is the process whose tree is measured: this process by default, or another one
    (a SuperNode and the ClientApp processes it starts). ``proportional=True`` sums PSS instead
    of RSS: what the tree costs a device, with shared libraries counted once.
    """

    def __init__(self, interval_s: float = 0.5, root: int | None = None, proportional: bool = False) -> None:
        self.interval_s = interval_s
        self.root = root if root is not None else os.getpid()
        self._measure = _tree_pss_bytes if proportional else _tree_rss_bytes
        self.bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        if Path("/proc").is_dir():
            self.bytes = max(self.bytes, self._measure(self.root))

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
