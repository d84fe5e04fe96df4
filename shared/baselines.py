"""Non-learned baselines on the same split and metrics as the models."""

from __future__ import annotations

import numpy as np

from shared.data.split import NO_TEST_ITEM, LeaveLastOutSplit
from shared.metrics import mean_metrics_by_coldness, user_metrics


def evaluate_scorer(split: LeaveLastOutSplit, scores_for_user, users: list[int] | None = None) -> dict[str, float]:
    """Mean metrics over all users (or the partitions ``users``), plus cold/warm subsets and the
    sampled protocol, for ``scores_for_user(k) -> [N]`` (user ``k`` is simulated partition
    ``k``: same negatives)."""
    cold_items = set(int(i) for i in split.cold_items)
    rows = []
    partitions = range(len(split.test_item)) if users is None else sorted(users)
    partitions = [k for k in partitions if split.test_item[k] != NO_TEST_ITEM]  # time split: nothing after the cut
    for k in partitions:
        test, train = split.test_item[k], split.train_items[k]
        row = user_metrics(scores_for_user(k), int(test), train, k, split.cold_items)
        row.pop("rank")
        rows.append(row)
    cold = [int(split.test_item[k]) in cold_items for k in partitions]
    out = mean_metrics_by_coldness(rows, cold)
    out["users"] = len(rows)
    out["users-cold"] = sum(cold)
    return out


def most_popular(split: LeaveLastOutSplit, users: list[int] | None = None) -> dict[str, float]:
    """Rank by training interaction count (cold items have count 0 and rank last)."""
    popularity = split.train_popularity().astype(np.float64)
    return evaluate_scorer(split, lambda k: popularity, users)
