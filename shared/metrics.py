"""Ranking metrics for leave-last-out evaluation with full ranking over the catalog.

One held-out item per user; the user's training items are excluded from the ranking (the
held-out item itself never is). Ties are broken pessimistically (an item with an equal score
ranks above the held-out item), so a constant scorer gets no credit. With a single relevant
item, Recall@k equals HR@k.
"""

from __future__ import annotations

import math

import numpy as np

METRIC_NAMES = ("hr@10", "ndcg@10", "recall@20")
SAMPLED_NEGATIVES = 99
# The sampled protocol twice: negatives from every item the user never interacted with (the NCF
# literature's), and from the warm items only (those that existed at training time). A library
# model scores a film it never saw at minus infinity, so the cold negatives of the first are
# free for it and cost a model that places new films from content; the second ranks every
# model against the same warm films. Without cold items the two are equal.
WARM_NEGATIVES = "-warm-negatives"
SAMPLED_NAMES = ("hr@10-sampled", "ndcg@10-sampled", f"hr@10-sampled{WARM_NEGATIVES}", f"ndcg@10-sampled{WARM_NEGATIVES}")


def rank_of(scores: np.ndarray, target: int, exclude: np.ndarray) -> int:
    """0-based rank of ``target`` among the items not in ``exclude`` (pessimistic ties)."""
    scores = np.asarray(scores, dtype=np.float64).copy()
    exclude = exclude[exclude != target]
    scores[exclude] = -np.inf
    target_score = scores[target]
    if not np.isfinite(target_score):
        return len(scores)
    others = np.delete(scores, target)
    return int(np.count_nonzero(others >= target_score))


def metrics_from_rank(rank: int) -> dict[str, float]:
    """HR@10, NDCG@10 and Recall@20 for one user whose held-out item has ``rank``."""
    return {
        "hr@10": float(rank < 10),
        "ndcg@10": 1.0 / math.log2(rank + 2) if rank < 10 else 0.0,
        "recall@20": float(rank < 20),
    }


def sampled_metrics(
    scores: np.ndarray,
    target: int,
    exclude: np.ndarray,
    rng: np.random.Generator,
    not_negatives: np.ndarray | None = None,
    suffix: str = "",
) -> dict[str, float]:
    """The sampled protocol of the NCF literature: the held-out item against 99 items the user
    never interacted with, drawn uniformly without replacement; HR@10 and NDCG@10 of its rank
    there (pessimistic ties). Seed ``rng`` per user so every model meets the same negatives.
    ``not_negatives``: items never drawn either (the warm-only variant passes the cold items);
    ``suffix`` names that variant's keys."""
    blocked = np.zeros(len(scores), dtype=bool)
    blocked[exclude] = True
    if not_negatives is not None:
        blocked[np.asarray(not_negatives, dtype=np.int64)] = True
    blocked[target] = True
    pool = np.flatnonzero(~blocked)
    negatives = rng.choice(pool, size=min(SAMPLED_NEGATIVES, len(pool)), replace=False)
    rank = int(np.count_nonzero(np.asarray(scores)[negatives] >= scores[target]))
    full = metrics_from_rank(rank)
    return {f"hr@10-sampled{suffix}": full["hr@10"], f"ndcg@10-sampled{suffix}": full["ndcg@10"]}


def sampled_rng(user_index: int) -> np.random.Generator:
    """The generator of one user's sampled negatives: the same for every model, seed and round."""
    return np.random.default_rng([int(user_index), SAMPLED_NEGATIVES])


def mean_metrics(per_user: list[dict[str, float]]) -> dict[str, float]:
    """Average per-user metrics (each user weighs the same)."""
    if not per_user:
        return {name: float("nan") for name in METRIC_NAMES}
    return {name: float(np.mean([m[name] for m in per_user])) for name in METRIC_NAMES}


def mean_metrics_by_coldness(per_user: list[dict[str, float]], cold: list[bool]) -> dict[str, float]:
    """Mean metrics over all users, and over those whose held-out item is cold / warm
    (``hr@10-cold``, ``hr@10-warm``, ...); NaN for an empty subset."""
    out = mean_metrics(per_user)
    for name in SAMPLED_NAMES:
        if per_user and all(name in row for row in per_user):
            out[name] = float(np.mean([row[name] for row in per_user]))
    for suffix, keep in (("cold", True), ("warm", False)):
        subset = [row for row, is_cold in zip(per_user, cold) if is_cold == keep]
        out.update({f"{name}-{suffix}": value for name, value in mean_metrics(subset).items()})
    if per_user and all("rank-percentile" in row for row in per_user):
        out["rank-percentile"] = float(np.mean([row["rank-percentile"] for row in per_user]))
        for suffix, keep in (("cold", True), ("warm", False)):
            values = [row["rank-percentile"] for row, is_cold in zip(per_user, cold) if is_cold == keep]
            out[f"rank-percentile-{suffix}"] = float(np.mean(values)) if values else float("nan")
    return out


def rank_percentile(rank: int, num_items: int, train: np.ndarray, test: int) -> float:
    """Where the held-out item landed among the candidates: 0 best, 0.5 random, 1 worst.
    Unlike HR@10 it moves when a model lifts an item from the bottom to the middle, which is
    what cold-start content does long before it reaches the top 10."""
    candidates = num_items - len(set(np.asarray(train).tolist()) - {int(test)})
    return rank / max(1, candidates - 1)


def user_metrics(
    scores: np.ndarray, test: int, train: np.ndarray, user_index: int, cold_items: np.ndarray | None = None
) -> dict[str, float]:
    """One user's row under any model's ``scores`` [N]: where the held-out item ranks among the
    items the user has not interacted with (HR@10, NDCG@10, Recall@20, rank percentile) and
    the sampled protocol against the user's fixed 99 negatives, twice: drawn from every unseen
    item, and from the unseen items outside ``cold_items`` (the held-out item itself may be
    cold). The one evaluation call for every model: a device ranking with the tower or the
    released model, and a study scoring the pooled model, most-popular or a library peer."""
    rank = rank_of(scores, int(test), train)
    cold = np.zeros(0, dtype=np.int64) if cold_items is None else np.asarray(sorted(cold_items), dtype=np.int64)
    return {
        "rank": rank,
        "rank-percentile": rank_percentile(rank, len(scores), train, int(test)),
        **metrics_from_rank(rank),
        **sampled_metrics(scores, int(test), train, sampled_rng(user_index)),
        **sampled_metrics(scores, int(test), train, sampled_rng(user_index), cold, WARM_NEGATIVES),
    }
