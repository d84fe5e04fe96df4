"""``privacy = user``, ``user-noise = central``: the server adds Gaussian noise to each release.

Devices send their statistics in the clear; the server clips each contribution to L2 norm 1
(the guarantee never rests on an honest device), sums, adds Gaussian noise of the std the
budget split gives, and composes the releases exactly in Gaussian DP (mu^2 = sum 1/std^2),
cross-checked by ``dp-accounting``'s PLD accountant. The server sees every contribution: it
is trusted.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord, Message

from server.mechanisms.releases import Released, Releaser, ReleasesMechanism, StudyNoise
from server.replies import ok_replies, send_and_collect
from shared.config import RunConfig
from shared.messages import CONTRIBUTION_KEY, TASK_KEY, client_id, server_messages, update_of
from shared.privacy.accounting import gaussian_epsilon, split_budget
from shared.privacy.gaussian import clip, gaussian_noise
from shared.releases import budget_shares, planned_releases

if TYPE_CHECKING:
    from flwr.serverapp import Grid

    from server.audit.report import AuditReport
    from shared.privacy.ledger import Entry, Ledger
    from shared.run_directory import RunDirectory

SENSITIVITY = 1.0


@dataclass(frozen=True)
class ReleaseRecord:
    """What one Gaussian release did, as measured by the server (the audit's evidence)."""

    release: str
    dimension: int
    sensitivity: float
    noise_std: float
    contributions: int
    contributions_clipped: int
    contribution_norm_max: float
    noise_norm: float
    released_norm: float
    user_level_epsilon: float

    def ledger_body(self, contributors: list[str]) -> dict[str, Any]:
        body = {key.replace("_", "-"): value for key, value in asdict(self).items()}
        body["contributors"] = contributors
        if not np.isfinite(body["user-level-epsilon"]):
            body["user-level-epsilon"] = -1.0
        return body


def noise_stds(config: RunConfig) -> list[float]:
    """The releases' noise stds (of the sum) for the configured budget, in release order."""
    return split_budget(float(config.privacy.user_epsilon), float(config.privacy.delta), budget_shares(config))


def gaussian_release(
    contributions: Iterable[np.ndarray], dimension: int, noise_std: float, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, float]]:
    """Sum of contributions clipped to L2 norm 1, plus Gaussian noise of ``noise_std``.

    Also the measurements the ledger keeps: how many were clipped, the largest norm after
    clipping, and the norm of the noise actually added (released minus clipped sum)."""
    total = np.zeros(dimension)
    clipped, largest = 0, 0.0
    for contribution in contributions:
        bounded, norm = clip(contribution, SENSITIVITY)
        clipped += int(norm > SENSITIVITY * (1 + 1e-6))
        largest = max(largest, float(np.linalg.norm(bounded)))
        total += bounded
    released = total + gaussian_noise(rng, dimension, noise_std)
    return released, {
        "contributions-clipped": clipped,
        "contribution-norm-max": largest,
        "noise-norm": float(np.linalg.norm(released - total)),
        "released-norm": float(np.linalg.norm(released)),
    }


def contributions(replies: list[Message], dimension: int, who: list[str]) -> Iterator[np.ndarray]:
    """One contribution per device pseudonym, of the right size, converted one at a time as the
    sum consumes them (943 co-occurrence triangles at float64 would hold 1.4 GB at once); each
    counted device's pseudonym is appended to ``who``.

    A second reply under a pseudonym already counted is dropped: each user is in each sum once,
    which is what the sensitivity of 1 assumes."""
    seen: set[str] = set()
    for reply in replies:
        name = client_id(reply)
        vector = update_of(reply)[CONTRIBUTION_KEY].numpy().astype(np.float64).ravel()
        if name in seen or vector.size != dimension or not np.all(np.isfinite(vector)):
            print(f"  node {reply.metadata.src_node_id}: contribution dropped (duplicate, wrong size or not finite)", flush=True)
            continue
        seen.add(name)
        who.append(name)
        yield vector


class GaussianReleaser(Releaser):
    """The server's Gaussian noise on the clipped sum of the devices' statistics."""

    def __init__(self, grid: "Grid", nodes: list[int], config: RunConfig) -> None:
        self.grid, self.nodes, self.config = grid, nodes, config
        self.rng = np.random.default_rng(secrets.randbits(128))  # noise from OS entropy, never the run seed
        self.stds = noise_stds(config)

    def release(self, server_round: int, name: str, dimension: int, arrays: ArrayRecord) -> Released:
        settings = {**self.config.device_settings(), TASK_KEY: name}
        messages = server_messages(self.nodes, arrays, settings, server_round)
        replies = ok_replies(send_and_collect(self.grid, messages))
        who: list[str] = []
        std = self.stds[server_round - 1]
        noisy, measured = gaussian_release(contributions(replies, dimension, who), dimension, std, self.rng)
        epsilon = gaussian_epsilon(self.stds[:server_round], float(self.config.privacy.delta))
        record = ReleaseRecord(
            release=name, dimension=dimension, sensitivity=SENSITIVITY, noise_std=std,
            contributions=len(who), user_level_epsilon=epsilon,
            **{key.replace("-", "_"): value for key, value in measured.items()},
        )
        return Released(noisy, who, epsilon, std, record.ledger_body(who))


class GaussianStudyNoise(StudyNoise):
    """The server's Gaussian noise over a study's releases: each contribution clipped to norm 1."""

    def __init__(self, config: RunConfig, shares: list[float]) -> None:
        self.delta = float(config.privacy.delta)
        self.stds = split_budget(float(config.privacy.user_epsilon), self.delta, shares)

    def release(self, index: int, contributions: Iterable[np.ndarray], dimension: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        noisy, _ = gaussian_release(contributions, dimension, self.stds[index], rng)
        return noisy, self.stds[index]

    def epsilon(self, count: int) -> float:
        return gaussian_epsilon(self.stds[:count], self.delta)


class GaussianReleases(ReleasesMechanism):
    name = "gaussian-releases"
    variant = ("user-noise", "central")
    trust = "the server adds the noise and sees each contribution (central DP); contributions are fixed-size vectors that secure aggregation could sum"

    def header_fields(self, canary_commitment: str | None) -> dict[str, Any]:
        return {
            **super().header_fields(canary_commitment),
            "user-level-mechanism": "Gaussian releases of sensitivity 1: (1) the sum of unit-norm interaction "
            "vectors, (2) the sum of unit-Frobenius co-occurrence matrices over the cooccurrence-items most "
            "popular items of release 1, (3) with selection-budget-share > 0, the sum of unit-norm vectors of "
            "reciprocal ranks of each device's most recent interaction under candidate weightings; each "
            "contribution clipped to L2 norm 1 by the server",
            "user-level-releases": [
                {"release": r.name, "noise-std": std} for r, std in zip(planned_releases(self.config), noise_stds(self.config))
            ],
            "user-level-accounting": "composition of Gaussian mechanisms, exact in mu-GDP (mu^2 = sum 1/std^2), "
            "cross-checked by dp-accounting PLD",
            "user-epsilon": self.user_epsilon_field(),
            "trust": self.trust,
        }

    def study_noise(self, shares: list[float], dimensions: list[int], devices: int) -> StudyNoise:
        return GaussianStudyNoise(self.config, shares)

    def releaser(self, grid: "Grid", nodes: list[int], dimensions: dict[str, int], ledger: "Ledger", log) -> Releaser:
        return GaussianReleaser(grid, nodes, self.config)

    @classmethod
    def audit(
        cls, report: "AuditReport", run: "RunDirectory", header: dict[str, Any], entries: "list[Entry]",
        delta: float, gaps: list[float], node_keys: Any = None,
    ) -> None:
        """``release-accounting``, ``release-noise``, ``release-clipping``, ``release-model``."""
        from server.mechanisms.gaussian_releases.audit import audit_gaussian_releases

        audit_gaussian_releases(report, run, header, entries, delta)
