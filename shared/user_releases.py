"""The releases of ``privacy = user`` and how the budget is split among them: read by the server,
the devices (which recompute the secure plan themselves) and the audit."""

from __future__ import annotations

from collections.abc import Sequence

from shared.config import RunConfig
from shared.secure_sum.plan import SecurePlan, make_plan


def planned_releases(config: RunConfig) -> list[str]:
    """The releases a run makes, in order (the selection release only with a budget share)."""
    return ["popularity", "cooccurrence"] + (["selection"] if float(config.privacy.selection_budget_share) > 0 else [])


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
