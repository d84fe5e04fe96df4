"""Key agreement, mask streams, share encryption and secret sharing: library primitives only.

- Key agreement: X25519 (``cryptography``); every secret is derived from the agreed value by
  HKDF-SHA256 with a label saying what it is for, so a mask key never doubles as an encryption key.
- Masks: a ChaCha20 keystream keyed by the whole 256-bit derived key, read as ``uint32``: uniform
  in Z_{2^32}, and not searchable (Flower 1.41's SecAgg+ expands masks with numpy's RandomState
  from a 32-bit seed, which a curious server can enumerate; this is the reason we do not use it).
- Shares travel through the server encrypted with AES-256-GCM under a key only the two devices
  agree on, with both parties' indices as associated data.
- Shamir sharing: pycryptodome's ``Shamir`` (GF(2^128), the library under Flower's helpers),
  one polynomial per 16-byte block, in Flower's share layout (4-byte index, then the blocks).
  Flower's ``combine_shares`` pads a 32-byte secret to three blocks and starts a thread pool per
  call (54 ms at threshold 17); the server rebuilds a seed per device per release, so 943
  devices waited about a minute a release. Self-mask seeds are 128 bits (one block, 10 ms),
  expanded by HKDF into the 256-bit ChaCha20 key; mask private keys are two blocks.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterable, Iterator

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from Crypto.Protocol.SecretSharing import Shamir, _Element

SEED_BYTES = 16  # a self-mask seed: 128 bits, expanded by HKDF (release_key)
BLOCK = 16  # Shamir over GF(2^128) shares 16 bytes per polynomial
_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def new_private_key() -> bytes:
    """A fresh X25519 private key, as its 32 raw bytes."""
    key = X25519PrivateKey.generate()
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def public_key(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(*_RAW)


def derive(private: bytes, peer_public: bytes, label: str) -> bytes:
    """A 32-byte key only the holders of ``private`` and of ``peer_public``'s private key know."""
    return derive_many(private, [peer_public], label)[0]


def derive_many(private: bytes, peer_publics: list[bytes], label: str) -> list[bytes]:
    """:func:`derive` with each of ``peer_publics``, loading ``private`` once (loading it was
    as slow as the key agreement itself, and a device agrees with all its neighbours)."""
    key = X25519PrivateKey.from_private_bytes(private)
    info = f"fedmmrec secure-sum {label}".encode()
    return [
        HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key.exchange(X25519PublicKey.from_public_bytes(p)))
        for p in peer_publics
    ]


def release_key(secret: bytes, release: str) -> bytes:
    """The mask key of one release, from a pairwise key or a self-mask seed."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"fedmmrec mask {release}".encode()).derive(secret)


def _keystream(key: bytes):
    """ChaCha20 keyed by ``key`` (256 bits) with a zero nonce: every key here is derived for one
    purpose and one release (HKDF labels for masks; the sketch's SHA-256 of its release, its
    participants and the committed sum), so no two different streams share a key."""
    return Cipher(algorithms.ChaCha20(key, b"\x00" * 16), mode=None).encryptor()


def mask_stream(key: bytes, size: int) -> np.ndarray:
    """``size`` uniform elements of Z_{2^32} from ChaCha20 keyed by ``key`` (256 bits)."""
    return np.frombuffer(_keystream(key).update(b"\x00" * (4 * size)), dtype="<u4").astype(np.uint32)


def new_seed() -> bytes:
    return os.urandom(SEED_BYTES)


def encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def decrypt(key: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    """Raises ``cryptography.exceptions.InvalidTag`` for a forged or redirected ciphertext."""
    return AESGCM(key).decrypt(ciphertext[:12], ciphertext[12:], associated)


def share(secret: bytes, threshold: int, holders: int) -> list[bytes]:
    """Shamir shares of ``secret`` (a whole number of 16-byte blocks): any ``threshold`` of the
    ``holders`` rebuild it, fewer learn nothing. Share ``j`` is ``j`` (4 bytes, little-endian)
    followed by its share of each block."""
    if not secret or len(secret) % BLOCK:
        raise ValueError(f"a secret of {len(secret)} bytes: Shamir shares whole {BLOCK}-byte blocks")
    out = [bytearray(j.to_bytes(4, "little")) for j in range(1, holders + 1)]
    for start in range(0, len(secret), BLOCK):
        for index, value in Shamir.split(threshold, holders, secret[start : start + BLOCK], ssss=False):
            out[index - 1] += value
    return [bytes(s) for s in out]


def rebuild(shares: list[bytes], threshold: int | None = None) -> bytes:
    """The secret from shares made by :func:`share`: the ``threshold`` with the lowest indices
    (all given, without one). Any ``threshold`` shares give the same secret; taking the lowest
    makes the interpolation weights the same for most devices, so they are computed once."""
    if not shares:
        raise ValueError("no shares to rebuild from")
    blocks = (len(shares[0]) - 4) // BLOCK
    if blocks < 1 or any(len(s) != 4 + BLOCK * blocks for s in shares):
        raise ValueError("shares of different sizes, or no block in them")
    chosen = sorted(shares, key=lambda s: int.from_bytes(s[:4], "little"))[: threshold or len(shares)]
    indices = tuple(int.from_bytes(s[:4], "little") for s in chosen)
    if len(set(indices)) != len(indices):
        raise ValueError("duplicate share")
    weights = _weights_at_zero(indices)
    out = b""
    for b in range(blocks):
        value = _Element(0)
        for weight, s in zip(weights, chosen):
            value += _Element(s[4 + BLOCK * b : 4 + BLOCK * (b + 1)]) * weight
        out += value.encode()
    return out


@functools.lru_cache(maxsize=1024)
def _weights_at_zero(indices: tuple[int, ...]) -> tuple:
    """The Lagrange weights at 0 for shares at ``indices``, in pycryptodome's GF(2^128).

    This is ``Crypto.Protocol.SecretSharing.Shamir.combine``'s own loop (ssss=False) with the
    weight of each share taken out of it, so that one set of indices is inverted once rather
    than once per device: the library's combine spent 24 ms per seed, over a minute a release
    at 943 devices. tests/test_secure_sum.py checks it against ``Shamir.combine``."""
    xs = [_Element(i) for i in indices]
    weights = []
    for j, x_j in enumerate(xs):
        numerator, denominator = _Element(1), _Element(1)
        for m, x_m in enumerate(xs):
            if m != j:
                numerator *= x_m
                denominator *= x_j + x_m
        weights.append(numerator * denominator.inverse())
    return tuple(weights)


def digest(vector: np.ndarray) -> str:
    """SHA-256 of a masked vector's bytes (what a device signs)."""
    return hashlib.sha256(np.ascontiguousarray(vector, dtype="<u4").tobytes()).hexdigest()


def sum_digest(total: np.ndarray) -> str:
    """SHA-256 of a masked sum kept as integers (``uint64``: the masked vectors added without
    reduction): what the server commits to before any sketch of it is drawn."""
    return hashlib.sha256(np.ascontiguousarray(total, dtype="<u8").tobytes()).hexdigest()


SKETCH_ROWS = 4
SKETCH_BYTES = 8 * SKETCH_ROWS


def sketch_rows(seed: bytes, dimension: int) -> Iterator[np.ndarray]:
    """The rows of the ``SKETCH_ROWS x dimension`` sketch matrix over Z_{2^64}, drawn one at a
    time: the first ``SKETCH_ROWS * dimension`` 64-bit words of the seed's ChaCha20 keystream,
    row after row. The seed holds the SHA-256 of the masked sum the server committed to
    (:func:`shared.secure_sum.session.sketch_seed`), so the matrix exists only once the sum is
    fixed. Over Z_{2^64}, of the integer sum (no reduction mod 2^32), a change ``v`` to the sum
    that moves the released sum (``v`` not 0 mod 2^32) leaves a row's ``S v`` at 0 with
    probability at most 2^-33, all four with at most 2^-132; over Z_{2^32}, a change of 2^31 in
    chosen coordinates passed a row with probability 1/2 (16 rows: 2^-16, few enough to search
    through). A deployed device sketches from these and never holds the matrix."""
    encryptor = _keystream(hashlib.sha256(b"fedmmrec sketch " + seed).digest())
    zeros = bytes(8 * dimension)
    for _ in range(SKETCH_ROWS):
        yield np.frombuffer(encryptor.update(zeros), dtype="<u8")


@functools.lru_cache(maxsize=3)
def sketch_matrix(seed: bytes, dimension: int) -> np.ndarray:
    """The whole matrix of :func:`sketch_rows`, read-only ``uint64``, kept per process: every
    device of a release in a simulation worker uses the same one, and so does the audit."""
    matrix = np.empty((SKETCH_ROWS, dimension), dtype=np.uint64)
    for target, row in zip(matrix, sketch_rows(seed, dimension)):
        target[:] = row
    matrix.flags.writeable = False
    return matrix


def sketch(rows: Iterable[np.ndarray], vector: np.ndarray) -> np.ndarray:
    """``matrix @ vector`` in Z_{2^64} (``uint64`` products and sums wrap mod 2^64, exactly);
    ``rows``: the matrix, or :func:`sketch_rows`; ``vector``: a masked vector (``uint32``,
    lifted) or a masked sum kept as integers (``uint64``)."""
    wide = np.asarray(vector, dtype=np.uint64)
    return np.array([int(np.dot(np.asarray(row, dtype=np.uint64), wide)) for row in rows], dtype=np.uint64)


def sketch_bytes(values: np.ndarray) -> bytes:
    """A sketch as the bytes a device signs and sends (little-endian words)."""
    return np.ascontiguousarray(values, dtype="<u8").tobytes()


def sketch_of_bytes(blob: bytes) -> np.ndarray:
    """The inverse of :func:`sketch_bytes`; a blob of another length is a ``ValueError``."""
    if len(blob) != SKETCH_BYTES:
        raise ValueError(f"a sketch of {len(blob)} bytes: {SKETCH_BYTES} expected")
    return np.frombuffer(blob, dtype="<u8").astype(np.uint64)
