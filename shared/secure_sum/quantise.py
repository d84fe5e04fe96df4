"""From a real vector of L2 norm at most ``c`` to integers in the field Z_{2^32}.

The device scales its clipped statistic by ``scale`` and rounds each coordinate up or down at
random (unbiased); it repeats the rounding until the rounded vector's norm is within
:func:`rounding_bound` (*conditional* randomised rounding, Kairouz, Liu and Steinke 2021, Lemma
4.1: each try passes with probability at least ``1 - beta``). The bound, not ``c * scale``, is
the sensitivity the accounting uses, so the rounding's inflation of the norm is paid for.

Sums live modulo ``2^32`` (``uint32`` arithmetic wraps there). The sum of ``n`` contributions
has coordinates of magnitude at most ``n * bound``; with the noise's tail it must stay below
``2^31`` to be read back as a signed integer: :func:`check_no_overflow` is checked before any
device is asked for anything.
"""

from __future__ import annotations

import math

import numpy as np

FIELD_BITS = 32
FIELD = 1 << FIELD_BITS
ROUNDING_BETA = math.exp(-0.5)  # chance a rounding try fails the bound; sqrt(2 ln 1/beta) = 1
NOISE_TAIL_STDS = 12.0  # the noise's overflow margin: P(|N(0,1)| > 12) < 1e-32 per coordinate
MAX_SCALE_BITS = 24


def rounding_bound(clip: float, scale: float, dimension: int, beta: float = ROUNDING_BETA) -> float:
    """The L2 norm a conditionally rounded vector never exceeds (integer domain)."""
    c = clip * scale
    d = float(dimension)
    conditional = c * c + d / 4.0 + math.sqrt(2.0 * math.log(1.0 / beta)) * (c + math.sqrt(d) / 2.0)
    return math.sqrt(min(conditional, (c + math.sqrt(d)) ** 2))


def l1_bound(l2_bound: float, dimension: int) -> float:
    """L1 norm bound of an integer vector with L2 norm at most ``l2_bound`` (|x| <= x^2 for
    integers, and Cauchy-Schwarz)."""
    return l2_bound * min(math.sqrt(dimension), l2_bound)


def conditional_round(vector: np.ndarray, scale: float, bound: float, rng: np.random.Generator, tries: int = 1000) -> np.ndarray:
    """``vector * scale`` rounded at random to integers (int64) with L2 norm at most ``bound``."""
    scaled = np.asarray(vector, dtype=np.float64) * scale
    floor = np.floor(scaled)
    fraction = scaled - floor
    for _ in range(tries):
        rounded = floor + (rng.random(scaled.shape) < fraction)
        if float(np.linalg.norm(rounded)) <= bound:
            return rounded.astype(np.int64)
    raise RuntimeError(f"randomised rounding failed its norm bound {bound:.6g} {tries} times: the input exceeds the clip")


def to_field(values: np.ndarray) -> np.ndarray:
    """Signed integers as elements of Z_{2^32} (``uint32``)."""
    return np.asarray(values, dtype=np.int64).astype(np.uint32)


def from_field(values: np.ndarray) -> np.ndarray:
    """Elements of Z_{2^32} read back as signed integers in [-2^31, 2^31)."""
    return np.asarray(values, dtype=np.uint32).view(np.int32).astype(np.int64)


def overflow_margin(devices: int, bound: float, noise_std: float) -> float:
    """Largest magnitude a coordinate of the sum can take (contributions, plus the noise's tail)."""
    return devices * bound + NOISE_TAIL_STDS * noise_std


def check_no_overflow(devices: int, bound: float, noise_std: float) -> None:
    """Refuse parameters under which the signed sum could wrap around the field."""
    margin = overflow_margin(devices, bound, noise_std)
    if margin >= FIELD / 2:
        raise ValueError(
            f"the sum of {devices} contributions (each coordinate at most {bound:.4g}) plus noise of std "
            f"{noise_std:.4g} could reach {margin:.4g}, past the field's 2^31: lower the scale"
        )


def choose_scale(devices: int, clip: float, dimension: int, noise_std_of_sum: float) -> float:
    """The largest power-of-two scale (at most 2^24) whose sum cannot overflow: the larger the
    scale, the smaller the rounding's share of the sensitivity. ``noise_std_of_sum`` is in
    units of the clip (1 for a unit-sensitivity release with noise std 1)."""
    for bits in range(MAX_SCALE_BITS, 0, -1):
        scale = float(1 << bits)
        std = noise_std_of_sum * scale * 1.5  # headroom: the plan may raise the noise for the accounting
        if overflow_margin(devices, rounding_bound(clip, scale, dimension), std) < FIELD / 2:
            return scale
    raise ValueError(f"no scale keeps the sum of {devices} devices inside the field 2^{FIELD_BITS}")
