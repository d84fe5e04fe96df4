"""SHA-256 of a file, read in blocks: one helper for every file the project checks (the
MobileNet checkpoint, exported models, their manifests) so large files never sit in memory."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
