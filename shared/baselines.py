"""Non-learned baselines on the same split and metrics as the models."""

from __future__ import annotations

import numpy as np

from shared.data.split import LeaveLastOutSplit
from shared.metrics import mean_metrics, metrics_from_rank, rank_of


def evaluate_scorer(split: LeaveLastOutSplit, scores_for_user) -> dict[str, float]:
    """Mean metrics over all users, plus cold/warm subsets, for ``scores_for_user(k) -> [N]``."""
    cold = set(int(i) for i in split.cold_items)
    rows, cold_rows, warm_rows = [], [], []
    for k, (test, train) in enumerate(zip(split.test_item, split.train_items)):
        row = metrics_from_rank(rank_of(scores_for_user(k), int(test), train))
        rows.append(row)
        (cold_rows if int(test) in cold else warm_rows).append(row)
    out = mean_metrics(rows)
    out.update({f"{k}-cold": v for k, v in mean_metrics(cold_rows).items()})
    out.update({f"{k}-warm": v for k, v in mean_metrics(warm_rows).items()})
    out["users"] = len(rows)
    out["users-cold"] = len(cold_rows)
    return out


def most_popular(split: LeaveLastOutSplit) -> dict[str, float]:
    """Rank by training interaction count (cold items have count 0 and rank last)."""
    popularity = split.train_popularity().astype(np.float64)
    return evaluate_scorer(split, lambda k: popularity)
