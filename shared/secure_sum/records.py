"""The secure sum's stage messages as types: what the server asks at each stage and what a device
answers, each field named once.

A TRAIN message of a secure stage carries its fields in the ``secure`` record
(:func:`shared.messages.secure_message`); the server builds a request with ``.fields()`` and
reads a reply with ``.of(...)``, the device the other way round. The types convert what Flower's
records hold (lists of ints, strings, bytes) into the protocol's own, so no stage reads a raw
key: a field missing from a message is a :class:`MissingField` (a device refuses the message, a
server drops the reply). The record a device signs with its masked input is not here: it is the
session's (:meth:`shared.secure_sum.session.DeviceSession.masked_input`), read by the audit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

Record = TypeVar("Record", bound="StageRecord")


class MissingField(ValueError):
    """A stage message without a field its stage needs."""


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _bytes(value: Any) -> bytes:
    """Bytes as they came; anything else is refused (``bytes(n)`` of an integer would be n zeros)."""
    if not isinstance(value, (bytes, bytearray)):
        raise TypeError(f"{type(value).__name__} where bytes are expected")
    return bytes(value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{type(value).__name__} where an integer is expected")
    return value


def _list(convert):
    def converted(values: Any) -> list:
        if not isinstance(values, (list, tuple)):
            raise TypeError(f"{type(values).__name__} where a list is expected")
        return [convert(v) for v in values]

    return converted


_CONVERT = {"int": _int, "str": str, "bytes": _bytes, "list[int]": _list(_int), "list[str]": _list(str), "list[bytes]": _list(_bytes)}


@dataclass(frozen=True)
class StageRecord:
    """One stage's fields; the record key of each is its name in kebab case."""

    def fields(self) -> dict[str, Any]:
        return {_kebab(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def of(cls: type[Record], fields: Mapping[str, Any]) -> Record:
        values = {}
        for f in dataclasses.fields(cls):
            key = _kebab(f.name)
            if key in fields:
                values[f.name] = _CONVERT[str(f.type)](fields[key])
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise MissingField(f"a {cls.__name__} without its {key!r}")
        return cls(**values)  # a value of the wrong kind is a TypeError: refused or dropped as a missing one


@dataclass(frozen=True)
class KeysRequest(StageRecord):
    """Stage 1: a device's place in the run, and the releases' dimensions (one key pair each)."""

    devices: int
    dimensions: list[int]
    index: int


@dataclass(frozen=True)
class KeysReply(StageRecord):
    mask_public: bytes  # one 32-byte public key per release
    channel_public: bytes
    dimensions: list[int] = dataclasses.field(default_factory=list)  # the request's, echoed (the server does not read them)
    identity_key: str = ""  # hex Ed25519 public key; empty: none (a server drops such a device from the graph)
    key_signature: bytes = b""  # the identity key's signature over the public keys (identity.key_bundle_message)


@dataclass(frozen=True)
class ShareRequest(StageRecord):
    """Stage 2: who takes part, and this device's neighbours with their signed public keys."""

    devices: int
    dimensions: list[int]
    participant_indices: list[int]
    participant_identities: list[str]
    neighbours: list[int]
    mask_publics: list[bytes]
    channel_publics: list[bytes]
    identity_keys: list[str]
    key_signatures: list[bytes]


@dataclass(frozen=True)
class ShareReply(StageRecord):
    ciphertexts: list[bytes]  # one per neighbour, in the request's order


@dataclass(frozen=True)
class InputRequest(StageRecord):
    """Stage 3, per release: the devices taking part, and the shares this device holds for its neighbours."""

    devices: int
    dimensions: list[int]
    release: str
    participants: list[int]
    held: list[bytes]


@dataclass(frozen=True)
class ConfirmRequest(StageRecord):
    """The consistency round: the survivor set each survivor is asked to sign, and the SHA-256 of
    the masked sum (kept as integers) the server commits to before any sketch of it is drawn."""

    devices: int
    dimensions: list[int]
    release: str
    participants: list[int]
    survivors: list[int]
    masked_sum: str


@dataclass(frozen=True)
class ConfirmReply(StageRecord):
    identity_key: str = ""
    signature: bytes = b""  # over the survivor set and the committed sum (identity.survivors_message)
    sketch: bytes = b""  # the device's masked vector sketched with the matrix the commitment seeds
    sketch_signature: bytes = b""  # over the sketch (identity.sketch_message)


@dataclass(frozen=True)
class UnmaskRequest(StageRecord):
    """Stage 4, per release: survivors and dropped devices, with the survivors' signatures of the set."""

    devices: int
    dimensions: list[int]
    release: str
    participants: list[int]
    survivors: list[int]
    dropped: list[int]
    signers: list[str]
    signatures: list[bytes]


@dataclass(frozen=True)
class UnmaskReply(StageRecord):
    seed_owners: list[int]  # the survivors whose self-mask seed share this device returns
    seed_shares: list[bytes]
    key_owners: list[int]  # the dropped devices whose mask key share it returns
    key_shares: list[bytes]
