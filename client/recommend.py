"""``fedmmrec recommend --model DIR --history ITEM_IDS --k 10``: rank the catalog on a device
with numpy alone, from what ``fedmmrec export`` wrote.

The user vector is the device's private trained embedding when its state file is given
(``--user-state device-state.json``), else the mean of the history items' embeddings (a
content-based profile that works before any training). Items in the history are not
recommended again.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shared.checksums import file_sha256

EXPORTED_FILES = ("item_tower.pt", "item_embeddings.npy", "item_biases.npy", "item_ids.json")


def load_export(model_dir: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The exported item embeddings, biases and ids, checked against the manifest's SHA-256.

    Every file the export writes must be listed there: a manifest with a file taken out (so a
    swapped file would go unchecked) is refused, as is a manifest naming a path outside the
    folder."""
    model_dir = Path(model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text(encoding="utf-8"))
    unlisted = [name for name in EXPORTED_FILES if name not in manifest["files"] and (model_dir / name).exists()]
    if unlisted:
        raise ValueError(f"{model_dir / 'manifest.json'}: does not list {', '.join(unlisted)}: the export is incomplete or was altered")
    outside = [name for name in manifest["files"] if Path(name).name != name]
    if outside:
        raise ValueError(f"{model_dir / 'manifest.json'}: file name {outside[0]!r} is not in the export folder")
    for name, digest in manifest["files"].items():
        if file_sha256(model_dir / name) != digest:
            raise ValueError(f"{model_dir / name}: does not match manifest.json (changed or corrupt)")
    embeddings = np.load(model_dir / "item_embeddings.npy")
    biases_path = model_dir / "item_biases.npy"  # absent in exports made before items had biases
    biases = np.load(biases_path) if biases_path.is_file() else np.zeros(len(embeddings), dtype=np.float32)
    return embeddings, biases, json.loads((model_dir / "item_ids.json").read_text(encoding="utf-8"))


def recommend(
    model_dir: str | Path, history: list[str], k: int = 10, user_state: str | Path | None = None
) -> list[tuple[str, float]]:
    """The top ``k`` (item id, score) pairs for a user with ``history``."""
    embeddings, biases, ids = load_export(model_dir)
    index = {item: i for i, item in enumerate(ids)}
    unknown = [item for item in history if item not in index]
    if unknown:
        raise ValueError(f"unknown item ids in --history: {', '.join(unknown[:5])}")
    seen = [index[item] for item in history]
    if user_state:
        state = json.loads(Path(user_state).read_text(encoding="utf-8"))
        user = np.asarray(state["user-embedding"], dtype=np.float32).reshape(-1)
    elif seen:
        user = embeddings[seen].mean(axis=0)
    else:
        raise ValueError("give --history (item ids) or --user-state: there is nothing to rank for")
    scores = embeddings @ user + biases
    scores[seen] = -np.inf
    top = np.argsort(-scores, kind="stable")[:k]
    return [(ids[i], float(scores[i])) for i in top]
