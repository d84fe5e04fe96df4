"""What ``fedmmrec export`` wrote, read on a device: the files checked against the signed
manifest (:func:`load_export`), and the model they hold behind one interface
(:class:`ExportedModel`) that ``fedmmrec recommend``, the online user and the explanation study
rank, explain and update with, whichever kind it is:

- ``user-level``: the released item model of the user-level mechanisms
  (:class:`~shared.item_model.CooccurrenceModel`); a user's scores are the exact terms of its
  own history (:meth:`~shared.item_model.CooccurrenceModel.score_terms`), and a new
  interaction changes its vector exactly.
- ``item-tower``: the tower's catalog embeddings and biases; a user's score is ``u . e + b``
  with ``u`` its private trained vector (its device state) or the mean of its history's
  embeddings, the parts are Shapley values over modalities precomputed at export, and a new
  interaction takes a few BPR steps on ``u`` with replay.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from shared.checksums import file_sha256
from shared.export_signature import check_signed
from shared.explain import explain_tower, nearest_in_history, user_level_because_many

if TYPE_CHECKING:
    from client.online import OnlineUser

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
    from shared.item_model import CooccurrenceModel

    prefix = "model.npz:"
    return CooccurrenceModel.from_arrays({k[len(prefix):]: v for k, v in export.arrays.items() if k.startswith(prefix)})


class ExportedModel(ABC):
    """One kind of exported model: what a device needs to rank, explain and update a user."""

    kind: ClassVar[str]  # the manifest's kind

    def __init__(self, export: Export) -> None:
        self.export, self.ids = export, export.ids

    @abstractmethod
    def user(self, seen: list[int], user_state: str | Path | None = None, required: bool = True) -> np.ndarray:
        """The user's vector from its history (catalog indices) or its device state; with
        ``required``, an error that says what to give when there is nothing to rank for."""

    @abstractmethod
    def scores(self, user: np.ndarray, seen: list[int]) -> np.ndarray:
        """Every catalog item's score [N] for this user (the history not yet excluded)."""

    @abstractmethod
    def parts(self, user: np.ndarray, seen: list[int]) -> dict[str, np.ndarray]:
        """Every item's score in named parts [N] each (with the tower's baseline, they sum to it)."""

    @abstractmethod
    def explain(self, user: np.ndarray, seen: list[int], items: list[int]) -> list[tuple[float, dict[str, float], list[tuple[str, float]]]]:
        """For each of ``items``: (baseline, its parts, the history items behind it)."""

    @abstractmethod
    def updated(self, user: np.ndarray, seen: list[int], new: int, online: "OnlineUser") -> np.ndarray:
        """The user's vector after the new interaction ``new`` (already in ``seen``)."""


class ReleasedItemModel(ExportedModel):
    kind = "user-level"

    def __init__(self, export: Export) -> None:
        super().__init__(export)
        self.model = exported_model(export)
        self.content = export.arrays["content.npy"].astype(np.float64)
        self._last: tuple[tuple[int, ...] | None, dict[str, np.ndarray]] = (None, {})  # the last history's terms

    def user(self, seen: list[int], user_state: str | Path | None = None, required: bool = True) -> np.ndarray:
        if required and not seen:
            raise ValueError("give --history (item ids): a user-level model ranks from the user's own history")
        return self.model.user_vector(np.asarray(seen, dtype=np.int64))

    def parts(self, user: np.ndarray, seen: list[int]) -> dict[str, np.ndarray]:
        # rank() asks for the scores, then the parts of the same user: the terms are computed once
        key = tuple(int(i) for i in seen)
        if self._last[0] != key:
            self._last = (key, self.model.score_terms(np.asarray(seen, dtype=np.int64), self.content))
        return self._last[1]

    def scores(self, user: np.ndarray, seen: list[int]) -> np.ndarray:
        return sum(self.parts(user, seen).values(), np.zeros(len(self.ids)))  # its parts, exactly

    def explain(self, user: np.ndarray, seen: list[int], items: list[int]) -> list[tuple[float, dict[str, float], list[tuple[str, float]]]]:
        terms = self.parts(user, seen)
        behind = user_level_because_many(self.model, np.asarray(seen, dtype=np.int64), self.content, items)
        return [
            (0.0, {name: float(values[i]) for name, values in terms.items() if values[i] != 0.0}, [(self.ids[h], w) for h, w in b])
            for i, b in zip(items, behind)
        ]

    def updated(self, user: np.ndarray, seen: list[int], new: int, online: "OnlineUser") -> np.ndarray:
        return self.model.user_vector(np.asarray(seen, dtype=np.int64))  # exact: the history times the factors


class ItemTowerModel(ExportedModel):
    kind = "item-tower"

    def __init__(self, export: Export) -> None:
        super().__init__(export)
        self.embeddings = export.arrays["item_embeddings.npy"].astype(np.float64)
        self.biases = export.arrays["item_biases.npy"].astype(np.float64)

    def user(self, seen: list[int], user_state: str | Path | None = None, required: bool = True) -> np.ndarray:
        if user_state:
            state = json.loads(Path(user_state).read_text(encoding="utf-8"))
            return np.asarray(state["user-embedding"], dtype=np.float64).reshape(-1)
        if seen:
            return self.embeddings[seen].mean(axis=0)  # a content-based profile that works before any training
        if required:
            raise ValueError("give --history (item ids) or --user-state: there is nothing to rank for")
        return np.zeros(self.embeddings.shape[1])

    def scores(self, user: np.ndarray, seen: list[int]) -> np.ndarray:
        return self.embeddings @ user + self.biases

    def _item_parts(self) -> np.ndarray:
        if "item_parts.npy" not in self.export.arrays:
            raise ValueError("this export has no explanation parts (exported before --explain existed): export the run again")
        return self.export.arrays["item_parts.npy"]

    def parts(self, user: np.ndarray, seen: list[int]) -> dict[str, np.ndarray]:
        parts = self._item_parts() @ user  # [N, players]
        out = {name: parts[:, m] for m, name in enumerate(self.export.manifest["explanation-players"])}
        if "id" in out:
            out["id"] = out["id"] + self.biases
        return out

    def explain(self, user: np.ndarray, seen: list[int], items: list[int]) -> list[tuple[float, dict[str, float], list[tuple[str, float]]]]:
        parts, players = self._item_parts(), list(self.export.manifest["explanation-players"])
        out = []
        for i in items:
            baseline, named = explain_tower(int(i), user, self.export.arrays["item_base.npy"], parts, self.biases, players)
            out.append((baseline, named, nearest_in_history(int(i), self.embeddings, seen, self.ids)))
        return out

    def updated(self, user: np.ndarray, seen: list[int], new: int, online: "OnlineUser") -> np.ndarray:
        """BPR on the user vector only: the new item and replayed ones against random negatives."""
        replayed, known = online.buffer.items(), set(seen)
        for _ in range(online.steps):
            positives = [new] + [replayed[j] for j in online.rng.integers(len(replayed), size=min(7, len(replayed)))]
            negatives = online.rng.integers(len(self.embeddings), size=len(positives))
            keep = [k for k, n in enumerate(negatives) if int(n) not in known]
            if not keep:
                continue
            pos, neg = self.embeddings[[positives[k] for k in keep]], self.embeddings[negatives[keep]]
            margin = (pos - neg) @ user + self.biases[[positives[k] for k in keep]] - self.biases[negatives[keep]]
            weight = 1.0 / (1.0 + np.exp(margin))  # d(-log sigmoid(margin)) / d margin, negated
            user = user + online.lr * (weight[:, None] * (pos - neg)).mean(0)
        return user


EXPORTED_MODELS: dict[str, type[ExportedModel]] = {m.kind: m for m in (ReleasedItemModel, ItemTowerModel)}


def exported_model_of(export: Export) -> ExportedModel:
    """The model an export holds, by its manifest's kind."""
    return EXPORTED_MODELS[export.kind](export)
