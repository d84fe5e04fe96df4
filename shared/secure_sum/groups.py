"""Secure sums over groups of devices, combined by a trimmed mean: how far a few devices that lie
about their input can move a release, bounded by the aggregation's design.

Under secure aggregation the server never sees a contribution, so it cannot clip one; a device
that masks ``2^29`` instead of its norm-1 statistic moves the one sum by that much (the
plausibility check, :mod:`shared.secure_sum.plausible`, stops only what no honest inputs could
give). Python has no maintained range-proof library, so the bound comes from how the sums are
combined instead: the roster is cut into ``groups`` arcs of its random order (drawn from the
roster's own seed in a deployment, written by the operator with the roster; in a simulation
the run id, which the SuperLink draws, seeds it, as it seeds the neighbour graph), each arc is its own
secure sum with its own noise, and the release is ``groups`` times the coordinate-wise mean of
the group sums left after dropping the ``trim`` largest and ``trim`` smallest in each
coordinate. While at most ``trim`` groups hold a lying device, every coordinate of the result
lies between the smallest and the largest of the honest groups' sums times ``groups``: whatever
the liars send, they move it no further than the honest groups' own spread.

The price: each group's sum must carry on its own the noise a user-level guarantee needs (a user
is in one group: by parallel composition the release of all the group sums spends what one
group's does), so the noise of the combined total is about ``sqrt(groups)`` times the single
sum's (:func:`trimmed_total_std`), and a group needs enough devices for its own minimum,
colluders and neighbour graph (:func:`group_plans`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np


def check_groups(groups: int, trim: int) -> None:
    """``groups`` at least 1 and ``trim`` leaving at least one group sum per coordinate."""
    if groups < 1:
        raise ValueError(f"secure-groups must be at least 1, not {groups}")
    if trim < 0 or 2 * trim >= groups:
        raise ValueError(f"secure-trim {trim}: it must be at least 0 and leave a group sum, below half of secure-groups {groups}")


COMBINES = ("median", "sum")  # ``secure-combine``: the trim each is (median: all but the middle; sum: none)


def combine_trim(combine: str, groups: int) -> int:
    """The trim :func:`trimmed_total` uses for ``secure-combine`` over ``groups`` sums: ``median``
    keeps the middle one (two, averaged, for an even count), ``sum`` keeps every one."""
    if combine not in COMBINES:
        raise ValueError(f"secure-combine {combine!r}: choose one of {', '.join(COMBINES)}")
    return (groups - 1) // 2 if combine == "median" else 0


def group_rosters(keys: Sequence[str], seed: str, groups: int) -> list[frozenset[str]]:
    """The roster's identity ``keys`` cut into ``groups``: ordered by SHA-256 of the graph's
    ``seed`` (the roster's own random seed; a simulation's, the run id) and each key, then cut
    into arcs (:func:`split_into_groups`). Every device and the server compute it alike from the
    roster, so the server cannot choose who shares a group with whom, nor place a target among
    its colluders."""
    order = sorted(set(keys), key=lambda key: hashlib.sha256(f"fedmmrec group|{seed}|{key}".encode()).digest())
    return [frozenset(arc) for arc in split_into_groups(order, groups)]


def split_into_groups(order: Sequence[int], groups: int) -> list[list[int]]:
    """``order`` (devices in the roster's random order) cut into ``groups`` consecutive arcs whose
    sizes differ by at most one."""
    order = list(order)
    if groups > len(order):
        raise ValueError(f"{groups} groups of {len(order)} devices: a group would be empty")
    size, extra = divmod(len(order), groups)
    out, start = [], 0
    for g in range(groups):
        end = start + size + (1 if g < extra else 0)
        out.append(order[start:end])
        start = end
    return out


def trimmed_total(sums: np.ndarray, trim: int) -> np.ndarray:
    """The release from the group sums ``sums`` [groups, d]: ``groups`` times the mean, in each
    coordinate, of the sums left after dropping the ``trim`` largest and ``trim`` smallest. One
    group (``trim`` 0) is the plain sum."""
    sums = np.asarray(sums, dtype=np.float64)
    groups = sums.shape[0]
    check_groups(groups, trim)
    if trim == 0:
        return sums.sum(axis=0)
    kept = np.sort(sums, axis=0)[trim : groups - trim]
    return groups * kept.mean(axis=0)


@lru_cache(maxsize=32)
def trimmed_total_std(groups: int, trim: int, draws: int = 200_000) -> float:
    """Std of :func:`trimmed_total` over ``groups`` sums of independent unit-variance Gaussian
    noise (a fixed-seed Monte Carlo, within about 0.3%): the noise std the fit assumes is the
    group sum's std times this. ``sqrt(groups)`` with no trim; about ``1.25 sqrt(groups)`` for
    the median of many."""
    check_groups(groups, trim)
    if trim == 0:
        return math.sqrt(groups)
    noise = np.random.default_rng(0).standard_normal((groups, draws))
    return float(np.std(trimmed_total(noise, trim)))


def group_colluders(devices: int, colluders: int, size: int, groups: int, failure: float) -> int:
    """The colluders a group of ``size`` must tolerate: the fewest ``c`` such that, with the run's
    ``colluders`` of ``devices`` placed among the groups by the roster's random order (fixed
    before anyone saw it), some group holds more than ``c`` with probability at most ``failure``
    (a hypergeometric tail, union bound over the ``groups``). One group: all of them. That
    failure is one more term beside the graph's own (``make_plan`` allows delta / 10 for each):
    like the graph's, it is not added to the delta a run reports."""
    most = min(colluders, size)
    if groups == 1:
        return most
    total = math.comb(devices, size)
    pmf = [math.comb(colluders, j) * math.comb(devices - colluders, size - j) for j in range(most + 1)]
    tail = 0
    for c in range(most, -1, -1):  # tail: the ways a group holds more than c
        if groups * (tail + pmf[c]) / total > failure:
            return c
        tail += pmf[c]
    return 0
