"""Leave-last-out split: each user's last interaction (by timestamp) is held out.

Written once and used by the federated client, the central trainer and the baselines, so that
every number in a results table comes from the same split.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from shared.data.schema import Dataset


@dataclass(frozen=True)
class LeaveLastOutSplit:
    """Per evaluable user: training item indices and the one held-out item index.

    ``users`` lists the dataset user indices that have at least two interactions, in the
    order that maps simulation partition ``k`` to ``users[k]``. ``cold_items`` are items with
    no training interaction at all: only content can rank them.
    """

    users: list[int]
    train_items: list[np.ndarray]
    test_item: np.ndarray
    skipped_users: list[int]
    cold_items: np.ndarray
    num_items: int

    def train_popularity(self) -> np.ndarray:
        """Training interaction count per item (the most-popular baseline's score)."""
        counts = np.zeros(self.num_items, dtype=np.int64)
        for items in self.train_items:
            np.add.at(counts, items, 1)
        return counts


def leave_last_out(dataset: Dataset) -> LeaveLastOutSplit:
    """Split by timestamp (ties keep file order); users with < 2 interactions are skipped."""
    order = np.lexsort((np.arange(dataset.num_interactions), dataset.inter_time, dataset.inter_user))
    users_sorted = dataset.inter_user[order]
    items_sorted = dataset.inter_item[order]
    boundaries = np.flatnonzero(np.diff(users_sorted)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(order)]])
    users, train_items, test_items, skipped = [], [], [], []
    for start, end in zip(starts, ends):
        user = int(users_sorted[start])
        seq = items_sorted[start:end]
        if len(seq) < 2:
            skipped.append(user)
            continue
        users.append(user)
        train_items.append(np.unique(seq[:-1]))
        test_items.append(int(seq[-1]))
    if skipped:
        warnings.warn(
            f"{dataset.root / 'interactions.csv'}: {len(skipped)} user(s) with fewer than 2 "
            f"interactions skipped (nothing to train on and hold out), e.g. user "
            f"{dataset.user_ids[skipped[0]]!r}",
            stacklevel=2,
        )
    seen = np.zeros(dataset.num_items, dtype=bool)
    for items in train_items:
        seen[items] = True
    return LeaveLastOutSplit(
        users=users,
        train_items=train_items,
        test_item=np.asarray(test_items, dtype=np.int64),
        skipped_users=skipped,
        cold_items=np.flatnonzero(~seen),
        num_items=dataset.num_items,
    )
