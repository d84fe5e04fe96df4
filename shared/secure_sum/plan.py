"""The parameters of a secure, distributed-noise run: one function that server and devices both call.

Every device recomputes the plan from the run's settings and the number of devices the server
says take part, and uses its own numbers: a server cannot talk a device into a smaller noise
share, a lower threshold or a smaller minimum.

- ``threshold``: Shamir shares go to each device's ``k`` neighbours (a random k-regular graph
  the server draws, SecAgg+); any ``k // 2 + 1`` of them rebuild a secret, fewer learn nothing.
- ``min_survivors``: a release is unmasked only when at least ``ceil((1 - dropout) n)`` devices
  sent their masked input; below it the release is aborted and nothing is released.
- ``colluders``: up to ``ceil(colluders n)`` devices may share their noise with the server; the
  noise the claim counts is what the others add. Each device adds ``1 / (min_survivors -
  colluders)`` of each release's variance, so the claim holds at the minimum; with more
  survivors the realised noise is larger and the realised epsilon (in the ledger) smaller.
- per release: the scale, the rounding's norm bound (the integer sensitivity), and the noise
  variance, calibrated so the Skellam releases together spend ``user-epsilon`` at ``delta``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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

    @property
    def honest_minimum(self) -> int:
        return self.min_survivors - self.colluders

    def release(self, name: str) -> ReleasePlan:
        for release in self.releases:
            if release.name == name:
                return release
        raise KeyError(f"the plan has no release {name!r}")

    def epsilon(self, honest_variances: Sequence[float]) -> float:
        """User-level epsilon after the first ``len(honest_variances)`` releases, at the noise the
        honest devices realised in each."""
        return skellam_epsilon([r.accounted(v) for r, v in zip(self.releases, honest_variances)], self.delta)


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
) -> SecurePlan:
    """The plan for ``devices`` devices; a ValueError says why parameters cannot work."""
    if devices < 2:
        raise ValueError(f"secure aggregation needs at least 2 devices, not {devices}")
    if not 0.0 <= dropout < 1.0 or not 0.0 <= colluders < 1.0:
        raise ValueError("secure-dropout and secure-colluders must be fractions in [0, 1)")
    k = min(int(neighbours), devices - 1)
    k -= k % 2 if devices - 1 > k else 0  # a k-regular ring lattice needs k even unless it is complete
    if k < 2:
        raise ValueError(f"secure-neighbours must be at least 2 (got {neighbours})")
    threshold = k // 2 + 1
    min_survivors = max(2, math.ceil((1.0 - dropout) * devices - 1e-9))
    trusted_out = math.ceil(colluders * devices - 1e-9)
    if min_survivors - trusted_out < 1:
        raise ValueError(f"with {devices} devices, {min_survivors} must survive and {trusted_out} may collude: no honest noise would remain")
    stds = split_budget(epsilon, delta, list(budget_shares))
    honest = min_survivors - trusted_out
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
    return SecurePlan(devices, k, threshold, min_survivors, trusted_out, tuple(releases), float(delta), float(epsilon))


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
