"""``secure-groups`` above 1: the server's side of a release made of one secure sum per group.

The roster is cut into groups by its own seed (:func:`shared.secure_sum.groups.group_rosters`),
which every device recomputes: a device plans, checks participants and graph, and counts
survivor-set signatures within its group only (:mod:`shared.secure_sum.device`), so each group
is a whole secure sum of its own (:class:`~shared.secure_sum.server.SecureAggregation`) with its
own plan (:func:`shared.releases.group_plan`), graph, minimum, consistency round, sketch and
evidence (``<release>@group-<g>.*`` in ``secure-sum.npz``). One key stage serves them all: the
server learns each device's identity key there, and with it the device's group.

The release is :func:`~shared.secure_sum.groups.trimmed_total` of the group sums (in units of the
clip: the groups' scales may differ by one device's worth): their coordinate-wise ``median``
times the number of groups, or their ``sum`` (cohorts). A user is in one group, so the release
spends what the costliest group's sum does (parallel composition); the ledger claims the largest
group epsilon, and the audit recomputes each group and the combination.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord

from shared.config import RunConfig
from shared.releases import group_plan
from shared.secure_sum.groups import combine_trim, group_rosters, trimmed_total, trimmed_total_std
from shared.secure_sum import identity
from shared.secure_sum.evidence import GROUP_OF_KEY
from shared.secure_sum.server import SecureAggregation, SecureAggregationAborted, SecureRelease, key_evidence

if TYPE_CHECKING:
    from flwr.serverapp import Grid


class PartlyUnmasked(SecureAggregationAborted):
    """A group failed at its unmasking after others were unmasked: nothing is released, but the
    server holds those groups' noisy sums (``results``), and the ledger records them."""

    def __init__(self, message: str, results: list[SecureRelease]) -> None:
        super().__init__(message)
        self.results = results


class GroupedAggregation:
    """One run's secure releases as ``secure-groups`` secure sums over the roster's groups."""

    def __init__(self, grid: "Grid", nodes: list[int], config: RunConfig, dimensions: list[int], log=print) -> None:
        self.grid, self.nodes, self.config, self.dimensions, self.log = grid, list(nodes), config, list(dimensions), log
        self.count = int(config.privacy.secure_groups)
        self.trim = combine_trim(config.privacy.secure_combine, self.count)
        self.keys = SecureAggregation(grid, nodes, config, dimensions, log, plan=self._any_plan())
        self.groups: list[SecureAggregation] = []

    def _any_plan(self):
        """A group's plan, for the key stage's key count (every group plans the same releases)."""
        size = len(self.nodes) // self.count
        return group_plan(self.config, len(self.nodes), size, self.dimensions)

    def setup(self, server_round: int) -> None:
        """One key stage for every device, then each group's participants, graph and shares."""
        self.keys.advertise(server_round, required=False)
        roster = self.keys.roster()
        if len(roster) != len(self.nodes):
            raise SecureAggregationAborted(
                f"secure aggregation aborted at share distribution: the roster lists {len(roster)} devices, the run has "
                f"{len(self.nodes)}; every device plans for its roster's population and would refuse; nothing was released"
            )
        seed = roster.graph_seed(self.keys.run)
        for g, arc in enumerate(group_rosters(sorted(roster.keys), seed, self.count)):
            plan = group_plan(self.config, len(roster), len(arc), self.dimensions)
            group = SecureAggregation(self.grid, self.nodes, self.config, self.dimensions, self.log, plan=plan, group=g)
            members = identity.Roster(arc, roster.seed)
            group.adopt(self.keys, members)
            group.distribute(server_round, members)
            self.groups.append(group)

    @property
    def participants(self) -> list[int]:
        return sorted(i for group in self.groups for i in group.participants)

    def release(self, name: str, arrays: ArrayRecord, server_round: int) -> list[SecureRelease]:
        """Stages 3 and 4 in every group, then the unmasking in each: a group that falls below
        its minimum before the unmasking aborts the release with nothing unmasked. A group that
        fails at its own unmasking (too few shares returned, an implausible sum) after others
        were unmasked aborts it too, and :class:`PartlyUnmasked` carries what the server learned."""
        collected = [group.collect(name, arrays, server_round) for group in self.groups]
        results: list[SecureRelease] = []
        for group, one in zip(self.groups, collected):
            try:
                results.append(group.unmask(one))
            except SecureAggregationAborted as exc:
                if results:
                    raise PartlyUnmasked(f"{exc}; groups {list(range(len(results)))} had been unmasked", results) from None
                raise
        return results

    def combined(self, results: list[SecureRelease]) -> np.ndarray:
        """The release: the group sums (each over its own scale) combined."""
        return trimmed_total(np.stack([r.noisy for r in results]), self.trim)

    def fitted_std(self, name: str, results: list[SecureRelease]) -> float:
        """The noise std of the combined release (units of the clip), for the model's fit: the
        groups' root-mean-square std times the combination's factor (sqrt(groups) for the sum)."""
        stds = [r.total_variance / group.plan.release(name).scale ** 2 for r, group in zip(results, self.groups)]
        return float(math.sqrt(float(np.mean(stds))) * trimmed_total_std(self.count, self.trim))

    def key_evidence(self) -> dict[str, np.ndarray]:
        """The key stages' evidence over every group, and each device's group."""
        group_of = -np.ones(len(self.nodes), dtype=np.int64)
        for g, group in enumerate(self.groups):
            group_of[list(group.mask_publics)] = g
        return {**key_evidence(self.groups).arrays(), GROUP_OF_KEY: group_of}


def grouped_ledger_body(grouped: GroupedAggregation, name: str, dimension: int, group_bodies: list[dict[str, Any]],
                        epsilon: float, fitted_std: float) -> dict[str, Any]:
    """A grouped release's ledger entry: the combination, the largest group epsilon, and each
    group's own entry (as a single secure sum's, naming its evidence prefix)."""
    return {
        "release": name,
        "mechanism": f"secure sums over {grouped.count} groups, combined by their {grouped.config.privacy.secure_combine}, "
                     "distributed Skellam noise",
        "dimension": dimension,
        "sensitivity": 1.0,
        "secure-groups": grouped.count,
        "secure-combine": grouped.config.privacy.secure_combine,
        "devices": len(grouped.nodes),
        "participants": sum(int(b["participants"]) for b in group_bodies),
        "contributions": sum(int(b["contributions"]) for b in group_bodies),
        "dropped": sum(int(b["dropped"]) for b in group_bodies),
        "noise-std": fitted_std,
        "fitted-noise-std": fitted_std,
        "user-level-epsilon": epsilon if np.isfinite(epsilon) else -1.0,
        "contributors": [c for b in group_bodies for c in b["contributors"]],
        "group-releases": group_bodies,
    }
