"""SHA-256 of a file, read in blocks: one helper for every file the project checks (the
MobileNet checkpoint, exported models, their manifests) so large files never sit in memory."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of named arrays (name, dtype, shape and bytes, in name order): what the ledger
    records of a file of arrays, so the digest does not depend on how numpy zipped them."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.reshape(-1).view(np.uint8))  # its bytes, not a copy of them (a catalog is megabytes)
    return digest.hexdigest()


def content_sha256(content: np.ndarray) -> str:
    """SHA-256 of the public catalog's content matrix as the server ships it to deployed devices
    (float64), named as :func:`arrays_sha256` names it."""
    return arrays_sha256({"content": np.asarray(content, dtype=np.float64)})
