"""Key agreement, mask streams, share encryption and secret sharing: library primitives only.

- Key agreement: X25519 (``cryptography``); every secret is derived from the agreed value by
  HKDF-SHA256 with a label saying what it is for, so a mask key never doubles as an encryption key.
- Masks: a ChaCha20 keystream keyed by the whole 256-bit derived key, read as ``uint32``: uniform
  in Z_{2^32}, and not searchable (Flower 1.41's SecAgg+ expands masks with numpy's RandomState
  from a 32-bit seed, which a curious server can enumerate; this is the reason we do not use it).
- Shares travel through the server encrypted with AES-256-GCM under a key only the two devices
  agree on, with both parties' indices as associated data.
- Shamir sharing of 32-byte secrets: Flower's helpers over pycryptodome's ``Shamir`` (GF(2^128)).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares

SECRET_BYTES = 32
_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def new_private_key() -> bytes:
    """A fresh X25519 private key, as its 32 raw bytes."""
    key = X25519PrivateKey.generate()
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def public_key(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(*_RAW)


def derive(private: bytes, peer_public: bytes, label: str) -> bytes:
    """A 32-byte key only the holders of ``private`` and of ``peer_public``'s private key know."""
    shared = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"fedmmrec secure-sum {label}".encode()).derive(shared)


def release_key(secret: bytes, release: str) -> bytes:
    """The mask key of one release, from a pairwise key or a self-mask seed."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"fedmmrec mask {release}".encode()).derive(secret)


def mask_stream(key: bytes, size: int) -> np.ndarray:
    """``size`` uniform elements of Z_{2^32} from ChaCha20 keyed by ``key`` (256 bits)."""
    encryptor = Cipher(algorithms.ChaCha20(key, b"\x00" * 16), mode=None).encryptor()
    return np.frombuffer(encryptor.update(b"\x00" * (4 * size)), dtype="<u4").astype(np.uint32)


def new_seed() -> bytes:
    return os.urandom(SECRET_BYTES)


def encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def decrypt(key: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    """Raises ``cryptography.exceptions.InvalidTag`` for a forged or redirected ciphertext."""
    return AESGCM(key).decrypt(ciphertext[:12], ciphertext[12:], associated)


def share(secret: bytes, threshold: int, holders: int) -> list[bytes]:
    """Shamir shares of ``secret``: any ``threshold`` of the ``holders`` rebuild it, fewer learn nothing."""
    return create_shares(secret, threshold, holders)


def rebuild(shares: list[bytes]) -> bytes:
    return combine_shares(shares)


def digest(vector: np.ndarray) -> str:
    """SHA-256 of a masked vector's bytes (what a device signs)."""
    return hashlib.sha256(np.ascontiguousarray(vector, dtype="<u4").tobytes()).hexdigest()


SKETCH_ROWS = 16


def sketch_matrix(seed: bytes, dimension: int) -> np.ndarray:
    """A public ``SKETCH_ROWS x dimension`` matrix over Z_{2^32}, from a seed everyone derives."""
    return mask_stream(hashlib.sha256(b"fedmmrec sketch " + seed).digest(), SKETCH_ROWS * dimension).reshape(SKETCH_ROWS, dimension)


def sketch(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``matrix @ vector`` in Z_{2^32} (uint64 products wrap mod 2^64, a multiple of 2^32)."""
    product = matrix.astype(np.uint64) @ np.asarray(vector, dtype=np.uint64)
    return (product & np.uint64(0xFFFFFFFF)).astype(np.uint32)
