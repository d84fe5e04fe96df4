"""Each device's long-term identity key, and the roster of keys the devices trust, not the server.

Why: with keys the server relays unsigned, a malicious server can substitute a device's public
keys (and agree masks with its neighbours itself), or tell different devices different survivor
sets and so learn both secrets of one device. Bonawitz et al. (CCS 2017, the actively secure
variant; Bell et al. 2020 for the sparse graph) close both with signatures under keys the server
cannot forge: each device signs its per-run public keys, and, before it reveals any share, every
survivor signs the survivor set it was shown; a device reveals nothing until it holds valid
signatures on that same set from at least the plan's minimum of distinct devices of the roster.

- The identity key is Ed25519 (``cryptography``; verifying a release's several hundred
  signatures costs a device tens of milliseconds). A simulated device keeps it in its state folder
  (``identity-key.pem``); a deployed device names it in its node config (``identity-key``).
- The roster is the set of the devices' identity public keys. A deployed device reads it from its
  node config (``roster``: a file the deployment's operator hands each device apart from the
  SuperLink, written by ``fedmmrec deploy certs``). A simulated device reads the keys in the
  simulated devices' own state folders (the run's ``device-state-dir``), which only the devices
  write: in a simulation every party is this code, so the roster is as trusted as the harness.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

IDENTITY_KEY_FILE = "identity-key.pem"
ROSTER_FORMAT = "fedmmrec-roster/1"


class RosterError(ValueError):
    """The roster or identity key cannot be read; the message names the file and the problem."""


def load_or_create_identity(path: str | Path) -> ed25519.Ed25519PrivateKey:
    """The Ed25519 key in ``path``, made (owner-only, atomically) on first use."""
    path = Path(path)
    if path.exists():
        return load_identity(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(tmp, path)  # never replaces a key another process made meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return load_identity(path)


@functools.lru_cache(maxsize=4096)
def load_identity(path: Path) -> ed25519.Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise RosterError(f"{path}: not a readable identity key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise RosterError(f"{path}: not an Ed25519 key")
    return key


def public_hex(key: ed25519.Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def sign(key: ed25519.Ed25519PrivateKey, message: bytes) -> bytes:
    return key.sign(message)


def verify(public: str, signature: bytes, message: bytes) -> bool:
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(public)).verify(bytes(signature), message)
        return True
    except (InvalidSignature, ValueError):
        return False


def key_bundle_message(run: str, index: int, mask_publics: bytes, channel_public: bytes) -> bytes:
    """What a device signs at the key stage: its run, protocol index and public keys."""
    return hashlib.sha256(b"fedmmrec keys|" + f"{run}|{index}|".encode() + bytes(mask_publics) + b"|" + bytes(channel_public)).digest()


def participants_digest(participants: dict[int, str]) -> str:
    """SHA-256 of a participant list (index -> identity key): the survivor-set signatures bind it,
    so the minimum of signers agree on one list, and so on one graph."""
    return hashlib.sha256(json.dumps(sorted((int(i), str(k)) for i, k in participants.items())).encode()).hexdigest()


def survivors_message(run: str, release: str, survivors: list[int], participants: str, masked_sum: str) -> bytes:
    """What every survivor signs before any share is revealed: the run, the release, the set, the
    digest of the participant list it shared its keys under, and the SHA-256 of the masked sum
    the server committed to (so the minimum of signers agree on one sum, fixed before the sketch
    that checks it is drawn)."""
    return hashlib.sha256(
        f"fedmmrec survivors|{run}|{release}|{','.join(map(str, sorted(survivors)))}|{participants}|{masked_sum}".encode()).digest()


def sketch_message(run: str, release: str, index: int, masked_sum: str, sketch: bytes) -> bytes:
    """What a device signs with its sketch: whose, of which release, under which committed sum."""
    return hashlib.sha256(f"fedmmrec sketch|{run}|{release}|{index}|{masked_sum}|".encode() + bytes(sketch)).digest()


@dataclass(frozen=True)
class Roster:
    """The devices' identity keys, and the seed their neighbour graph is drawn with: the roster's
    own (random, written with it by the operator) or, for a simulation's roster, empty (the run id
    then seeds the graph). ``len`` is the population: a device plans for it, not for the number
    of devices a server says take part."""

    keys: frozenset[str]
    seed: str = ""

    def __contains__(self, key: object) -> bool:
        return key in self.keys

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self):
        return iter(self.keys)

    def graph_seed(self, run: str) -> str:
        return self.seed or f"run {run}"


def write_roster(path: str | Path, keys: list[str], seed: str | None = None) -> Path:
    """The roster file: the keys and a fresh random seed for the graph (the server cannot choose it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"format": ROSTER_FORMAT, "keys": sorted(keys), "seed": seed or secrets.token_hex(32)}
    path.write_text(json.dumps(body, indent=1), encoding="utf-8")
    return path


@functools.lru_cache(maxsize=64)
def _roster_file(path: Path, stamp: float) -> Roster:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw["format"] != ROSTER_FORMAT:
            raise ValueError(f"format {raw['format']!r}, expected {ROSTER_FORMAT!r}")
        keys = frozenset(str(k) for k in raw["keys"])
        if any(len(bytes.fromhex(k)) != 32 for k in keys):
            raise ValueError("a key is not 32 bytes of hex")
        seed = str(raw["seed"])
        if len(bytes.fromhex(seed)) < 16:
            raise ValueError("the graph seed is shorter than 16 bytes of hex")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RosterError(f"{path}: not a roster of identity keys ({exc})") from None
    return Roster(keys, seed)


def roster_from_file(path: str | Path) -> Roster:
    path = Path(path)
    try:
        stamp = path.stat().st_mtime
    except OSError as exc:
        raise RosterError(f"{path}: no roster there ({exc.strerror})") from None
    return _roster_file(path, stamp)


@functools.lru_cache(maxsize=64)
def _simulated(folder: Path, names: tuple[str, ...]) -> Roster:
    return Roster(frozenset(public_hex(load_identity(folder / name / IDENTITY_KEY_FILE)) for name in names))


def roster_of_simulated_devices(folder: str | Path) -> Roster:
    """The identity keys in the simulated devices' state folders under ``folder``."""
    folder = Path(folder)
    names = tuple(sorted(p.parent.name for p in folder.glob(f"partition-*/{IDENTITY_KEY_FILE}")))
    return _simulated(folder, names)


def identity_public_from_file(path: str | Path) -> str:
    """The hex public key of the identity key in ``path``."""
    return public_hex(load_identity(Path(path)))


def provision(folders: list[Path], roster: Path) -> tuple[list[Path], Path]:
    """What a deployment does on one machine for a trial: each device makes its identity key in its
    own folder (``<folder>/identity-key.pem``; an existing key is kept), and the roster of their
    public halves is written to ``roster``. On real devices each runs ``fedmmrec deploy identity``
    itself and only the public half reaches whoever writes the roster."""
    paths = [Path(folder) / IDENTITY_KEY_FILE for folder in folders]
    keys = [public_hex(load_or_create_identity(p)) for p in paths]
    return paths, write_roster(roster, keys)
