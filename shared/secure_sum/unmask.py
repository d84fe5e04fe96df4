"""The server's unmasking arithmetic, which the audit repeats from the run directory.

The masked sum over the devices ``S`` that sent an input is ``sum_u (x_u + noise_u) + sum_u
PRG(b_u) + sum_u sum_v +-PRG(s_uv)`` modulo 2^32. Pairwise masks between two members of ``S``
cancel; what remains is every member's self mask (rebuilt from the seed shares) and the
pairwise masks members share with neighbours that dropped after the masks were fixed (rebuilt
from the dropped device's mask private key and the member's public key).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from shared.secure_sum import masks
from shared.secure_sum.session import pairwise_sign


def unmasked_sum(
    masked_sum: np.ndarray,
    release: str,
    survivors: Sequence[int],
    seeds: Mapping[int, bytes],
    dropped_keys: Mapping[int, bytes],
    mask_publics: Mapping[int, bytes],
    neighbours: Mapping[int, Sequence[int]],
) -> np.ndarray:
    """``sum_u (x_u + noise_u)`` over ``survivors`` in Z_{2^32}."""
    total = np.asarray(masked_sum, dtype=np.uint32).copy()
    size = total.size
    alive = set(survivors)
    missing = sorted(alive - set(seeds))
    if missing:
        raise ValueError(f"no self-mask seed for surviving devices {missing[:5]}")
    for u in survivors:
        total -= masks.mask_stream(masks.release_key(seeds[u], release), size)
    for v, private in dropped_keys.items():
        for u in neighbours[v]:
            if u in alive:
                stream = masks.mask_stream(masks.release_key(masks.derive(private, mask_publics[u], "mask"), release), size)
                # u added sign(u, v) * PRG(s_uv): take it away
                total = total - stream if pairwise_sign(u, v) > 0 else total + stream
    return total
