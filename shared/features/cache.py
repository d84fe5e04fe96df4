"""Item features from the frozen backbones, cached on disk by catalog content and backbone.

Why: running MiniLM and MobileNetV2 over the catalog costs seconds to minutes on a CPU, and
every client of a simulation (and every round) needs the same features. The cache key hashes
the backbone identity with each item's id and modality content (description text, image
bytes), so editing one description or replacing one poster invalidates exactly that cache,
and two datasets with the same content share it. Files are written atomically (temp + rename):
a crash never leaves a half-written cache that a later run would trust.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.data.schema import Dataset
from shared.file_lock import locked
from shared.features.image import IMAGE_BACKBONE_ID, IMAGE_DIM
from shared.features.text import TEXT_BACKBONE_ID, TEXT_DIM

CACHE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ItemFeatures:
    """Frozen backbone features for every catalog item, with per-item modality presence.

    ``text[i]`` is meaningful only where ``text_mask[i]`` (the item has a description), and
    ``image[i]`` only where ``image_mask[i]``; elsewhere the rows are zero and the model uses
    its learned placeholder instead.
    """

    text: np.ndarray  # float32 [N, 384]
    text_mask: np.ndarray  # bool [N]
    image: np.ndarray  # float32 [N, 1280]
    image_mask: np.ndarray  # bool [N]

    @property
    def num_items(self) -> int:
        return int(self.text.shape[0])


def default_cache_dir() -> Path:
    """``$FEDMMREC_CACHE`` or ``~/.cache/fedmmrec/features`` (the dataset folder may be read-only)."""
    env = os.environ.get("FEDMMREC_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fedmmrec" / "features"


def text_cache_key(dataset: Dataset) -> str:
    digest = hashlib.sha256(f"{CACHE_FORMAT_VERSION}|{TEXT_BACKBONE_ID}".encode())
    for item_id, text in zip(dataset.item_ids, dataset.descriptions):
        digest.update(f"\x1e{item_id}\x1f{text}".encode())
    return digest.hexdigest()[:24]


def image_cache_key(dataset: Dataset) -> str:
    digest = hashlib.sha256(f"{CACHE_FORMAT_VERSION}|{IMAGE_BACKBONE_ID}".encode())
    for item_id, path in zip(dataset.item_ids, dataset.image_paths):
        content = hashlib.sha256(path.read_bytes()).hexdigest() if path is not None else ""
        digest.update(f"\x1e{item_id}\x1f{content}".encode())
    return digest.hexdigest()[:24]


def _atomic_save(path: Path, features: np.ndarray, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, features=features, mask=mask)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


def _load(path: Path, num_items: int, dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path) as data:
            features, mask = data["features"], data["mask"]
    except (OSError, ValueError, KeyError):
        return None  # unreadable cache: recompute (it is derived data, nothing is lost)
    if features.shape != (num_items, dim) or mask.shape != (num_items,):
        return None
    return features.astype(np.float32, copy=False), mask.astype(bool, copy=False)


def _encode_texts(texts: list[str], progress: bool) -> np.ndarray:
    from shared.features import (
        text,  # imported late: transformers is only needed on a miss
    )

    return text.encode_texts(texts, progress=progress)


def _encode_images(paths: list[Path], progress: bool) -> np.ndarray:
    from shared.features import (
        image,  # imported late: torchvision is only needed on a miss
    )

    return image.encode_images(paths, progress=progress)


def _modality_features(path: Path | None, present: np.ndarray, dim: int, compute) -> tuple[np.ndarray, np.ndarray]:
    """One modality's features: from the cache file, else computed for present items and saved.

    ``path`` None means the modality is not used: all-zero features, all absent.
    """
    n = len(present)
    if path is None:
        return np.zeros((n, dim), np.float32), np.zeros(n, bool)
    loaded = _load(path, n, dim)
    if loaded is not None:
        return loaded
    with _computing(path):
        loaded = _load(path, n, dim)  # another process may have computed it while this one waited
        if loaded is not None:
            return loaded
        features = np.zeros((n, dim), np.float32)
        idx = np.flatnonzero(present)
        if len(idx):
            features[idx] = compute(idx)
        _atomic_save(path, features, present)
    return features, present


def _computing(path: Path):
    """Hold ``path``'s lock while its features are computed: two processes sharing a cache (a
    grid's runs, the test suite's workers) that miss the same entry at once encode it once, the
    second reading what the first wrote. Unlocked (no ``fcntl``), both compute; the atomic write
    keeps either result whole."""
    return locked(path)


def load_or_compute_features(
    dataset: Dataset,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    modalities: tuple[str, ...] = ("text", "image"),
) -> ItemFeatures:
    """Return the catalog's backbone features, computing only what is not cached yet."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    text, text_mask = _modality_features(
        cache / f"text-{text_cache_key(dataset)}.npz" if "text" in modalities else None,
        present=np.asarray([bool(t) for t in dataset.descriptions]),
        dim=TEXT_DIM,
        compute=lambda idx: _encode_texts([dataset.descriptions[i] for i in idx], progress),
    )
    image, image_mask = _modality_features(
        cache / f"image-{image_cache_key(dataset)}.npz" if "image" in modalities else None,
        present=np.asarray([p is not None for p in dataset.image_paths]),
        dim=IMAGE_DIM,
        compute=lambda idx: _encode_images([dataset.image_paths[i] for i in idx], progress),
    )
    return ItemFeatures(text=text, text_mask=text_mask, image=image, image_mask=image_mask)
