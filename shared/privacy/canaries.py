"""Canary clients for the one-run empirical privacy audit of the server-side mechanism.

After Andrew et al. (2024, "One-shot empirical privacy estimation for federated learning"):
``m`` virtual canary clients join the population. Each is *included* with probability 1/2
(a secret coin, kept in ``canaries.json`` and committed to in the ledger header by its
SHA-256 before training starts). An included canary is sampled each round like any client
(Poisson, rate ``q``) and, when sampled, contributes the worst-case update: a fixed random unit
direction scaled to the clip norm. After training, each canary's score is the projection of
the total model change (final minus initial model) on its direction. The auditor guesses
"included" for the highest scores and "excluded" for the lowest, and
:mod:`shared.privacy.empirical` turns the correct guesses into an epsilon lower bound
(Steinke, Nasr and Jagielski, 2023).

Directions are regenerated from the secret seed, so the file stays small. Canaries never reach
a device; they exercise exactly the server's clip, noise and sampling code.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class CanarySet:
    seed: int
    dimension: int
    included: tuple[bool, ...]

    @classmethod
    def draw(cls, count: int, dimension: int) -> "CanarySet":
        """``count`` canaries with secret directions and secret fair inclusion coins."""
        seed = secrets.randbits(63)
        coins = np.random.default_rng([seed, 2**32]).random(count) < 0.5
        return cls(seed=seed, dimension=dimension, included=tuple(bool(c) for c in coins))

    @property
    def count(self) -> int:
        return len(self.included)

    def direction(self, index: int) -> np.ndarray:
        vector = np.random.default_rng([self.seed, index]).standard_normal(self.dimension)
        return vector / np.linalg.norm(vector)

    def round_updates(self, rng: np.random.Generator, rate: float, norm: float) -> list[np.ndarray]:
        """Updates of the included canaries that Poisson sampling picks this round."""
        picked = [i for i, inside in enumerate(self.included) if inside and rng.random() < rate]
        return [norm * self.direction(i) for i in picked]

    def scores(self, model_change: np.ndarray) -> np.ndarray:
        """Projection of the total model change on each canary's direction."""
        if model_change.size != self.dimension:
            raise ValueError(f"model change has {model_change.size} values, canaries {self.dimension}")
        return np.array([float(self.direction(i) @ model_change) for i in range(self.count)])

    def write(self, path: Path) -> str:
        """Write the canary file ``path``; return its SHA-256 (the ledger header's commitment)."""
        payload = json.dumps(
            {"seed": self.seed, "dimension": self.dimension, "included": [int(c) for c in self.included]},
            sort_keys=True,
        ).encode()
        Path(path).write_bytes(payload)
        return hashlib.sha256(payload).hexdigest()


def read_canaries(path: Path) -> tuple[CanarySet, str]:
    """The canaries in file ``path`` and the file's SHA-256 (to check against the ledger)."""
    payload = path.read_bytes()
    try:
        raw = json.loads(payload)
        canaries = CanarySet(int(raw["seed"]), int(raw["dimension"]), tuple(bool(c) for c in raw["included"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a canary file: {exc}") from exc
    return canaries, hashlib.sha256(payload).hexdigest()
