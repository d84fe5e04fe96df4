"""Why an item is recommended: an exact split of its score into parts, and the history items
closest to it.

Two models, two exact decompositions:

- **The item tower** (``privacy = local``, ``central``, ``both``, ``none``). The fusion heads are
  not additive (``concat`` mixes its modality tokens through a GELU MLP; ``gated`` and
  ``attention`` weigh them by input-dependent softmaxes), so no per-modality term can be read off
  a weight matrix. The Shapley value is exact for any head: with players text, image (and the
  learned id part with ``item-ids``), an item's embedding is ``e(none) + sum_m phi_m`` where
  ``phi_m`` averages what adding ``m`` changes over the orders in which the players can arrive,
  and "without a modality" is the model's own missing-modality placeholder (its mask off).
  Two or three players need four or eight passes of the tower over the catalog, once, at
  export. A user's score ``u . e + b`` is linear in ``e``, so its parts are ``u . phi_m`` (and
  the id part also takes the item's bias).
- **The user-level model** (``privacy = user``). The score is already a sum: collaborative
  (``f_i . sum_h f_h`` over the user's history, scaled), popularity, and the content
  similarity. That last is a cosine, so an item without a modality is renormalised over the
  other: its text and image parts are the two-player Shapley values of the item's own
  modalities, and what every item gets (the catalog mean) is ``prior``. Items placed from their
  content (cold start) have factors and popularity linear in it, split by content block.

Both run on the device with numpy from what ``fedmmrec export`` wrote (Shapley parts are
precomputed there with torch). "Because you watched" names the history items most similar to
the recommended one: under the user-level model, the ones whose own terms add most to its
score (exact); under the tower, the nearest in embedding cosine.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from shared.item_content import content_blocks, unit_content


@dataclass
class Explanation:
    """One recommended item's score, split into named parts that sum to it exactly."""

    item: str
    score: float
    parts: dict[str, float]  # e.g. collaborative, popularity, text, image, id; sum + baseline == score
    baseline: float = 0.0  # the score with every player absent (the tower's placeholders); 0 otherwise
    because: list[tuple[str, float]] = field(default_factory=list)  # (history item, similarity or contribution)

    def shares(self) -> dict[str, float]:
        """Each part's share of the parts' total absolute size (signed)."""
        total = sum(abs(v) for v in self.parts.values())
        return {k: (v / total if total > 0 else 0.0) for k, v in self.parts.items()}

    def largest(self) -> str:
        return max(self.parts, key=lambda k: self.parts[k])

    def smallest(self) -> str:
        return min(self.parts, key=lambda k: self.parts[k])

    def to_json(self) -> dict:
        return {
            "item": self.item,
            "score": self.score,
            "baseline": self.baseline,
            "parts": self.parts,
            "shares": self.shares(),
            "because-you-interacted-with": [{"item": i, "weight": w} for i, w in self.because],
        }


# --- the item tower: Shapley parts, computed at export -------------------------------------


def shapley_weights(players: int) -> dict[tuple[int, ...], dict[int, float]]:
    """For each coalition S (sorted tuple) and player m not in S: the weight of
    ``f(S + m) - f(S)`` in ``phi_m``: |S|! (P - |S| - 1)! / P!."""
    out: dict[tuple[int, ...], dict[int, float]] = {}
    for size in range(players):
        for coalition in itertools.combinations(range(players), size):
            weight = math.factorial(size) * math.factorial(players - size - 1) / math.factorial(players)
            out[coalition] = {m: weight for m in range(players) if m not in coalition}
    return out


def tower_players(spec) -> list[str]:
    """The tower's players: its modalities, and ``id`` when items have learned id parts."""
    return list(spec.modalities) + (["id"] if spec.id_items else [])


def tower_shapley(tower, catalog: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(base [N, d], parts [N, P, d], players)``: ``base + parts.sum(1)`` is every item's
    embedding; ``base`` is the embedding with every player absent (masks off, ids unknown)."""
    import torch

    players = tower_players(tower.spec)

    @torch.no_grad()
    def embed(coalition: tuple[int, ...]) -> np.ndarray:
        inputs = dict(catalog)
        for m, name in enumerate(players):
            if m in coalition:
                continue
            if name == "id":
                inputs["item_known"] = torch.zeros_like(catalog["item_known"])
            else:
                inputs[f"{name}_mask"] = torch.zeros_like(catalog[f"{name}_mask"])
        return tower(inputs).numpy().astype(np.float64)

    values = {c: embed(c) for size in range(len(players) + 1) for c in itertools.combinations(range(len(players)), size)}
    base = values[()]
    parts = np.zeros((base.shape[0], len(players), base.shape[1]))
    for coalition, weights in shapley_weights(len(players)).items():
        for m, weight in weights.items():
            parts[:, m] += weight * (values[tuple(sorted(coalition + (m,)))] - values[coalition])
    return base, parts, players


def explain_tower(
    item_index: int, user: np.ndarray, base: np.ndarray, parts: np.ndarray, biases: np.ndarray, players: list[str]
) -> tuple[float, dict[str, float]]:
    """``(baseline, parts)`` of one item's score ``u . e + b`` under the tower's Shapley split."""
    split = {name: float(parts[item_index, m] @ user) for m, name in enumerate(players)}
    bias = float(biases[item_index])
    if "id" in split:
        split["id"] += bias  # the bias exists only with the id part
        bias = 0.0
    return float(base[item_index] @ user) + bias, split


def nearest_in_history(item_index: int, vectors: np.ndarray, seen: list[int], ids: list[str], k: int = 3) -> list[tuple[str, float]]:
    """The ``k`` history items whose vectors are most cosine-similar to the item's."""
    if not seen:
        return []
    unit = vectors / (np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12)
    similarity = unit[seen] @ unit[item_index]
    order = np.argsort(-similarity, kind="stable")[:k]
    return [(ids[seen[j]], float(similarity[j])) for j in order]


# --- the user-level model: the history items behind a score -----------------------------


def user_level_because(model, history: np.ndarray, content: np.ndarray | None, item_index: int, k: int = 3) -> list[tuple[int, float]]:
    """The ``k`` history items whose own terms add most to the item's score: their share of the
    collaborative term (``f_i . f_h``, or EASE's weight ``B[h, i]``, scaled as the score is) and of the content term."""
    return user_level_because_many(model, history, content, [item_index], k)[0]


def user_level_because_many(
    model, history: np.ndarray, content: np.ndarray | None, items: list[int], k: int = 3
) -> list[list[tuple[int, float]]]:
    """:func:`user_level_because` for several items of one user: what depends on the user alone
    (the scale, the unit content, the history's similarity to the catalog) is computed once."""
    history = np.asarray(history, dtype=np.int64)
    if len(history) == 0:
        return [[] for _ in items]
    _, scale, _ = model.scales(history)
    rows = model.history_rows(history)  # what each history item adds to the user vector
    with_content = model.content_weight and content is not None
    if with_content:
        vectors = unit_content(content)
        profile = vectors[history].mean(0)
        similarity = vectors @ profile / (np.linalg.norm(profile) + 1e-9)
        history_mean = (vectors[history] @ vectors.T).mean(1)
        content_scale = model.content_weight / (len(history) * (np.linalg.norm(profile) + 1e-9)) / (similarity.std() + 1e-9)
    out = []
    for item_index in items:
        factor = model.factors[item_index]
        if content is not None and model.factor_map is not None and model.from_content is not None and model.from_content[item_index]:
            factor = content[item_index] @ model.factor_map
        contribution = rows @ factor / scale
        if with_content:
            contribution = contribution + content_scale * (vectors[history] @ vectors[item_index] - history_mean)
        order = np.argsort(-contribution, kind="stable")[:k]
        out.append([(int(history[j]), float(contribution[j])) for j in order])
    return out


def without_modality(content: np.ndarray, modality: str, rows: np.ndarray | list[int] | None = None) -> np.ndarray:
    """The content matrix with one modality's columns zeroed in ``rows`` (every row when None):
    the item as the model would see it had that modality never been there."""
    if modality not in ("text", "image"):
        raise ValueError(f"unknown modality {modality!r}: text or image")
    out = np.array(content, copy=True)
    columns = content_blocks(content.shape[1])[modality]
    if rows is None:
        out[:, columns] = 0.0
    else:
        out[np.asarray(rows, dtype=np.int64)[:, None], np.arange(content.shape[1])[columns]] = 0.0
    return out
