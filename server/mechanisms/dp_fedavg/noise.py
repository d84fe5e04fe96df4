"""User-level DP at the server: DP-FedAvg with Poisson client sampling and a fixed denominator.

Each round every client is sampled independently with probability ``q`` (Poisson sampling, done
here rather than by Flower's fixed-size sampler, so that the sampled Gaussian mechanism's
accounting applies exactly). Each reply's item-tower update (reply minus the global model) is
clipped to L2 norm ``C``; the clipped updates are summed with equal weights, Gaussian noise of
std ``z * C`` is added to the sum, and the result is divided by the *expected* number of
clients ``q * N`` (not the number that replied). Adding or removing one user changes the sum
by at most ``C``, so each round is a sampled Gaussian mechanism with noise multiplier ``z`` and
rate ``q``; a client that drops out or declines only removes a term and never weakens the
guarantee. The user-level epsilon is that mechanism composed over the rounds run
(``shared.privacy.accounting`` history ``[(z, q, rounds)]``).
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ArrayRecord

from shared.privacy.accounting import History, epsilon_of
from shared.privacy.canaries import CanarySet
from shared.privacy.gaussian import clip, gaussian_noise  # module names tests patch to break the noise

if TYPE_CHECKING:  # torch is imported where a model is rebuilt: the clip is numpy only (devices)
    import torch


@dataclass(frozen=True)
class CentralDP:
    """The server-side mechanism's parameters: clip ``C``, noise multiplier ``z``, rate ``q``."""

    clip_norm: float
    noise_multiplier: float
    sample_rate: float
    population: int

    @property
    def denominator(self) -> float:
        """Expected number of sampled clients: the fixed divisor of the noisy sum."""
        return self.sample_rate * self.population

    @property
    def noise_std(self) -> float:
        """Std of the Gaussian noise on each coordinate of the released *average* update."""
        return self.noise_multiplier * self.clip_norm / self.denominator

    def history(self, rounds: int) -> History:
        return [(self.noise_multiplier, self.sample_rate, rounds)] if rounds else []

    def epsilon(self, rounds: int, delta: float, accountant: str = "rdp") -> float:
        """User-level epsilon after ``rounds`` rounds (inf when the noise is switched off)."""
        return epsilon_of(self.history(rounds), delta, accountant)


def poisson_sample(node_ids: list[int], rate: float, rng: np.random.Generator) -> list[int]:
    """Each node independently with probability ``rate`` (may be empty)."""
    draws = rng.random(len(node_ids))
    return [node for node, u in zip(sorted(node_ids), draws) if u < rate]


def flatten(state: dict[str, torch.Tensor] | ArrayRecord) -> np.ndarray:
    """A model state as one float64 vector, keys in sorted order (the canaries use the same)."""
    items = state.items()
    arrays = [(k, v.numpy() if hasattr(v, "numpy") else np.asarray(v)) for k, v in items]
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for _, a in sorted(arrays, key=lambda kv: kv[0])])


def unflatten(vector: np.ndarray, like: ArrayRecord) -> ArrayRecord:
    """Inverse of :func:`flatten` onto the keys, shapes and dtypes of ``like``."""
    import torch

    out, offset = {}, 0
    for key in sorted(like.keys()):
        reference = like[key].numpy()
        size = reference.size
        out[key] = torch.from_numpy(vector[offset : offset + size].reshape(reference.shape).astype(reference.dtype))
        offset += size
    if offset != vector.size:
        raise ValueError(f"vector of {vector.size} values does not fit a model of {offset}")
    return ArrayRecord(out)


@dataclass(frozen=True)
class NoisyRound:
    """What one DP-FedAvg aggregation released, for the ledger."""

    arrays: ArrayRecord
    clients: int
    clipped: int
    update_norms: list[float]
    noise_std_of_sum: float
    released_norm: float


def aggregate(
    mechanism: CentralDP,
    global_arrays: ArrayRecord,
    client_arrays: list[ArrayRecord],
    extra_updates: list[np.ndarray],
    rng: np.random.Generator,
) -> NoisyRound:
    """New global model = global + (sum of clipped updates + noise) / (q N).

    ``extra_updates`` are already-flat updates that go through the same clip (the audit's
    canary clients).
    """
    base = flatten(global_arrays)
    total = np.zeros_like(base)
    norms, clipped = [], 0
    updates = [flatten(arrays) - base for arrays in client_arrays] + list(extra_updates)
    for update in updates:
        bounded, norm = clip(update, mechanism.clip_norm)
        norms.append(norm)
        clipped += int(norm > mechanism.clip_norm)
        total += bounded
    sum_std = mechanism.noise_multiplier * mechanism.clip_norm
    total += gaussian_noise(rng, total.size, sum_std)
    released = total / mechanism.denominator
    return NoisyRound(
        arrays=unflatten(base + released, global_arrays),
        clients=len(updates),
        clipped=clipped,
        update_norms=norms,
        noise_std_of_sum=sum_std,
        released_norm=float(np.linalg.norm(released)),
    )


@dataclass
class ServerDP:
    """Central DP for one run: the mechanism, its budget, its canaries and its randomness.

    Sampling and noise draw from OS entropy, not from the run's seed: amplification by
    sampling and the noise both assume the adversary cannot predict them.
    """

    mechanism: CentralDP
    delta: float
    accountant: str
    epsilon_cap: float = 0.0
    canaries: CanarySet | None = None
    rng: np.random.Generator = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.rng is None:
            import secrets

            self.rng = np.random.default_rng(secrets.randbits(128))

    def epsilon(self, rounds: int) -> float:
        return self.mechanism.epsilon(rounds, self.delta, self.accountant)

    def would_exceed_cap(self, server_round: int) -> bool:
        """Whether running ``server_round`` would push the user-level epsilon past the cap."""
        return self.epsilon_cap > 0 and self.epsilon(server_round) > self.epsilon_cap

    def sample(self, node_ids: list[int]) -> list[int]:
        return poisson_sample(node_ids, self.mechanism.sample_rate, self.rng)

    def release(self, global_arrays: ArrayRecord, client_arrays: list[ArrayRecord]) -> tuple[NoisyRound, int]:
        """Aggregate one round (with this round's canaries); also the number of canaries in it."""
        extra = []
        if self.canaries is not None:
            extra = self.canaries.round_updates(self.rng, self.mechanism.sample_rate, self.mechanism.clip_norm)
        return aggregate(self.mechanism, global_arrays, client_arrays, extra, self.rng), len(extra)
