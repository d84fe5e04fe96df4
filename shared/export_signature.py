"""Exports are signed, and a device ranks only with an export signed by a key it already trusts.

The manifest of an export lists every file's SHA-256; signing the manifest signs the files. A
manifest whose hashes were recomputed after an edit is still a valid manifest, so the hashes
alone protect against corruption, not against whoever can write the folder (a mirror, a
compromised update channel). The server signs the manifest (ECDSA P-384, SHA-384, over its
canonical JSON without the signature) with a key it keeps: the deployment's ``export.key``
(``fedmmrec deploy certs``), or, by default, the run's own ``export-key.pem``. The device holds
the matching public key from before (installed with the app, or ``export.pub`` of the
deployment) and refuses an export that is unsigned, signed by another key, or changed after
signing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from shared.privacy.spend_signature import load_or_create_key, public_pem, sign_record, verify_record

SIGNATURE_FIELDS = ("signer", "signature")


def signed_manifest(manifest: dict[str, Any], key_path: Path) -> dict[str, Any]:
    """``manifest`` with the signer's public key and its signature over everything else."""
    try:
        key = load_or_create_key(key_path)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{key_path}: not a usable signing key ({exc})") from None
    body = {k: v for k, v in manifest.items() if k not in SIGNATURE_FIELDS}
    body["signer"] = public_pem(key)
    return {**body, "signature": sign_record(key, body)}


def read_public_key(path: str | Path) -> str:
    """A trusted public key file (PEM) as the canonical PEM text signatures name."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: trusted key not found")
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{path}: not a PEM public key ({exc})") from None
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def check_signed(manifest: dict[str, Any], manifest_path: Path, trusted_key: str | Path) -> None:
    """Refuse (``ValueError`` naming the file) a manifest not signed by ``trusted_key``."""
    trusted = read_public_key(trusted_key)
    if "signature" not in manifest or "signer" not in manifest:
        raise ValueError(f"{manifest_path}: not signed: this device ranks only with exports signed by {trusted_key}")
    if str(manifest["signer"]).strip() != trusted.strip():
        raise ValueError(f"{manifest_path}: signed by another key than {trusted_key}: refused")
    body = {k: v for k, v in manifest.items() if k != "signature"}
    if not verify_record(trusted, body, str(manifest["signature"])):
        raise ValueError(f"{manifest_path}: its signature does not verify against {trusted_key}: changed after signing; refused")
