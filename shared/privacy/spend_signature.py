"""Devices sign their own privacy spend, so the server cannot lower it in the ledger.

Each round a training device signs a record of what it spent (round, pseudonym, identity,
examples, sample rate, steps, noise multiplier, clip norm, batch size, accountant history,
epsilon, and the L2 norm of the update it sends, which the audit's noise check reads) with its own key: on a real device the key its SuperNode authenticates with
(``node_config["auth-key"]``), in a simulation a key generated for each simulated device and
kept with its state. The server records the record's fields, the signature and the public key in
the ledger; the audit rebuilds the record from the ledger entry and verifies it. A server that
rewrites a device's spend (a higher noise multiplier, fewer steps) has no key to sign the new
record with. ECDSA over NIST P-384 with SHA-384, the curve Flower's node authentication uses.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

KEY_FILE = "device-key.pem"
SIGNED_FIELDS = (
    "round", "client", "identity", "num-examples", "sample-rate", "steps", "noise-multiplier", "clip-norm",
    "batch-size", "history", "epsilon", "update-norm",
)


def spend_record(fields: dict[str, Any]) -> bytes:
    """The canonical bytes a device signs: the signed fields, sorted, as compact JSON."""
    missing = [name for name in SIGNED_FIELDS if name not in fields]
    if missing:
        raise KeyError(f"spend record lacks {', '.join(missing)}")
    record = {
        "round": int(fields["round"]),
        "client": str(fields["client"]),
        "identity": str(fields["identity"]),
        "num-examples": int(fields["num-examples"]),
        "sample-rate": float(fields["sample-rate"]),
        "steps": int(fields["steps"]),
        "noise-multiplier": float(fields["noise-multiplier"]),
        "clip-norm": float(fields["clip-norm"]),
        "batch-size": int(fields["batch-size"]),
        "history": [[float(s), float(q), int(n)] for s, q, n in fields["history"]],
        "epsilon": float(fields["epsilon"]),
        "update-norm": float(fields["update-norm"]),
    }
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


@functools.lru_cache(maxsize=4096)
def device_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """:func:`load_or_create_key`, once per process and path: a simulation worker serves many
    devices for many rounds, and parsing a PEM key each round is work done again."""
    return load_or_create_key(path)


def load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The device's signing key at ``path`` (PEM, or the OpenSSH format of a SuperNode's auth
    key), created (owner-only permissions) on first use."""
    if path.is_file():
        data = path.read_bytes()
        if data.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):  # a SuperNode's auth key
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path}: not an elliptic-curve private key")
        return key
    key = ec.generate_private_key(ec.SECP384R1())
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    return key


def public_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def sign(key: ec.EllipticCurvePrivateKey, fields: dict[str, Any]) -> str:
    return key.sign(spend_record(fields), ec.ECDSA(hashes.SHA384())).hex()


def verify(public_key_pem: str, fields: dict[str, Any], signature: str) -> bool:
    """Whether ``signature`` is the holder of ``public_key_pem`` signing exactly ``fields``."""
    try:
        return _verify_bytes(public_key_pem, spend_record(fields), signature)
    except (KeyError, ValueError, TypeError):  # a field missing or malformed: not what was signed
        return False


def _verify_bytes(public_key_pem: str, signed: bytes, signature: str) -> bool:
    try:
        key = serialization.load_pem_public_key(public_key_pem.encode())
        key.verify(bytes.fromhex(signature), signed, ec.ECDSA(hashes.SHA384()))
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def canonical_record(record: dict[str, Any]) -> bytes:
    """Any signed record (a secure-aggregation share, say) as the canonical bytes signed."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def sign_record(key: ec.EllipticCurvePrivateKey, record: dict[str, Any]) -> str:
    return key.sign(canonical_record(record), ec.ECDSA(hashes.SHA384())).hex()


def verify_record(public_key_pem: str, record: dict[str, Any], signature: str) -> bool:
    """Whether ``signature`` is the holder of ``public_key_pem`` signing exactly ``record``."""
    try:
        return _verify_bytes(public_key_pem, canonical_record(record), signature)
    except (ValueError, TypeError):  # not JSON-serialisable (NaN, an object): not what was signed
        return False
