"""Privacy accounting that survives rounds, restarts and serialisation.

Flower's Opacus example builds a new PrivacyEngine every round, so the epsilon it reports is
one round's, not the total. Here the accountant's *history* (a list of
``(noise_multiplier, sample_rate, steps)``) is the state: it is restored into a fresh
accountant before training, extended by Opacus during training, and stored again as plain
JSON (never pickle) in the node's state. Epsilon is recomputed from the whole history, so it
can only grow.
"""

from __future__ import annotations

import json
from functools import lru_cache

History = list[tuple[float, float, int]]


def history_to_json(history: History) -> str:
    return json.dumps([[float(s), float(q), int(n)] for s, q, n in history])


def history_from_json(text: str) -> History:
    """Parse a stored history; a malformed one raises instead of silently resetting to zero."""
    if not text:
        return []
    try:
        raw = json.loads(text)
        return [(float(s), float(q), int(n)) for s, q, n in raw]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"corrupt accountant history {text[:80]!r}: {exc}") from exc


def total_steps(history: History) -> int:
    """Number of DP-SGD steps in a history (``len(accountant)`` is not a step count)."""
    return int(sum(n for _, _, n in history))


def merged(history: History) -> History:
    """Consecutive entries with the same noise and rate joined into one (the same mechanism:
    composition only adds steps); a client's rounds usually collapse to one entry."""
    out: History = []
    for sigma, rate, steps in history:
        if out and out[-1][0] == sigma and out[-1][1] == rate:
            out[-1] = (sigma, rate, out[-1][2] + steps)
        else:
            out.append((sigma, rate, steps))
    return out


def trivial_epsilon(history: History) -> float | None:
    """0 for a history without steps, inf when a step had no noise, else None (compute it)."""
    if not history:
        return 0.0
    if any(s <= 0.0 for s, _, n in history if n > 0):
        return float("inf")
    return None


def make_accountant(name: str, history: History):
    """An Opacus accountant (``rdp`` or ``prv``) restored to ``history``."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    accountants = {"rdp": RDPAccountant, "prv": PRVAccountant}
    if name not in accountants:
        raise ValueError(f"unknown accountant {name!r}; choose one of {', '.join(accountants)}")
    accountant = accountants[name]()
    accountant.history = list(history)
    return accountant


def epsilon_of(history: History, delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of a history; 0 for no steps, inf when a step had no noise."""
    trivial = trivial_epsilon(history)
    if trivial is not None:
        return trivial
    if accountant == "rdp":
        return _rdp_epsilon(tuple(merged(history)), float(delta))
    return opacus_epsilon(tuple(merged(history)), float(delta), accountant)


@lru_cache(maxsize=8192)
def opacus_epsilon(history: tuple, delta: float, accountant: str) -> float:
    """Epsilon from a fresh Opacus accountant restored to ``history`` (the audit's path)."""
    return float(make_accountant(accountant, list(history)).get_epsilon(delta))


@lru_cache(maxsize=1024)
def _rdp_per_step(rate: float, sigma: float):
    """RDP of one sampled Gaussian step at Opacus' default orders (about 0.2 s to compute)."""
    import numpy as np
    from opacus.accountants.analysis import rdp as rdp_analysis
    from opacus.accountants.rdp import RDPAccountant

    return np.asarray(rdp_analysis.compute_rdp(q=rate, noise_multiplier=sigma, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS))


def _rdp_epsilon(history: tuple, delta: float) -> float:
    """Opacus' RDP epsilon, computed the way its accountant does (RDP adds up over steps), but
    with the per-step RDP cached by (rate, noise): a client's rounds repeat them, and the full
    computation was half of a simulated client's time."""
    from opacus.accountants.analysis import rdp as rdp_analysis
    from opacus.accountants.rdp import RDPAccountant

    rdp = sum(steps * _rdp_per_step(rate, sigma) for sigma, rate, steps in history)
    epsilon, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(epsilon)



def dp_accounting_epsilon(history: History, delta: float) -> float:
    """Epsilon of a history by Google's ``dp-accounting`` PLD accountant: written independently
    of Opacus, for the audit's cross-check. Same neighbouring relation (add or remove one
    record) and the same Poisson-subsampled Gaussian steps; tight like PRV, so the two agree
    within their discretisation error and both lie below RDP."""
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    history = merged(history)
    trivial = trivial_epsilon(history)
    if trivial is not None:
        return trivial
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
    for sigma, rate, steps in history:
        event = dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(sigma))
        accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return float(accountant.get_epsilon(delta))


def releases_and_rounds_epsilon(release_stds: list[float], noise_multiplier: float, rate: float, rounds: int, delta: float) -> float:
    """User-level epsilon at ``delta`` of Gaussian releases of sensitivity 1 (noise std
    ``release_stds``) followed by ``rounds`` DP-FedAvg rounds (Poisson ``rate``, clip-relative
    ``noise_multiplier``): a release is a round at rate 1, and dp-accounting's PLD accountant
    composes them all (tight for both; RDP would overstate the releases)."""
    history = [(float(std), 1.0, 1) for std in release_stds] + ([(float(noise_multiplier), float(rate), int(rounds))] if rounds else [])
    return dp_accounting_epsilon(history, delta)


# --- User-level releases: Gaussian mechanisms of sensitivity 1, no sampling -----------------


def _normal_cdf(x: float) -> float:
    import math

    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def gaussian_delta(mu: float, epsilon: float) -> float:
    """delta(epsilon) of a mu-GDP mechanism (Dong, Roth and Su 2019, Corollary 2.13); exact for
    a Gaussian mechanism of sensitivity 1 and noise std 1/mu (Balle and Wang 2018)."""
    import math

    if mu <= 0:
        return 0.0
    return _normal_cdf(-epsilon / mu + mu / 2) - math.exp(epsilon) * _normal_cdf(-epsilon / mu - mu / 2)


def composed_mu(noise_stds: list[float]) -> float:
    """Gaussian releases of sensitivity 1 compose to one with ``mu^2 = sum 1/std^2``; inf when a
    release had no noise."""
    if any(std <= 0 for std in noise_stds):
        return float("inf")
    return float(sum(1.0 / std**2 for std in noise_stds) ** 0.5)


def gaussian_epsilon(noise_stds: list[float], delta: float) -> float:
    """Exact epsilon at ``delta`` of composed Gaussian releases (0 for none, inf without noise)."""
    if not noise_stds:
        return 0.0
    mu = composed_mu(noise_stds)
    if mu == float("inf"):
        return float("inf")
    lo, hi = 0.0, 1.0
    while gaussian_delta(mu, hi) > delta:
        hi *= 2.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gaussian_delta(mu, mid) > delta else (lo, mid)
    return hi


def mu_for_epsilon(epsilon: float, delta: float) -> float:
    """The largest mu whose Gaussian mechanism is (epsilon, delta)-DP: the budget in mu-GDP."""
    lo, hi = 0.0, 1.0
    while gaussian_delta(hi, epsilon) <= delta:
        hi *= 2.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gaussian_delta(mid, epsilon) <= delta else (lo, mid)
    return lo


def split_budget(epsilon: float, delta: float, shares: list[float]) -> list[float]:
    """Noise stds of Gaussian releases (sensitivity 1) that spend ``shares`` of the mu^2 budget
    and together are (epsilon, delta)-DP; all 0 (no noise) when epsilon is inf."""
    if epsilon == float("inf"):
        return [0.0 for _ in shares]
    mu = mu_for_epsilon(epsilon, delta)
    total = sum(shares)
    return [1.0 / (mu * (share / total) ** 0.5) for share in shares]


def dp_accounting_gaussian_epsilon(noise_stds: list[float], delta: float) -> float:
    """The same composition by ``dp-accounting``'s PLD accountant (independent of the closed
    form above; the audit cross-checks the two)."""
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    if not noise_stds:
        return 0.0
    if any(std <= 0 for std in noise_stds):
        return float("inf")
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    for std in noise_stds:
        accountant.compose(dp_accounting.GaussianDpEvent(std))
    return float(accountant.get_epsilon(delta))
