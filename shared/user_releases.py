"""The releases of ``privacy = user`` and how the budget is split among them: read by the server,
the devices (which recompute the secure plan themselves) and the audit."""

from __future__ import annotations

from collections.abc import Sequence

from shared.config import RunConfig
from shared.secure_sum.plan import SecurePlan, make_plan


def planned_releases(config: RunConfig) -> list[str]:
    """The releases a run makes, in order (the selection release only with a budget share)."""
    return ["popularity", "cooccurrence"] + (["selection"] if float(config.privacy.selection_budget_share) > 0 else [])


def check_release_settings(config: RunConfig) -> None:
    """Refuse a budget the releases cannot be planned under, saying the fix: checked by the
    server's mechanism and again by every device before it plans its noise share (a device
    does not take the server's word for it)."""
    p = config.privacy
    if not (p.user_epsilon > 0):  # NaN fails here too
        raise ValueError("user-epsilon must be positive (inf: no noise, NOT PRIVATE)")
    if not 0.0 < p.delta < 1.0:
        raise ValueError("delta must be in (0, 1)")
    if not 0.0 < p.popularity_budget_share < 1.0 or not 0.0 <= p.selection_budget_share < 1.0 or not (
        p.popularity_budget_share + p.selection_budget_share < 1.0
    ):
        raise ValueError(
            "popularity-budget-share must be in (0, 1), selection-budget-share in [0, 1), and their sum below 1 "
            "(the rest is the co-occurrence release's)"
        )


def check_secure_settings(config: RunConfig) -> None:
    """The secure sum's own settings (``user-noise = distributed``)."""
    p = config.privacy
    if p.secure_neighbours < 2 or not 0.0 <= p.secure_dropout < 1.0 or not 0.0 <= p.secure_colluders < 1.0:
        raise ValueError("secure-neighbours must be at least 2, secure-dropout and secure-colluders fractions in [0, 1)")


def budget_shares(config: RunConfig) -> list[float]:
    """Each release's share of the budget (of mu^2 in Gaussian DP), in release order."""
    popularity, selection = float(config.privacy.popularity_budget_share), float(config.privacy.selection_budget_share)
    return [popularity, 1.0 - popularity - selection] + ([selection] if selection > 0 else [])


def secure_plan(config: RunConfig, devices: int, dimensions: Sequence[int]) -> SecurePlan:
    """The secure-aggregation plan for ``devices`` devices and the releases' ``dimensions``."""
    p = config.privacy
    return make_plan(
        devices, planned_releases(config), list(dimensions), budget_shares(config), float(p.user_epsilon), float(p.delta),
        int(p.secure_neighbours), float(p.secure_dropout), float(p.secure_colluders),
    )
