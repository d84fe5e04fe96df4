"""Epsilon lower bounds from one training run (Steinke, Nasr and Jagielski, NeurIPS 2023).

``m`` canaries are each included independently with probability 1/2. After training an auditor
makes ``r`` guesses (included or not) and gets ``v`` right. If the training run is
(epsilon, delta)-DP, then the number of correct guesses is stochastically dominated by
Binomial(r, e^eps / (1 + e^eps)), up to a delta term (their Theorem 3.3 / Proposition 5.7).
The lower bound is the largest epsilon that this observation rejects at the given
confidence.

Guess counts are fixed in advance (fractions of ``m`` guessed on each side) and the confidence
is split between them (Bonferroni), so picking the best of them afterwards stays valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

GUESS_FRACTIONS = (0.05, 0.1, 0.25, 0.5)


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least ``v`` of ``r`` guesses right] under an (epsilon, delta)-DP run."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(stats.binom.sf(v - 1, r, q))
    # alpha = max over i of P[v - i <= Binomial(r, q) < v] / i
    alpha = 0.0
    if v > 0:
        window = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))
        alpha = float(np.max(window / np.arange(1, v + 1)))
    return min(1.0, beta + alpha * delta * 2 * m)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, significance: float = 0.05) -> float:
    """The largest epsilon rejected at ``significance`` (0 when none is)."""
    if r == 0 or p_value(m, r, v, 0.0, delta) >= significance:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < significance:
        low, high = high, high * 2
        if high > 1e3:
            return low
    for _ in range(40):
        mid = (low + high) / 2
        if p_value(m, r, v, mid, delta) < significance:
            low = mid
        else:
            high = mid
    return low


@dataclass(frozen=True)
class OneRunAudit:
    epsilon_lower_bound: float
    canaries: int
    guesses: int
    correct: int
    confidence: float


def _guesses(scores: np.ndarray, included: np.ndarray) -> list[tuple[int, int]]:
    """(guesses, correct) for each pre-set k: the top-k scores guessed included, the bottom-k
    excluded."""
    m = len(scores)
    order = np.argsort(-np.asarray(scores), kind="stable")
    included = np.asarray(included, dtype=bool)
    out = []
    for fraction in GUESS_FRACTIONS:
        k = int(fraction * m)
        if k:
            out.append((2 * k, int(included[order[:k]].sum() + (~included[order[-k:]]).sum())))
    return out


def one_run_audit(scores: np.ndarray, included: np.ndarray, delta: float, confidence: float = 0.95) -> OneRunAudit:
    """Guess the top-k scores included and the bottom-k excluded, for each pre-set k."""
    m = len(scores)
    significance = (1.0 - confidence) / len(GUESS_FRACTIONS)
    best = OneRunAudit(0.0, m, 0, 0, confidence)
    for guesses, correct in _guesses(scores, included):
        bound = epsilon_lower_bound(m, guesses, correct, delta, significance)
        if bound > best.epsilon_lower_bound or best.guesses == 0:
            best = OneRunAudit(bound, m, guesses, correct, confidence)
    return best


def one_run_rejects(scores: np.ndarray, included: np.ndarray, epsilon: float, delta: float, confidence: float = 0.95) -> bool:
    """Whether :func:`one_run_audit`'s bound exceeds ``epsilon``: whether some guess count's
    observation rejects ``epsilon`` at its share of the confidence. One p-value per guess
    count, where the bound itself is a search of some 45 (the p-value grows with epsilon,
    so the bound exceeds ``epsilon`` exactly when ``epsilon`` is rejected)."""
    significance = (1.0 - confidence) / len(GUESS_FRACTIONS)
    return any(p_value(len(scores), guesses, correct, epsilon, delta) < significance for guesses, correct in _guesses(scores, included))
