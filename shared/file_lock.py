"""One exclusive lock per file, held across a read-check-write, for processes that share a folder.

Why one module: the feature cache (two test workers, a grid's runs encoding one catalog) and a
device's spend record (two runs on one device admitting against the same budget) need the same
thing: ``.<name>.lock`` beside the file, ``fcntl.flock`` held while the work is done. Without
``fcntl`` (Windows), or where the lock file cannot be made, the work runs unlocked; each caller
says what that costs it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold ``path``'s lock (``.<name>.lock`` beside it) for the ``with`` block."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_name(f".{path.name}.lock"), "a+b")
    except (ImportError, OSError):
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
