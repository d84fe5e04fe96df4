"""The releases of ``privacy = user``, in order, and how the budget is split among them: the one
list the server's run, the devices (which recompute the secure plan themselves), the audit and
the studies iterate. A new statistic is one file (a :class:`~shared.releases.base.Release`) and
one entry in :data:`RELEASES`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from shared.releases.base import DeviceView, Fit, ModelSettings, Release, setting
from shared.releases.cooccurrence import Cooccurrence
from shared.releases.popularity import TOP_ITEMS, Popularity
from shared.releases.selection import Selection
from shared.secure_sum.groups import combine_trim, split_into_groups
from shared.secure_sum.plan import SecurePlan, make_group_plan, make_plan

RELEASES: tuple[Release, ...] = (Popularity(), Cooccurrence(), Selection())
SHARE_KEYS = tuple(r.share_key for r in RELEASES if r.share_key)  # the configured shares; co-occurrence gets the rest


def _shares(config: Mapping) -> dict[str, float]:
    """The configured shares; a key a ledger's config lacks is the default, except the selection
    release's: a config from before it existed made none (share 0)."""
    old = {"selection-budget-share": 0.0}
    return {key: float(setting(config, key, old.get(key))) for key in SHARE_KEYS}


def planned_releases(config: Mapping) -> list[Release]:
    """The releases a run makes, in order: each with a share of the budget (the selection
    release only with ``selection-budget-share > 0``). ``config``: a RunConfig or a flat
    mapping (a ledger header's)."""
    shares = _shares(config)
    return [release for release in RELEASES if release.budget_share(shares) > 0]


def release_named(name: str) -> Release:
    for release in RELEASES:
        if release.name == name:
            return release
    raise ValueError(f"unknown release {name!r}; choose one of {', '.join(r.name for r in RELEASES)}")


def budget_shares(config: Mapping) -> list[float]:
    """Each planned release's share of the budget (of mu^2 in Gaussian DP), in release order."""
    shares = _shares(config)
    return [release.budget_share(shares) for release in planned_releases(config)]


def check_release_settings(config) -> None:
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


def check_secure_settings(config) -> None:
    """The secure sum's own settings (``user-noise = distributed``)."""
    p = config.privacy
    if p.secure_neighbours < 2 or not 0.0 <= p.secure_dropout < 1.0 or not 0.0 <= p.secure_colluders < 1.0:
        raise ValueError("secure-neighbours must be at least 2, secure-dropout and secure-colluders fractions in [0, 1)")
    if p.secure_groups < 1:
        raise ValueError(f"secure-groups must be at least 1, not {p.secure_groups}")


def check_combine(config) -> None:
    """``secure-combine`` (the server's post-processing of the group sums: no device reads it)."""
    p = config.privacy
    combine_trim(p.secure_combine, p.secure_groups)
    if p.secure_groups == 2 and p.secure_combine == "median":
        raise ValueError("secure-combine median over 2 groups is their mean, which one liar moves at will: use 3 groups or more, or sum")


def secure_plan(config: Mapping, devices: int, dimensions: Sequence[int]) -> SecurePlan:
    """The secure-aggregation plan for ``devices`` devices and the releases' ``dimensions``
    (``config``: a RunConfig, or a ledger header's flat config, as the audit recomputes it;
    ``dimensions`` of the first releases only: the plan of those, as for a run that stopped)."""
    def get(key: str) -> float:
        return float(setting(config, key))

    return make_plan(
        devices, [r.name for r in planned_releases(config)][: len(dimensions)], list(dimensions),
        budget_shares(config)[: len(dimensions)], get("user-epsilon"),
        get("delta"), int(get("secure-neighbours")), get("secure-dropout"), get("secure-colluders"),
    )


def group_plan(config: Mapping, population: int, size: int, dimensions: Sequence[int]) -> SecurePlan:
    """The plan of one group of ``size`` devices when the roster's ``population`` is cut into
    ``secure-groups`` (:mod:`shared.secure_sum.groups`). A user is in one group, so each group's
    sum carries on its own the noise the budget needs (parallel composition). The group tolerates
    the colluders some group may hold (:func:`~shared.secure_sum.groups.group_colluders`: all of
    the run's ``ceil(secure-colluders population)`` with one group; with more, a hypergeometric
    tail failing with probability at most delta / 10 beside the graph's own delta / 10, not added
    to the delta a run reports), and gets the fewest neighbours, from ``secure-neighbours`` up,
    whose graph holds at that. With one group it is :func:`secure_plan`. Server, devices and
    audit all call this."""
    groups = int(setting(config, "secure-groups", 1))
    if groups == 1:
        if size != population:
            raise ValueError(f"one group of {size} devices in a population of {population}")
        return secure_plan(config, population, dimensions)
    def get(key: str) -> float:
        return float(setting(config, key))

    return make_group_plan(
        population, size, groups, [r.name for r in planned_releases(config)][: len(dimensions)], dimensions,
        budget_shares(config)[: len(dimensions)], get("user-epsilon"), get("delta"), int(get("secure-neighbours")),
        get("secure-dropout"), get("secure-colluders"),
    )


def group_sizes(population: int, groups: int) -> list[int]:
    """Each group's size when ``population`` devices are cut into ``groups`` arcs."""
    return [len(arc) for arc in split_into_groups(range(population), groups)]


def refit(recorded: Mapping[str, np.ndarray], noise_std: Mapping[str, float], catalog: Mapping[str, np.ndarray], config: Mapping) -> Fit:
    """The served model's fit from recorded releases (``releases.npz``), the std each was fitted
    under and the public catalog (``catalog.npz``): the server's own post-processing, run again
    (the audit's ``release-model``). A planned release missing from ``recorded`` is a KeyError."""
    fit = Fit(np.asarray(catalog["content"], dtype=np.float64), np.asarray(catalog["known"], dtype=bool), ModelSettings.of(config))
    for release in planned_releases(config):
        fit = release.post_process(fit, np.asarray(recorded[release.name], dtype=np.float64), float(noise_std.get(release.name, 0.0)))
    return fit


__all__ = [
    "RELEASES", "TOP_ITEMS", "DeviceView", "Fit", "ModelSettings", "Release", "budget_shares", "check_release_settings",
    "check_combine", "check_secure_settings", "group_plan", "group_sizes", "planned_releases", "refit", "release_named", "secure_plan",
]
