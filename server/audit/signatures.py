"""The audit's ``spend-signed`` check: each device's spend in the ledger is what the device signed.

For every counted client-round entry (:mod:`shared.privacy.spend_signature`):

- a signed entry must verify against the public key it records, over the fields the ledger
  holds (a rewritten noise multiplier, history or epsilon breaks it);
- a device identity keeps one key: a key that changes mid-run is a substitution;
- an identity that signed once must sign every later entry (no quiet downgrade);
- in a simulation, the key must be the simulated device's own (``devices/partition-N/
  device-key.pem``), so a server cannot re-sign with keys of its own; on real devices, with
  ``--node-keys DIR``, one of the SuperNodes' authorised public keys (``fedmmrec deploy certs``
  wrote them, ``*/node.pub``).
"""

from __future__ import annotations

from pathlib import Path

from shared.privacy.ledger import Entry
from shared.privacy.spend_signature import (
    KEY_FILE,
    load_or_create_key,
    public_pem,
    verify,
)
from shared.run_directory import RunDirectory

CHECK = "spend-signed"


def _device_keys(run: RunDirectory) -> dict[str, str]:
    """Simulated devices' public keys by identity (``partition-N``), from their state folders."""
    keys = {}
    for folder in run.device_folders().values():
        if (folder / KEY_FILE).is_file():
            keys[folder.name] = public_pem(load_or_create_key(folder / KEY_FILE))
    return keys


def authorised_keys(folder: str | Path) -> set[str]:
    """The SuperNodes' public keys (``*/node.pub``, OpenSSH format) as PEM, as devices record them."""
    from cryptography.hazmat.primitives import serialization

    keys = set()
    for path in sorted(Path(folder).glob("*/node.pub")):
        key = serialization.load_ssh_public_key(path.read_bytes())
        keys.add(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode())
    if not keys:
        raise ValueError(f"{folder}: no */node.pub public keys found")
    return keys


def audit_signatures(report, run: RunDirectory, entries: list[Entry], node_keys: str | Path | None = None) -> None:
    counted = [e for e in entries if e.kind == "client-round" and not e.body.get("declined") and not e.body.get("rejected")]
    if not counted:
        return
    own_keys = _device_keys(run)
    authorised = authorised_keys(node_keys) if node_keys else None
    first_key: dict[str, str] = {}
    signed = 0
    for entry in counted:
        body = entry.body
        identity, where = str(body.get("identity", "")), f"client {body['client']} round {entry.round}"
        signature, key = body.get("signature"), body.get("public-key")
        if signature is None:
            if identity in first_key or identity in own_keys:
                report.fail(CHECK, f"{where}: unsigned, although device {identity} signs its spend")
            continue
        signed += 1
        if not verify(str(key), {**body, "round": entry.round}, str(signature)):
            report.fail(CHECK, f"{where}: the device's signature does not match the spend the ledger records")
        if identity in first_key and first_key[identity] != key:
            report.fail(CHECK, f"{where}: device {identity} signed with another key than in round one")
        first_key.setdefault(identity, str(key))
        if authorised is not None and key not in authorised:
            report.fail(CHECK, f"{where}: signed with a key that is not one of the authorised SuperNodes' in {node_keys}")
        if identity in own_keys and own_keys[identity] != key:
            report.fail(CHECK, f"{where}: signed with a key that is not simulated device {identity}'s own")
    report.ok(CHECK)
    report.figures["signed spend"] = (
        f"{signed} of {len(counted)} counted client-round entries signed by {len(set(first_key.values()))} device keys"
        + (f" ({len(own_keys)} simulated devices' own keys checked)" if own_keys else "")
    )
