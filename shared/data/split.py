"""The evaluation splits: leave-last-out (each user's last interaction, by timestamp, is held
out) and the global time cut (``time-cut``: everything before one moment trains, each user's
first interaction after it is the test item).

With a cold-start fraction, that share of the catalog's items is also held out of training
entirely (every interaction with them is removed from the training sets), so the users whose
last interaction is one of them test what only content can do: rank an item nobody trained on.

Written once and used by the federated client, the central trainer and the baselines, so that
every number in a results table comes from the same split.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.config import EVALUATE_ON
from shared.data.schema import Dataset


NO_TEST_ITEM = -1  # a device of the time split with nothing after the cut: it contributes, it is not ranked


@dataclass(frozen=True)
class LeaveLastOutSplit:
    """Per evaluable user: training item indices and the one held-out item index.

    ``users`` lists the dataset user indices that have at least two interactions, in the
    order that maps simulation partition ``k`` to ``users[k]``. ``cold_items`` are items with
    no training interaction at all: only content can rank them. Under the time split
    (:func:`time_cut`) a user's ``test_item`` is :data:`NO_TEST_ITEM` when nothing of its came
    after the cut.
    """

    users: list[int]
    train_items: list[np.ndarray]
    test_item: np.ndarray
    skipped_users: list[int]
    cold_items: np.ndarray
    num_items: int
    held_out_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # Each user's most recent training interaction: a validation item from training data, for
    # choosing settings without touching the test item.
    validation_item: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def train_popularity(self) -> np.ndarray:
        """Training interaction count per item (the most-popular baseline's score)."""
        counts = np.zeros(self.num_items, dtype=np.int64)
        for items in self.train_items:
            np.add.at(counts, items, 1)
        return counts


def held_out_items(dataset: Dataset, fraction: float, seed: int) -> np.ndarray:
    """``round(fraction * items)`` items drawn (seeded) from those with interactions."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"cold-start-items must be in [0, 1), got {fraction}")
    candidates = np.unique(dataset.inter_item)
    count = min(len(candidates), int(round(fraction * dataset.num_items)))
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(candidates, size=count, replace=False)).astype(np.int64)




def pseudo_cold_items(warm: np.ndarray, held_out: np.ndarray, seed: int) -> np.ndarray:
    """The validation split's stand-ins for new films: as many items as ``held_out`` has, drawn
    (seeded apart from it) among the ``warm`` items (trained on in the test split), so the
    calibration of content-placed items is chosen on films whose interactions are training data."""
    candidates = np.setdiff1d(warm, held_out)
    count = min(len(candidates), len(held_out))
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.random.default_rng([seed, 1]).choice(candidates, size=count, replace=False)).astype(np.int64)


def leave_last_out(dataset: Dataset, cold_fraction: float = 0.0, seed: int = 0, evaluate_on: str = "test") -> LeaveLastOutSplit:
    """Split by timestamp (ties keep file order); users with < 2 interactions are skipped, and
    so are users left with no training item once the cold-start items are removed.

    ``evaluate_on = "validation"`` is the same split one step earlier, for choosing settings
    without touching a test item: each user's test interaction is dropped, the held-out item is
    the user's validation item (the most recent interaction with a film outside the cold-start
    hold-out), and a second, disjoint set of ``cold_fraction`` of the films (pseudo-cold, warm in
    the test split) is held out of training too, so cold-start metrics are measured on films
    whose content and interactions are training data."""
    if evaluate_on not in EVALUATE_ON:
        raise ValueError(f"evaluate-on must be one of {', '.join(EVALUATE_ON)}, got {evaluate_on!r}")
    held_out = held_out_items(dataset, cold_fraction, seed)
    is_held_out = np.zeros(dataset.num_items, dtype=bool)
    is_held_out[held_out] = True
    order = np.lexsort((np.arange(dataset.num_interactions), dataset.inter_time, dataset.inter_user))
    users_sorted = dataset.inter_user[order]
    items_sorted = dataset.inter_item[order]
    boundaries = np.flatnonzero(np.diff(users_sorted)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(order)]])
    validating = evaluate_on == "validation"
    if validating:  # the test item and the real cold films leave the sequences; pseudo-cold join
        not_last = np.ones(len(order), dtype=bool)
        not_last[ends - 1] = False
        pseudo = pseudo_cold_items(np.unique(items_sorted[not_last]), held_out, seed)
        is_test_cold = is_held_out.copy()
        is_held_out[pseudo] = True
        held_out = np.union1d(held_out, pseudo).astype(np.int64)
    users, train_items, test_items, validation_items, skipped, emptied = [], [], [], [], [], []
    for start, end in zip(starts, ends):
        user = int(users_sorted[start])
        seq = items_sorted[start:end]
        if validating:
            seq = seq[:-1][~is_test_cold[seq[:-1]]]
        if len(seq) < 2:
            skipped.append(user)
            continue
        train = seq[:-1][~is_held_out[seq[:-1]]]
        if len(train) == 0:
            emptied.append(user)
            continue
        users.append(user)
        train_items.append(np.unique(train))
        test_items.append(int(seq[-1]))
        validation_items.append(int(train[-1]))
    if skipped:
        warnings.warn(
            f"{dataset.root / 'interactions.csv'}: {len(skipped)} user(s) with fewer than 2 interactions"
            f"{' besides their test item and cold-start films' if validating else ''} skipped (nothing to "
            f"train on and hold out), e.g. user "
            f"{dataset.user_ids[skipped[0]]!r}",
            stacklevel=2,
        )
    if emptied:
        warnings.warn(
            f"{dataset.root / 'interactions.csv'}: {len(emptied)} user(s) skipped: all their training "
            f"interactions are with cold-start items, e.g. user {dataset.user_ids[emptied[0]]!r}",
            stacklevel=2,
        )
    skipped += emptied
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
        held_out_items=held_out,
        validation_item=np.asarray(validation_items, dtype=np.int64),
    )


def _cut_time(times: np.ndarray, quantile: float) -> int:
    """The timestamp at ``quantile`` of ``times`` (one of them: the lower of two neighbours)."""
    return int(np.quantile(np.asarray(times), quantile, method="lower"))


def time_cut(dataset: Dataset, quantile: float, cold_fraction: float = 0.0, seed: int = 0, evaluate_on: str = "test") -> LeaveLastOutSplit:
    """The global time split: the cut is the timestamp at ``quantile`` of all interactions;
    each user's interactions before it train, its first interaction at or after it (by
    timestamp, ties in file order) is its test item, and the rest after the cut is dropped (it
    has not happened yet). Every user with an interaction before the cut (after the cold-start
    films are removed) is a device and contributes; one with nothing after the cut has no test
    item (:data:`NO_TEST_ITEM`) and is not ranked. Films nobody chose before the cut are new:
    they join ``held_out_items`` with the ``cold-start-items`` share (unknown at release time,
    never negatives in training), so only content ranks them.

    ``evaluate_on = "validation"`` is the same split one step earlier: everything at or after
    the test cut is dropped, and so is every interaction with a held-out film; the same rule then
    cuts what is left at its own ``quantile`` (the films first chosen between the two cuts are
    its new films; no pseudo-cold share is drawn, unlike leave-last-out's validation). Settings
    chosen there have seen no test item and no interaction after the test cut."""
    if evaluate_on not in EVALUATE_ON:
        raise ValueError(f"evaluate-on must be one of {', '.join(EVALUATE_ON)}, got {evaluate_on!r}")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"time-cut must be in (0, 1) (0: leave-last-out), got {quantile}")
    held_out = held_out_items(dataset, cold_fraction, seed)
    is_held_out = np.zeros(dataset.num_items, dtype=bool)
    is_held_out[held_out] = True
    times = np.asarray(dataset.inter_time)
    kept = np.ones(dataset.num_interactions, dtype=bool)
    cut = _cut_time(times, quantile)
    if evaluate_on == "validation":
        kept = (times < cut) & ~is_held_out[dataset.inter_item]
        if not kept.any():
            raise ValueError(f"{dataset.root / 'interactions.csv'}: no interaction before the time cut to validate on")
        cut = _cut_time(times[kept], quantile)
    # A film nobody had chosen before the cut does not exist yet at release time: held out of
    # the releases' known items and of the negatives, as the cold-start share is.
    seen_before = np.zeros(dataset.num_items, dtype=bool)
    seen_before[dataset.inter_item[kept & (times < cut)]] = True
    is_held_out |= ~seen_before
    held_out = np.flatnonzero(is_held_out).astype(np.int64)
    order = np.lexsort((np.arange(dataset.num_interactions), times, dataset.inter_user))
    order = order[kept[order]]
    users_sorted, items_sorted, times_sorted = dataset.inter_user[order], dataset.inter_item[order], times[order]
    boundaries = np.flatnonzero(np.diff(users_sorted)) + 1
    starts = np.concatenate([[0], boundaries]) if len(order) else np.zeros(0, dtype=np.int64)
    ends = np.concatenate([boundaries, [len(order)]]) if len(order) else np.zeros(0, dtype=np.int64)
    users, train_items, test_items, validation_items, skipped = [], [], [], [], []
    for start, end in zip(starts, ends):
        user = int(users_sorted[start])
        before = times_sorted[start:end] < cut
        train = items_sorted[start:end][before]
        train = train[~is_held_out[train]]
        after = items_sorted[start:end][~before]
        if len(train) == 0:
            skipped.append(user)
            continue
        users.append(user)
        train_items.append(np.unique(train))
        test_items.append(int(after[0]) if len(after) else NO_TEST_ITEM)
        validation_items.append(int(train[-1]))
    if not any(item != NO_TEST_ITEM for item in test_items):
        raise ValueError(f"{dataset.root / 'interactions.csv'}: no user has interactions on both sides of the time cut {quantile:g}")
    seen = np.zeros(dataset.num_items, dtype=bool)
    for items in train_items:
        seen[items] = True
    return LeaveLastOutSplit(
        users=users, train_items=train_items, test_item=np.asarray(test_items, dtype=np.int64), skipped_users=skipped,
        cold_items=np.flatnonzero(~seen), num_items=dataset.num_items, held_out_items=held_out,
        validation_item=np.asarray(validation_items, dtype=np.int64),
    )


def split_for(dataset: Dataset, config: dict[str, Any]) -> LeaveLastOutSplit:
    """The split a run config asks for: one place, so server, clients and baselines agree
    (``time-cut`` above 0: the global time split; else leave-last-out)."""
    cold, seed, on = float(config.get("cold-start-items", 0.0)), int(config.get("seed", 0)), str(config.get("evaluate-on", "test"))
    quantile = float(config.get("time-cut", 0.0))
    if quantile > 0:
        return time_cut(dataset, quantile, cold, seed, on)
    return leave_last_out(dataset, cold, seed, on)
