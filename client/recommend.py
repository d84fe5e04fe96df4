"""``fedmmrec recommend --model DIR --history ITEM_IDS --k 10 [--explain]``: rank the catalog on
a device with numpy alone, from what ``fedmmrec export`` wrote, and say why.

An item-tower export: the user vector is the device's private trained embedding when its state
file is given (``--user-state device-state.json``), else the mean of the history items'
embeddings (a content-based profile that works before any training). A ``privacy = user``
export: the user's vector is its history times the released item factors, computed here.
Items in the history are not recommended again. With ``explain``, each item's score comes split
into exact parts (:mod:`shared.explain`) with the history items closest to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.checksums import file_sha256
from shared.export_signature import check_signed
from shared.explain import (
    Explanation,
    explain_tower,
    nearest_in_history,
    user_level_because_many,
)

EXPORTED_FILES = {
    "item-tower": (
        "item_tower.pt", "item_embeddings.npy", "item_biases.npy", "item_base.npy", "item_parts.npy", "item_ids.json",
        "item_titles.json",
    ),
    "user-level": ("model.npz", "content.npy", "item_ids.json", "item_titles.json"),
}


@dataclass
class Export:
    """A verified export: its kind, item ids, manifest, and its arrays by file name."""

    kind: str
    ids: list[str]
    manifest: dict
    arrays: dict[str, np.ndarray]
    titles: dict[str, str]


def load_export(model_dir: str | Path, trusted_key: str | Path | None = None) -> Export:
    """The export, every file checked against the manifest's SHA-256, and the manifest's
    signature against ``trusted_key`` (a PEM public key the device already holds): unsigned,
    signed by another key, or changed after signing is refused. ``None``: the caller trusts
    the folder itself (a researcher reading an export of their own run); the device's command
    line always passes a key.

    Every file the export writes must be listed there: a manifest with a file taken out (so a
    swapped file would go unchecked) is refused, as is a manifest naming a path outside the
    folder."""
    model_dir = Path(model_dir)
    manifest_path = model_dir / "manifest.json"
    if not manifest_path.is_file():
        raise ValueError(f"{manifest_path}: not found: {model_dir} is not a folder written by fedmmrec export")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if trusted_key is not None:
        check_signed(manifest, manifest_path, trusted_key)
    kind = manifest.get("kind", "item-tower")  # exports made before user-level ones had no kind
    if kind not in EXPORTED_FILES:
        raise ValueError(f"{manifest_path}: unknown kind {kind!r}")
    unlisted = [name for name in EXPORTED_FILES[kind] if name not in manifest["files"] and (model_dir / name).exists()]
    if unlisted:
        raise ValueError(f"{manifest_path}: does not list {', '.join(unlisted)}: the export is incomplete or was altered")
    outside = [name for name in manifest["files"] if Path(name).name != name]
    if outside:
        raise ValueError(f"{manifest_path}: file name {outside[0]!r} is not in the export folder")
    for name, digest in manifest["files"].items():
        if file_sha256(model_dir / name) != digest:
            raise ValueError(f"{model_dir / name}: does not match manifest.json (changed or corrupt)")
    arrays: dict[str, np.ndarray] = {}
    for name in manifest["files"]:
        if name.endswith(".npy"):
            arrays[name] = np.load(model_dir / name)
        elif name.endswith(".npz"):
            with np.load(model_dir / name, allow_pickle=False) as data:
                arrays.update({f"{name}:{key}": data[key] for key in data.files})
    if kind == "item-tower" and "item_biases.npy" not in arrays:  # exports made before items had biases
        arrays["item_biases.npy"] = np.zeros(len(arrays["item_embeddings.npy"]), dtype=np.float32)
    ids = json.loads((model_dir / "item_ids.json").read_text(encoding="utf-8"))
    titles_path = model_dir / "item_titles.json"
    titles = json.loads(titles_path.read_text(encoding="utf-8")) if "item_titles.json" in manifest["files"] else {}
    return Export(kind, ids, manifest, arrays, titles)


def exported_model(export: Export):
    """The released model of a user-level export (numpy; the arrays the manifest checked)."""
    from shared.cooccurrence import CooccurrenceModel

    prefix = "model.npz:"
    return CooccurrenceModel.from_arrays({k[len(prefix):]: v for k, v in export.arrays.items() if k.startswith(prefix)})


def rank(
    model_dir: "str | Path | Export", history: list[str], k: int = 10, user_state: str | Path | None = None, explain: bool = False
) -> list[Explanation]:
    """The top ``k`` items for a user with ``history``, each with its score and, with
    ``explain``, the exact parts of its score and the history items behind it."""
    export = model_dir if isinstance(model_dir, Export) else load_export(model_dir)  # verified once by a caller that ranks many users
    index = {item: i for i, item in enumerate(export.ids)}
    unknown = [item for item in history if item not in index]
    if unknown:
        raise ValueError(f"unknown item ids in --history: {', '.join(unknown[:5])}")
    seen = [index[item] for item in history]
    if export.kind == "user-level":
        return _rank_user_level(export, seen, k, explain)
    return _rank_tower(export, seen, k, user_state, explain)


def _rank_tower(export: Export, seen: list[int], k: int, user_state, explain: bool) -> list[Explanation]:
    embeddings, biases = export.arrays["item_embeddings.npy"], export.arrays["item_biases.npy"]
    if user_state:
        state = json.loads(Path(user_state).read_text(encoding="utf-8"))
        user = np.asarray(state["user-embedding"], dtype=np.float32).reshape(-1)
    elif seen:
        user = embeddings[seen].mean(axis=0)
    else:
        raise ValueError("give --history (item ids) or --user-state: there is nothing to rank for")
    scores = embeddings @ user + biases
    scores[seen] = -np.inf
    out = []
    for i in np.argsort(-scores, kind="stable")[:k]:
        item = Explanation(export.ids[i], float(scores[i]), {})
        if explain:
            if "item_parts.npy" not in export.arrays:
                raise ValueError("this export has no explanation parts (exported before --explain existed): export the run again")
            item.baseline, item.parts = explain_tower(
                int(i), user, export.arrays["item_base.npy"], export.arrays["item_parts.npy"], biases,
                list(export.manifest["explanation-players"]),
            )
            item.because = nearest_in_history(int(i), embeddings, seen, export.ids)
        out.append(item)
    return out


def _rank_user_level(export: Export, seen: list[int], k: int, explain: bool) -> list[Explanation]:
    model, content = exported_model(export), export.arrays["content.npy"].astype(np.float64)
    history = np.asarray(seen, dtype=np.int64)
    if not len(history):
        raise ValueError("give --history (item ids): a user-level model ranks from the user's own history")
    terms = model.score_terms(history, content)
    scores = sum(terms.values(), np.zeros(len(export.ids)))  # model.scores: the same sum
    scores[history] = -np.inf
    top = [int(i) for i in np.argsort(-scores, kind="stable")[:k]]
    because = user_level_because_many(model, history, content, top) if explain else [[] for _ in top]
    out = []
    for i, behind in zip(top, because):
        item = Explanation(export.ids[i], float(scores[i]), {})
        if explain:
            item.parts = {name: float(values[i]) for name, values in terms.items() if values[i] != 0.0}
            item.because = [(export.ids[h], w) for h, w in behind]
        out.append(item)
    return out


def catalog_parts(export: Export, seen: list[int]) -> dict[str, np.ndarray]:
    """Every catalog item's score parts [N] each for a user with history ``seen`` (indices),
    ranked as :func:`rank` ranks without a device state."""
    if export.kind == "user-level":
        content = export.arrays["content.npy"].astype(np.float64)
        return exported_model(export).score_terms(np.asarray(seen, dtype=np.int64), content)
    user = export.arrays["item_embeddings.npy"][seen].mean(axis=0)
    parts = export.arrays["item_parts.npy"] @ user  # [N, players]
    out = {name: parts[:, m] for m, name in enumerate(export.manifest["explanation-players"])}
    if "id" in out:
        out["id"] = out["id"] + export.arrays["item_biases.npy"]
    return out


def recommend(
    model_dir: str | Path, history: list[str], k: int = 10, user_state: str | Path | None = None
) -> list[tuple[str, float]]:
    """The top ``k`` (item id, score) pairs for a user with ``history``."""
    return [(item.item, item.score) for item in rank(model_dir, history, k, user_state)]


def explanation_lines(items: list[Explanation], titles: dict[str, str] | None = None) -> list[str]:
    """Readable lines: rank, item, score, the parts' shares, and "because you interacted with"."""
    titles = titles or {}
    lines = []
    for position, item in enumerate(items, start=1):
        shares = ", ".join(f"{name} {share:+.0%}" for name, share in item.shares().items())
        name = f"{item.item} {titles[item.item]!r}" if item.item in titles else item.item
        lines.append(f"{position:3d}  {name}  score {item.score:.4f}")
        if item.parts:
            lines.append(f"       why: {shares}" + (f" (baseline {item.baseline:+.3f})" if item.baseline else ""))
        if item.because:
            because = ", ".join(f"{titles.get(h, h)}" for h, _ in item.because)
            lines.append(f"       because you interacted with: {because}")
    return lines
