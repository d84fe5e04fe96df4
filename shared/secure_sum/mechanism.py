"""``privacy = user``, ``user-noise = distributed`` (the default): the devices add the noise,
and secure aggregation lets the server unmask only the noisy sum.

Each device clips its statistic to L2 norm 1, scales and rounds it (conditional randomised
rounding), adds its share of Skellam noise and masks it modulo 2^32; the protocol
(:mod:`shared.secure_sum.server`) unmasks only sums over at least ``1 - secure-dropout`` of the
devices. The epsilon is Skellam RDP at the noise of the devices that sent their input less the
tolerated colluders (Agarwal, Kairouz, Liu 2021). No single party is trusted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord

from server.mechanisms.releases import Released, Releaser, ReleasesMechanism, StudyNoise
from shared.config import RunConfig
from shared.run_directory import SECURE_FILE
from shared.releases import check_combine, check_secure_settings

if TYPE_CHECKING:
    from flwr.serverapp import Grid

    from server.audit.report import AuditReport
    from shared.secure_sum.server import SecureRelease
    from shared.privacy.ledger import Entry, Ledger
    from shared.run_directory import RunDirectory
    from shared.secure_sum.plan import ReleasePlan, SecurePlan

SENSITIVITY = 1.0


def secure_ledger_body(plan: "SecurePlan", release: "ReleasePlan", result: "SecureRelease", epsilon: float) -> dict[str, Any]:
    """A secure release's ledger entry: the plan it ran under, who took part, what each device
    signed it added, and the epsilon at the honest noise the signed shares realised."""
    return {
        "release": release.name,
        "mechanism": "secure sum, distributed Skellam noise",
        "dimension": release.dimension,
        "sensitivity": SENSITIVITY,
        "scale": release.scale,
        "rounding-bound": release.bound,
        "field-bits": 32,
        "share-variance": release.share_variance,
        "devices": plan.devices,
        "min-survivors": plan.min_survivors,
        "threshold": plan.threshold,
        "colluders": plan.colluders,
        "participants": len(result.participants),
        "contributions": len(result.survivors),
        "dropped": len(result.dropped),
        "honest-variance": result.honest_variance,
        "noise-std": float(np.sqrt(result.honest_variance)) / release.scale,
        "user-level-epsilon": epsilon if np.isfinite(epsilon) else -1.0,
        "contributors": [str(r["client"]) for r in result.records],
        "signed": result.records,
    }


class SecureReleaser(Releaser):
    """Masked device statistics carrying the devices' noise shares; the server unmasks the sum."""

    def __init__(self, grid: "Grid", nodes: list[int], config: RunConfig, dimensions: list[int], ledger: "Ledger", log) -> None:
        from shared.secure_sum.server import SecureAggregation

        self.secure = SecureAggregation(grid, nodes, config, dimensions, log)
        self.nodes, self.ledger, self.log = nodes, ledger, log
        self.honest: list[float] = []
        self.evidence: dict[str, np.ndarray] = {}

    def start(self) -> None:
        secure = self.secure
        secure.setup(server_round=1)
        self.log(
            f"[secure aggregation] {len(secure.participants)} of {len(self.nodes)} devices shared their keys with "
            f"{secure.plan.neighbours} neighbours each (threshold {secure.plan.threshold}); a release needs "
            f"{secure.plan.min_survivors} devices, {secure.plan.colluders} may collude"
        )

    def release(self, server_round: int, name: str, dimension: int, arrays: ArrayRecord) -> Released:
        from shared.secure_sum.server import SecureAggregationAborted

        try:
            result = self.secure.release(name, arrays, server_round)
        except SecureAggregationAborted as exc:
            self.ledger.append([("release-aborted", server_round, {"release": name, "reason": str(exc), **self._learned(name, exc)})])
            raise
        return self._released(name, result)

    def _learned(self, name: str, aborted: Exception) -> dict[str, Any]:
        """What an aborted release still let the server learn, for its ledger entry (one sum: nothing)."""
        return {}

    def _released(self, name: str, result: "SecureRelease") -> Released:
        self.honest.append(result.honest_variance)
        epsilon = self.secure.plan.epsilon(self.honest)
        plan = self.secure.plan.release(name)
        std = float(np.sqrt(result.total_variance)) / plan.scale  # the noise in the sum, for the model's fit
        self.evidence.update(result.evidence)
        body = {**secure_ledger_body(self.secure.plan, plan, result, epsilon), "fitted-noise-std": std}
        return Released(result.noisy, [str(r["client"]) for r in result.records], epsilon, std, body)

    def finish(self, run_dir: "RunDirectory") -> None:
        run_dir.save_arrays(SECURE_FILE, {**self.evidence, **self.secure.key_evidence()})


class GroupedReleaser(SecureReleaser):
    """``secure-groups`` above 1: one secure sum per group of the roster, combined by their
    median (or sum); the claim is the costliest group's (:mod:`shared.secure_sum.grouped`)."""

    def __init__(self, grid: "Grid", nodes: list[int], config: RunConfig, dimensions: list[int], ledger: "Ledger", log) -> None:
        from shared.secure_sum.grouped import GroupedAggregation

        self.secure = GroupedAggregation(grid, nodes, config, dimensions, log)  # type: ignore[assignment]
        self.nodes, self.ledger, self.log = nodes, ledger, log
        self.honest_of: list[list[float]] = []
        self.evidence: dict[str, np.ndarray] = {}

    def start(self) -> None:
        grouped = self.secure
        grouped.setup(server_round=1)
        self.honest_of = [[] for _ in grouped.groups]
        sizes = ", ".join(f"{len(g.participants)}/{g.plan.devices}" for g in grouped.groups)
        self.log(
            f"[secure aggregation] {len(grouped.participants)} of {len(self.nodes)} devices in {grouped.count} groups "
            f"({sizes} taking part), each its own secure sum; a group needs {[g.plan.min_survivors for g in grouped.groups]}, "
            f"tolerates {[g.plan.colluders for g in grouped.groups]} colluders; released: their {self.secure.config.privacy.secure_combine}"
        )

    def _learned(self, name: str, aborted: Exception) -> dict[str, Any]:
        """A group that failed at its unmasking after others: the server holds their sums, on the
        record with their signed entries and epsilon, though nothing is released."""
        from shared.secure_sum.grouped import PartlyUnmasked

        if not isinstance(aborted, PartlyUnmasked):
            return {}
        bodies, epsilons = self._group_bodies(name, aborted.results)
        return {"unmasked-groups": bodies, "user-level-epsilon": max(epsilons)}

    def _group_bodies(self, name: str, results) -> tuple[list[dict[str, Any]], list[float]]:
        """Each unmasked group's ledger entry (a single sum's, naming its evidence) and epsilon."""
        bodies, epsilons = [], []
        for g, (group, result) in enumerate(zip(self.secure.groups, results)):
            self.honest_of[g].append(result.honest_variance)
            epsilon = group.plan.epsilon(self.honest_of[g])
            epsilons.append(epsilon)
            self.evidence.update(result.evidence)
            bodies.append({**secure_ledger_body(group.plan, group.plan.release(name), result, epsilon), "group": g,
                           "evidence": group.evidence_name(name)})
        return bodies, epsilons

    def _released(self, name: str, results) -> Released:  # type: ignore[override]
        from shared.secure_sum.grouped import grouped_ledger_body

        grouped = self.secure
        bodies, epsilons = self._group_bodies(name, results)
        epsilon, std = max(epsilons), grouped.fitted_std(name, results)
        body = grouped_ledger_body(grouped, name, int(results[0].noisy.size), bodies, epsilon, std)
        return Released(grouped.combined(results), list(body["contributors"]), epsilon, std, body)


class SecureStudyNoise(StudyNoise):
    """The secure sum's arithmetic over a study's releases, without the messages: each device's
    statistic clipped, rounded at random within the plan's bound and given its Skellam share
    (:func:`shared.secure_sum.session.rounded_with_share`, what a device masks), summed in
    Z_{2^32} as the unmasked sum is (the masks cancel), over the scale. Every device is counted
    (none drops), so the epsilon is the plan's at all the devices' shares less the colluders'
    and the removed user's own. With ``secure-groups`` above 1 the devices, in the order the
    study hands them over, are cut into the groups' arcs, each summed under its own group plan
    (:func:`shared.secure_sum.plan.make_group_plan`), and the release is their median or sum
    (:func:`shared.secure_sum.groups.trimmed_total`), as a run makes it."""

    def __init__(self, config: RunConfig, shares: list[float], dimensions: list[int], devices: int) -> None:
        from shared.releases import group_sizes
        from shared.secure_sum.groups import combine_trim
        from shared.secure_sum.plan import make_group_plan, make_plan

        p = config.privacy
        names = [f"study-release-{k}" for k in range(len(shares))]
        settings = (list(dimensions), list(shares), float(p.user_epsilon), float(p.delta), int(p.secure_neighbours),
                    float(p.secure_dropout), float(p.secure_colluders))
        self.count = int(p.secure_groups)
        self.trim = combine_trim(p.secure_combine, self.count)
        if self.count == 1:
            self.plans = [make_plan(devices, names, *settings)]
        else:
            self.plans = [make_group_plan(devices, size, self.count, names, *settings) for size in group_sizes(devices, self.count)]
        self.devices = devices

    @property
    def plan(self):
        """The first group's plan (the only one without groups)."""
        return self.plans[0]

    def _planned(self, index: int, dimension: int):
        """Release ``index`` of each group's plan, at ``dimension`` values (at most the planned:
        its rounding bound holds a fortiori)."""
        from dataclasses import replace

        planned = [plan.releases[index] for plan in self.plans]
        if dimension > planned[0].dimension:
            raise ValueError(f"a release of {dimension} values where the plan has {planned[0].dimension}: its rounding bound would not hold")
        return [replace(r, dimension=dimension) for r in planned]

    def _by_group(self, contributions):
        """(group, contribution) for each device in the order handed over, cut into the groups'
        arcs; every planned device must come (the epsilon counts each one's share)."""
        ends = np.cumsum([plan.devices for plan in self.plans])
        devices = 0
        for contribution in contributions:
            group = int(np.searchsorted(ends, devices, side="right"))
            devices += 1
            if group < len(self.plans):
                yield group, contribution
        if devices != self.devices:
            raise ValueError(f"{devices} contributions to a study release planned for {self.devices} devices")

    def _combined(self, totals: list[np.ndarray], releases) -> tuple[np.ndarray, float]:
        """The groups' integer sums read back from the field, over their scales, combined; and
        the noise std of the combination."""
        from shared.secure_sum.groups import trimmed_total, trimmed_total_std
        from shared.secure_sum.quantise import from_field, to_field

        sums = np.stack([from_field(to_field(total)) / r.scale for total, r in zip(totals, releases)])
        stds = [r.noise_std_of_sum(plan.devices) for r, plan in zip(releases, self.plans)]
        return trimmed_total(sums, self.trim), float(np.sqrt(np.mean(np.square(stds)))) * trimmed_total_std(self.count, self.trim)

    def release(self, index: int, contributions, dimension: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        from shared.secure_sum.quantise import to_field
        from shared.secure_sum.session import rounded_with_share

        releases = self._planned(index, dimension)
        totals = [np.zeros(dimension, dtype=np.uint32) for _ in self.plans]
        for group, contribution in self._by_group(contributions):
            totals[group] += to_field(rounded_with_share(contribution, releases[group], rng))
        return self._combined(totals, releases)

    def release_streamed(self, index: int, contributions, dimension: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        """:meth:`release` for large populations, the same release in distribution: each device's
        statistic rounded on its nonzero coordinates only
        (:func:`~shared.secure_sum.session.rounded_sparse`) and each group's Skellam shares drawn
        as their sum (a sum of independent Skellam variables is Skellam of the summed variance),
        so the work is the devices' nonzeros, not devices x dimension."""
        from shared.secure_sum.session import rounded_sparse
        from shared.secure_sum.skellam import skellam_noise

        releases = self._planned(index, dimension)
        totals = [np.zeros(dimension, dtype=np.int64) for _ in self.plans]
        for group, contribution in self._by_group(contributions):
            where, values = rounded_sparse(contribution, releases[group], rng)
            totals[group][where] += values
        for total, release, plan in zip(totals, releases, self.plans):
            total += skellam_noise(rng, dimension, plan.devices * release.share_variance)
        return self._combined(totals, releases)

    def epsilon(self, count: int) -> float:
        """The costliest group's (a user is in one group: parallel composition)."""
        return max(plan.epsilon([(plan.devices - plan.uncounted) * r.share_variance for r in plan.releases[:count]])
                   for plan in self.plans)


class SecureReleases(ReleasesMechanism):
    name = "secure-skellam-releases"
    variant = ("user-noise", "distributed")
    unit = "user (all of one device's interactions), noise added by the devices under secure aggregation"

    @classmethod
    def train_tasks(cls) -> dict[str, Any]:
        """Each stage of the secure sum; a statistic in the clear is no task of this mechanism."""
        from shared.messages import SECURE_STAGES
        from shared.secure_sum.device import secure_stage

        return {stage: secure_stage for stage in SECURE_STAGES}

    @classmethod
    def validate(cls, config: RunConfig) -> None:
        super().validate(config)
        check_secure_settings(config)
        check_combine(config)

    @property
    def trust(self) -> str:  # type: ignore[override]
        p = self.config.privacy
        return (
            "no single party: the server sees each device's statistic only masked (uniform modulo 2^32) and unmasks only "
            f"sums over at least {1 - p.secure_dropout:.0%} of the devices, which already carry the devices' noise; each device "
            "checks its neighbours' keys and the survivor set against signatures of the roster's identity keys and refuses a "
            "repeat or a release past its own cap, whatever the server does. Assumed: at most "
            f"{p.secure_colluders:.0%} of devices colluding with the server (their noise is not counted), and a roster the "
            "server does not write. Devices are not checked to clip (no zero-knowledge proofs): a device can sway the "
            "recommendations within what honest inputs could sum to, not the privacy"
        )

    def header_fields(self, canary_commitment: str | None) -> dict[str, Any]:
        return {
            **super().header_fields(canary_commitment),
            "user-level-mechanism": "distributed Skellam mechanism under secure aggregation: each device clips its statistic "
            "(the same three as the central mechanism) to L2 norm 1, scales and rounds it (conditional randomised rounding, "
            "the rounded norm bound is the sensitivity), adds its share of Skellam noise, and masks it modulo 2^32 (pairwise "
            "X25519 masks expanded by ChaCha20, Shamir-shared with its neighbours); the server unmasks only the sum",
            "user-level-accounting": "Skellam RDP (Agarwal, Kairouz, Liu 2021, Theorem 3.5) at the noise of the devices that "
            "sent their input less the tolerated colluders, composed over the releases, converted as Opacus' RDP accountant",
            "user-epsilon": self.user_epsilon_field(),
            "trust": self.trust,
        }

    def study_noise(self, shares: list[float], dimensions: list[int], devices: int) -> StudyNoise:
        return SecureStudyNoise(self.config, shares, dimensions, devices)

    def releaser(self, grid: "Grid", nodes: list[int], dimensions: dict[str, int], ledger: "Ledger", log) -> Releaser:
        kind = GroupedReleaser if self.config.privacy.secure_groups > 1 else SecureReleaser
        return kind(grid, nodes, self.config, list(dimensions.values()), ledger, log)

    @classmethod
    def audit(
        cls, report: "AuditReport", run: "RunDirectory", header: dict[str, Any], entries: "list[Entry]",
        delta: float, gaps: list[float], node_keys: Any = None,
    ) -> None:
        """The devices' signed noise shares, the unmasked sums, the keys, and the served model."""
        from shared.secure_sum.audit import audit_secure_releases

        audit_secure_releases(report, run, header, entries, delta, node_keys)
