"""The parameters of a secure, distributed-noise run: one function that server and devices both call.

Every device recomputes the plan from the run's settings and the number of devices the server
says take part, and uses its own numbers: a server cannot talk a device into a smaller noise
share, a lower threshold or a smaller minimum.

- ``threshold``: Shamir shares go to each device's ``k`` neighbours (a k-regular ring over the
  roster in an order the server cannot choose, :func:`participant_graph`; SecAgg+); any
  ``k // 2 + 1`` of them rebuild a secret, fewer learn nothing. ``n`` is the roster's population.
- ``min_survivors``: a release is unmasked only when at least ``ceil((1 - dropout) n)`` devices
  sent their masked input; below it the release is aborted and nothing is released.
- ``colluders``: up to ``ceil(colluders n)`` devices may share their noise with the server; the
  noise the claim counts is what the others add, less one more share: the Skellam bound is for
  a user's statistic replaced by zero, and under add/remove the removed user's own noise share
  leaves with it. Each device adds ``1 / (min_survivors - colluders - 1)`` of each release's
  variance, so the claim holds at the minimum; with more survivors the realised noise is larger
  and the realised epsilon (in the ledger) smaller.
- the neighbour graph must hold together: the server could unmask the sum of each part of a
  split graph apart, each with a part of the noise. A ring lattice of degree ``k`` splits only
  where ``k / 2`` consecutive devices are gone (dropped or colluding), and a device's secrets
  leak only if ``threshold`` of its neighbours collude; the plan refuses a ``k`` for which either
  has probability above ``delta / 10`` (Bell et al. 2020 choose ``k`` the same way). The server
  also refuses to unmask for survivors whose graph is split, and the audit checks it again.
- per release: the scale, the rounding's norm bound (the integer sensitivity), and the noise
  variance, calibrated so the Skellam releases together spend ``user-epsilon`` at ``delta``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from shared.privacy.accounting import split_budget
from shared.secure_sum.quantise import check_no_overflow, choose_scale, l1_bound, rounding_bound
from shared.secure_sum.skellam import SkellamRelease, skellam_epsilon

CLIP = 1.0  # every release's statistic has L2 norm at most 1 (user-level sensitivity 1)


@dataclass(frozen=True)
class ReleasePlan:
    name: str
    dimension: int
    scale: float
    bound: float  # L2 norm bound of a rounded contribution: the integer L2 sensitivity
    central_variance: float  # per coordinate, of the noise the honest minimum adds together
    share_variance: float  # per coordinate, what each device adds

    @property
    def l1(self) -> float:
        return l1_bound(self.bound, self.dimension)

    def accounted(self, honest_variance: float) -> SkellamRelease:
        return SkellamRelease(self.bound, self.l1, honest_variance)

    def noise_std_of_sum(self, devices: int) -> float:
        """Std (in units of the clip) of the noise ``devices`` shares add to the sum."""
        return math.sqrt(devices * self.share_variance) / self.scale


@dataclass(frozen=True)
class SecurePlan:
    devices: int
    neighbours: int
    threshold: int
    min_survivors: int
    colluders: int
    releases: tuple[ReleasePlan, ...]
    delta: float
    epsilon_budget: float
    population: int = 0  # the roster's, when it is cut into groups (0: ``devices``, one group)
    groups: int = 1  # ``secure-groups``: this plan is one group's of that many

    @property
    def roster_size(self) -> int:
        """The population a device's roster must list: ``devices``, or with groups the whole roster's."""
        return self.population or self.devices

    @property
    def uncounted(self) -> int:
        """Shares a claim never counts: the colluders' and the removed user's own."""
        return self.colluders + 1

    @property
    def honest_minimum(self) -> int:
        return self.min_survivors - self.uncounted

    def digest(self) -> str:
        """SHA-256 of everything the plan fixes: each device signs it with its input, so a run
        whose devices were sent a weaker plan than its config says fails the audit."""
        fields = {
            "devices": self.devices, "neighbours": self.neighbours, "threshold": self.threshold,
            "min-survivors": self.min_survivors, "colluders": self.colluders, "delta": self.delta,
            "epsilon-budget": self.epsilon_budget if math.isfinite(self.epsilon_budget) else "inf",
            "releases": [[r.name, r.dimension, r.scale, r.bound, r.share_variance] for r in self.releases],
        }
        if self.groups > 1:  # one group's plan; a plan of one sum keeps the digest it always had
            fields.update({"population": self.population, "groups": self.groups})
        return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def release(self, name: str) -> ReleasePlan:
        for release in self.releases:
            if release.name == name:
                return release
        raise KeyError(f"the plan has no release {name!r}")

    def epsilon(self, honest_variances: Sequence[float]) -> float:
        """User-level epsilon after the first ``len(honest_variances)`` releases, at the noise the
        honest devices realised in each."""
        return skellam_epsilon([r.accounted(v) for r, v in zip(self.releases, honest_variances)], self.delta)


def graph_failure_probability(devices: int, k: int, threshold: int, gone: int, colluders: int) -> float:
    """Union bound on the chance that the graph fails the run: the ring lattice of degree ``k``
    over ``devices`` in a random order splits (``k / 2`` consecutive devices among the ``gone``,
    dropped or colluding), or some device has ``threshold`` of its neighbours among the
    ``colluders`` (a set fixed before the roster's seed orders the ring). A complete graph never
    splits."""
    half = k // 2
    split = 0.0 if k >= devices - 1 else devices * math.comb(gone, half) / math.comb(devices, half)
    others = devices - 1
    leak = devices * sum(math.comb(colluders, j) * math.comb(others - colluders, k - j) for j in range(threshold, min(k, colluders) + 1)) / math.comb(others, k)
    return min(1.0, split + leak)


def make_plan(
    devices: int,
    names: Sequence[str],
    dimensions: Sequence[int],
    budget_shares: Sequence[float],
    epsilon: float,
    delta: float,
    neighbours: int,
    dropout: float,
    colluders: float,
    population: int = 0,
    groups: int = 1,
    colluder_count: int | None = None,
) -> SecurePlan:
    """The plan for ``devices`` devices; a ValueError says why parameters cannot work. One group
    of ``groups`` cut from a roster of ``population`` (:func:`shared.releases.group_plan`) gives
    the colluders it tolerates as ``colluder_count`` instead of the ``colluders`` fraction."""
    if devices < 3:
        raise ValueError(
            f"secure aggregation (user-noise = distributed) needs at least 3 devices, not {devices}: with 2, each would "
            "learn the other's statistic from the sum; use user-noise = central"
        )
    if not 0.0 <= dropout < 1.0 or not 0.0 <= colluders < 1.0:
        raise ValueError("secure-dropout and secure-colluders must be fractions in [0, 1)")
    k = min(int(neighbours), devices - 1)
    k -= k % 2 if devices - 1 > k else 0  # a k-regular ring lattice needs k even unless it is complete
    if k < 2:
        raise ValueError(f"secure-neighbours must be at least 2 (got {neighbours})")
    threshold = k // 2 + 1
    min_survivors = max(2, math.ceil((1.0 - dropout) * devices - 1e-9))
    trusted_out = math.ceil(colluders * devices - 1e-9) if colluder_count is None else int(colluder_count)
    if min_survivors - trusted_out < 1:
        raise ValueError(f"with {devices} devices, {min_survivors} must survive and {trusted_out} may collude: no honest noise would remain")
    if 2 * min_survivors <= devices + trusted_out:
        raise ValueError(
            f"with {devices} devices, a minimum of {min_survivors} and {trusted_out} colluders, two disjoint sets of honest devices "
            "could each reach the minimum of survivor-set signatures (a server could show them two views): lower secure-dropout"
        )
    failure = graph_failure_probability(devices, k, threshold, devices - min_survivors + trusted_out, trusted_out)
    if failure > delta / 10:
        raise ValueError(
            f"secure-neighbours {neighbours}: with {devices} devices, {dropout:g} dropping and {colluders:g} colluding, the "
            f"neighbour graph splits or a device's secrets leak with probability {failure:.2g}, above delta / 10; raise secure-neighbours"
        )
    stds = split_budget(epsilon, delta, list(budget_shares))
    honest = min_survivors - trusted_out - 1
    if honest < 1:
        raise ValueError(f"with {devices} devices, {min_survivors} must survive and {trusted_out} may collude: no honest noise would remain")
    scales = [choose_scale(devices, CLIP, d, std) for d, std in zip(dimensions, stds)]
    bounds = [rounding_bound(CLIP, s, d) for s, d in zip(scales, dimensions)]
    factor = 0.0
    if math.isfinite(epsilon):
        def spent(f: float) -> float:
            return skellam_epsilon(
                [SkellamRelease(b, l1_bound(b, d), (f * std * b) ** 2) for b, d, std in zip(bounds, dimensions, stds)], delta
            )

        low, high = 1.0, 2.0
        while spent(high) > epsilon:
            low, high = high, high * 2
        for _ in range(60):
            mid = (low + high) / 2
            low, high = (mid, high) if spent(mid) > epsilon else (low, mid)
        factor = high
    releases = []
    for name, d, s, b, std in zip(names, dimensions, scales, bounds, stds):
        central = (factor * std * b) ** 2
        share_variance = central / honest
        check_no_overflow(devices, b, math.sqrt(devices * share_variance))
        releases.append(ReleasePlan(name, int(d), s, b, central, share_variance))
    return SecurePlan(devices, k, threshold, min_survivors, trusted_out, tuple(releases), float(delta), float(epsilon),
                      int(population) if groups > 1 else 0, int(groups))


def make_group_plan(
    population: int,
    size: int,
    groups: int,
    names: Sequence[str],
    dimensions: Sequence[int],
    budget_shares: Sequence[float],
    epsilon: float,
    delta: float,
    neighbours: int,
    dropout: float,
    colluders: float,
) -> SecurePlan:
    """The plan of one group of ``size`` when a roster of ``population`` is cut into ``groups``
    (:func:`shared.releases.group_plan` reads these from a run's config): the colluders some
    group may hold (:func:`~shared.secure_sum.groups.group_colluders`, with ``ceil(colluders
    population)`` in the roster), and the fewest neighbours from ``neighbours`` up whose graph
    holds at that."""
    from shared.secure_sum.groups import group_colluders

    tolerated = group_colluders(population, math.ceil(colluders * population - 1e-9), size, groups, delta / 10)
    k = int(neighbours)
    while True:
        try:
            return make_plan(size, names, list(dimensions), list(budget_shares), epsilon, delta, k, dropout, 0.0,
                             population=population, groups=groups, colluder_count=tolerated)
        except ValueError as exc:
            if "raise secure-neighbours" not in str(exc) or k >= size - 1:
                raise
            k += 2


def graph_parts(members: Sequence[int], neighbours: dict[int, Sequence[int]]) -> int:
    """How many connected parts the neighbour graph has among ``members`` (the survivors)."""
    inside, seen, parts = set(members), set(), 0
    for start in members:
        if start in seen:
            continue
        parts += 1
        stack = [start]
        seen.add(start)
        while stack:
            for v in neighbours.get(stack.pop(), ()):
                if v in inside and v not in seen:
                    seen.add(v)
                    stack.append(v)
    return parts


def participant_graph(seed: str, identities: Mapping[int, str], k: int, roster: Collection[str]) -> dict[int, list[int]]:
    """The neighbour graph of a run's participants (protocol index -> identity key), which the
    server may not choose: a ring lattice of degree ``k`` (even unless complete) over the whole
    roster, ordered by SHA-256 of ``seed`` (the roster's own random seed; a simulation's, the run
    id) and each identity key; a participant's neighbours are its ring neighbours that take part.
    Every device recomputes it and refuses other neighbours. Leaving devices out removes them
    from a neighbourhood but draws no one new into it, so the server cannot place a target among
    colluders by choosing who takes part."""
    everyone = set(roster) | set(identities.values())
    order = sorted(everyone, key=lambda key: hashlib.sha256(f"fedmmrec graph|{seed}|{key}".encode()).digest())
    degree = min(int(k), len(order) - 1)
    degree -= degree % 2 if len(order) - 1 > degree else 0
    ring = ring_neighbours(order, degree)
    index_of = {key: i for i, key in identities.items()}
    return {i: sorted(index_of[v] for v in ring[key] if v in index_of) for i, key in identities.items()}


def ring_neighbours(order: Sequence[int], k: int) -> dict[int, list[int]]:
    """The k-regular ring lattice over devices in ``order`` (a random permutation the server
    draws): each device's k/2 nearest on either side. Symmetric, so pairwise masks cancel."""
    n = len(order)
    out: dict[int, list[int]] = {}
    for position, device in enumerate(order):
        if k >= n - 1:
            out[device] = sorted(d for d in order if d != device)
        else:
            out[device] = sorted(order[(position + step) % n] for step in range(-k // 2, k // 2 + 1) if step != 0)
    return out
