"""Which unmasked sums the protocol can give: the server's abort and the audit's check, one rule.

Under secure aggregation the server never sees a contribution, so it cannot clip one: a device's
input is whatever it masks. What the server (and later the audit) can see is the unmasked sum
``s + noise``: ``s`` is a sum of ``N`` rounded contributions, each of norm at most the rounding
bound ``b`` if its device followed the protocol, and ``noise`` is the devices' Skellam shares, of
the variance they signed (per coordinate, ``V`` in all). By the triangle inequality the realised
noise norm lies within ``N b`` of the sum's norm, and a noise norm outside the chi-square
interval of ``V`` over ``d`` values has probability below ``tail`` (Skellam of variance in the
millions per coordinate is Gaussian to within the interval's own error). A sum whose norm is
above ``N b + sqrt(V chi2_hi(d))`` is one no set of honest contributions gives: a device masked an
out-of-range input (2^31 added to every coordinate, say), or the field wrapped. The server aborts
such a release (nothing released, the reason in the ledger) and the audit fails a run that did
not. A sum below ``sqrt(V chi2_lo(d)) - N b`` carries less noise than the devices signed.

What this does not bound: a device whose input stays inside the window (a few units pushed into
one coordinate of a sum whose norm is large beside them). Bounding that needs verified inputs or
an aggregation robust to a few (the issue on actively secure releases says so).
"""

from __future__ import annotations

import math
from statistics import NormalDist

FALSE_ALARM_PER_RUN = 1e-6  # the audit's; the server aborts at the same line


def chi_square_interval(dimension: int, tail: float) -> tuple[float, float]:
    """Quantiles ``tail`` and ``1 - tail`` of chi-square(d) (Wilson-Hilferty; accurate to a
    fraction of a percent for d in the hundreds and above, the releases' sizes)."""
    z = NormalDist().inv_cdf(1 - tail)
    c = 2.0 / (9.0 * dimension)
    low = dimension * max(0.0, 1 - c - z * math.sqrt(c)) ** 3
    high = dimension * (1 - c + z * math.sqrt(c)) ** 3
    return low, high


def window_tail(releases: int) -> float:
    """The false-alarm rate of one side of one release's window (Bonferroni over a run's releases
    and the audit's three bounds per release)."""
    return FALSE_ALARM_PER_RUN / (3 * max(1, releases))


def noise_window(total_variance: float, contributions: int, bound: float, dimension: int, tail: float) -> tuple[float, float]:
    """(least, largest) norm an unmasked sum of ``contributions`` honest inputs (rounded norm at
    most ``bound`` each) plus noise of ``total_variance`` per coordinate over ``dimension`` values
    can have, but with probability ``tail`` on each side."""
    low, high = chi_square_interval(dimension, tail)
    signal = contributions * bound
    return max(0.0, math.sqrt(total_variance * low) - signal), math.sqrt(total_variance * high) + signal
