"""The audit's accountants: a claimed epsilon recomputed from its recorded history by a fresh
Opacus accountant, and cross-checked by three (Opacus RDP, an upper bound; Opacus PRV and
Google's ``dp-accounting`` PLD, both tight), for the devices' and the server's claims alike."""

from __future__ import annotations

import warnings
from functools import lru_cache

from server.audit.report import AuditReport
from shared.privacy.accounting import dp_accounting_epsilon, make_accountant, merged, opacus_epsilon, trivial_epsilon

PRV_EPS_ERROR = 0.01
REL_TOL = 1e-6


def tight_tolerance(epsilon: float) -> float:
    """How far two tight accountants (PRV, PLD) may differ: their discretisation errors."""
    return 0.01 * max(1.0, epsilon) + 0.02


TIGHT_ACCOUNTANT_LIMIT = 100.0


@lru_cache(maxsize=4096)
def three_accountants(history: tuple, delta: float) -> tuple[float, float, float] | None:
    """(Opacus RDP, Opacus PRV, dp-accounting PLD) epsilon; cached: clients share histories.

    None when RDP is above ``TIGHT_ACCOUNTANT_LIMIT``: the tight accountants' grids grow with
    epsilon (PRV asks for tens of GB), and such a guarantee is void anyway.
    """
    history_list = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rdp = recompute(history_list, delta, "rdp")
        if not rdp <= TIGHT_ACCOUNTANT_LIMIT:
            return None
        prv = float(make_accountant("prv", merged(history_list)).get_epsilon(delta, eps_error=PRV_EPS_ERROR))
        pld = dp_accounting_epsilon(history_list, delta)
    return rdp, prv, pld


def recompute(history, delta: float, accountant: str) -> float:
    """A claim recomputed by a fresh Opacus accountant (not the clients' cached fast path)."""
    history = merged([tuple(h) for h in history])
    trivial = trivial_epsilon(history)
    if trivial is not None:
        return trivial
    return opacus_epsilon(tuple(history), float(delta), accountant)


def cross_check(report: AuditReport, who: str, history, claimed: float, delta: float, gaps: list[float]) -> None:
    """RDP >= PRV ~ PLD, and the claim is not below any of them."""
    epsilons = three_accountants(tuple(tuple(h) for h in merged(history)), delta)
    if epsilons is None:
        report.flags.append(f"{who}: epsilon above {TIGHT_ACCOUNTANT_LIMIT:g}: no meaningful guarantee; tight accountants skipped")
        return
    rdp, prv, pld = epsilons
    tolerance = tight_tolerance(pld)
    gaps.append(abs(prv - pld))
    if abs(prv - pld) > tolerance:
        report.fail("epsilon-recomputed", f"{who}: accountants disagree: PRV {prv:.4f}, dp-accounting PLD {pld:.4f}")
    if min(prv, pld) > rdp * (1 + REL_TOL) + tolerance:
        report.fail("epsilon-recomputed", f"{who}: tight accountants ({prv:.4f}, {pld:.4f}) exceed the RDP upper bound {rdp:.4f}")
    if claimed < min(prv, pld) - tolerance:
        report.fail("epsilon-recomputed", f"{who}: claims {claimed:.4f}, below PRV {prv:.4f} / PLD {pld:.4f}")
