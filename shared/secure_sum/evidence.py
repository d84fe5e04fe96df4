"""What the secure sum keeps for the audit (``secure-sum.npz``), as types: the server writes
them, the audit reads them, and no array's name is spelled on both sides.

``KeyEvidence`` is the run's (the key stages'): the neighbour graph, each device's identity key,
its signature over its public keys, its channel key, the run id and the graph's seed.
``ReleaseEvidence`` is one release's, stored as ``<release>.<field>``: the masked sum, who
survived and who dropped, what the unmasking rebuilt, the signatures of the survivor set and
committed sum, and the sketches (or, for a survivor without one, its whole masked vector).
A field missing from the file is a ``KeyError`` naming the array, as the audit reports it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

Evidence = TypeVar("Evidence", bound="_Arrays")
GROUP_OF_KEY = "group-of"  # with secure-groups: each protocol index's group (-1: in none)


def evidence_prefix(release: str, group: int | None = None) -> str:
    """The prefix of ``release``'s arrays: its name, or with ``secure-groups`` its name and the
    group's (``popularity@group-0``), each group being a secure sum of its own."""
    return release if group is None else f"{release}@group-{group}"


def _kebab(name: str) -> str:
    return name.replace("_", "-")


@dataclass(frozen=True)
class _Arrays:
    @classmethod
    def key(cls, field: str, release: str = "") -> str:
        """The array's name in ``secure-sum.npz`` (``field`` as the attribute is named)."""
        if field not in {f.name for f in dataclasses.fields(cls)}:
            raise AttributeError(f"{cls.__name__} has no field {field!r}")
        return f"{release}.{_kebab(field)}" if release else _kebab(field)

    def arrays(self, release: str = "") -> dict[str, np.ndarray]:
        return {self.key(f.name, release): getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def of(cls: type[Evidence], arrays: Mapping[str, np.ndarray], release: str = "") -> Evidence:
        return cls(**{f.name: arrays[cls.key(f.name, release)] for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class KeyEvidence(_Arrays):
    neighbours: np.ndarray  # int64 (devices x degree), -1 where a device has fewer
    identity_keys: np.ndarray  # uint8 (devices x 32); zeros: took no part
    key_signatures: np.ndarray  # uint8 (devices x 64): each identity's signature over its device's public keys
    channel_publics: np.ndarray  # uint8 (devices x 32)
    run_id: np.ndarray  # str
    graph_seed: np.ndarray  # str


@dataclass(frozen=True)
class ReleaseEvidence(_Arrays):
    masked_sum: np.ndarray  # uint64: the masked vectors added as integers; the signers signed its SHA-256
    survivors: np.ndarray  # int64
    seeds: np.ndarray  # uint8 (survivors x 16): their self-mask seeds, rebuilt from the returned shares
    dropped: np.ndarray  # int64: asked for an input, sent none
    dropped_keys: np.ndarray  # uint8 (dropped x 32): their mask keys for this release, rebuilt
    mask_publics: np.ndarray  # uint8 (devices x 32): every device's mask public key for this release
    unmasked: np.ndarray  # int64: the unmasked sum, centred
    signers: np.ndarray  # uint8 (k x 32): identity keys that signed the survivor set and committed sum
    signatures: np.ndarray  # uint8 (k x 64)
    sketched: np.ndarray  # int64: survivors whose signed sketch was their masked vector's
    sketches: np.ndarray  # uint8 (sketched x SKETCH_BYTES)
    sketch_signatures: np.ndarray  # uint8 (sketched x 64)
    unsketched: np.ndarray  # int64: the other survivors
    unsketched_vectors: np.ndarray  # uint32 (unsketched x dimension): their masked vectors, whole
