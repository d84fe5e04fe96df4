"""The two steps every mechanism here takes: bound a contribution's L2 norm, and add Gaussian
noise to a sum of bounded contributions.

Used by DP-FedAvg (:mod:`server.mechanisms.dp_fedavg.noise`, each device's model update), by the
server's Gaussian releases (:mod:`server.mechanisms.gaussian_releases`, each device's statistic)
and by a device's secure-sum input (:mod:`shared.secure_sum.session`, which clips before it
rounds). numpy only: a default-mode device imports it.
"""

from __future__ import annotations

import numpy as np


def clip(update: np.ndarray, clip_norm: float) -> tuple[np.ndarray, float]:
    """``update`` scaled to L2 norm at most ``clip_norm``; also its norm before clipping."""
    norm = float(np.linalg.norm(update))
    return (update * min(1.0, clip_norm / norm) if norm > 0 else update), norm


def gaussian_noise(rng: np.random.Generator, size: int, std: float) -> np.ndarray:
    """The noise added to a clipped sum (a function of its own so tests can break it)."""
    return rng.normal(0.0, std, size=size)
