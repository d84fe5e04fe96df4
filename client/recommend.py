"""``fedmmrec recommend --model DIR --history ITEM_IDS --k 10 [--explain]``: rank the catalog on
a device with numpy alone, from what ``fedmmrec export`` wrote, and say why.

An item-tower export: the user vector is the device's private trained embedding when its state
file is given (``--user-state device-state.json``), else the mean of the history items'
embeddings (a content-based profile that works before any training). A ``privacy = user``
export: the user's vector is its history times the released item factors, computed here.
Items in the history are not recommended again. With ``explain``, each item's score comes split
into exact parts (:mod:`shared.explain`) with the history items closest to it. Both kinds go
through one interface (:class:`client.exports.ExportedModel`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from client.exports import Export, exported_model_of, load_export
from shared.explain import Explanation


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
    model = exported_model_of(export)
    user = model.user(seen, user_state)
    scores = np.asarray(model.scores(user, seen), dtype=np.float64).copy()
    scores[seen] = -np.inf
    top = [int(i) for i in np.argsort(-scores, kind="stable")[:k]]
    out = [Explanation(export.ids[i], float(scores[i]), {}) for i in top]
    if explain:
        for item, (baseline, parts, because) in zip(out, model.explain(user, seen, top)):
            item.baseline, item.parts, item.because = baseline, parts, because
    return out


def catalog_parts(export: Export, seen: list[int]) -> dict[str, np.ndarray]:
    """Every catalog item's score parts [N] each for a user with history ``seen`` (indices),
    ranked as :func:`rank` ranks without a device state."""
    model = exported_model_of(export)
    return model.parts(model.user(seen, required=False), seen)


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
