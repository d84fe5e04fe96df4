"""The public catalog's content matrix on the device: computed, or received once and kept by hash.

Ranking with the released model and the selection vote score the catalog's content. Two ways
to have it (:mod:`server.catalog_shipment` is the server's half):

- A simulated device computes it from the catalog features it shares with the server (the
  server's own computation, on the same files).
- A deployed device gets it from the server with the first message that carries the released
  model, and its SHA-256 with every such message. :func:`receive_catalog` (a ClientApp mod)
  checks the hash, keeps the matrix in the device's state folder under that hash and adds
  "held" to the reply, so later messages carry the hash alone; :func:`catalog_content` then
  reads it back (checking the hash again: a file changed on the device is refused). Such a
  device needs neither the catalog's images nor the feature backbones, nor torch.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from client.local_data import LocalData
from shared.array_values import values
from shared.checksums import content_sha256
from shared.item_content import content_matrix
from shared.messages import CATALOG, CATALOG_CONTENT_KEY, CATALOG_HELD_KEY, CATALOG_SHA_KEY, CONFIG

CATALOG_FOLDER = "catalog"  # <state-dir>/catalog/<sha256>.npy
# The most catalog content a device accepts (node config `catalog-max-mb`): a MovieLens-100K
# catalog is about 1.8 MB per 500 items; 64 MB is a catalog of about 18,000 items at that width.
CATALOG_MAX_MB = 64.0
SHA256_HEX = re.compile(r"[0-9a-f]{64}")

_HELD: dict[str, np.ndarray] = {}  # sha256 -> content, this process's copy (the latest only)
_COMPUTED: dict[tuple, tuple] = {}  # (features id, modalities) -> (features, content)


class CatalogContentError(RuntimeError):
    """The device cannot use the catalog content it was given or told to use."""


def _stored_path(node_config: dict, digest: str) -> Path | None:
    """Where the matrix with this SHA-256 lives on the device; the digest comes from the
    server's message, so it must be 64 hex digits before it names a file (never a path)."""
    if not SHA256_HEX.fullmatch(digest):
        raise CatalogContentError(f"catalog-sha256 {digest[:80]!r} is not a SHA-256 (64 hex digits): refused")
    state_dir = node_config.get("state-dir")
    return Path(str(state_dir)) / CATALOG_FOLDER / f"{digest}.npy" if state_dir else None


def _keep(node_config: dict, digest: str, content: np.ndarray, received: bool) -> None:
    """Keep ``content`` in this process and, on a device with a state folder, on disk. Content
    that just ``received`` its hash check replaces whatever file is there (a damaged copy is
    repaired); it is written to a temporary file of its own, flushed, then renamed, so no
    process ever reads a half-written matrix."""
    _HELD.clear()
    _HELD[digest] = content
    path = _stored_path(node_config, digest)
    if path is None or (path.is_file() and not received):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{digest}.", suffix=".npy")
    try:
        with os.fdopen(handle, "wb") as out:
            np.save(out, content, allow_pickle=False)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    # The device keeps the latest catalog only (the server sends another one again when asked),
    # and no temporary file a power cut left behind.
    for old in path.parent.iterdir():
        if old != path and old.suffix == ".npy":
            old.unlink(missing_ok=True)


def catalog_limit_bytes(node_config: dict) -> int:
    """The node config's `catalog-max-mb` (default :data:`CATALOG_MAX_MB`) in bytes."""
    value = node_config.get("catalog-max-mb", CATALOG_MAX_MB)
    try:
        limit = float(value)
    except (TypeError, ValueError):
        limit = float("nan")
    if not limit > 0:
        raise CatalogContentError(f"node config catalog-max-mb = {value!r}: must be a positive number of megabytes")
    return int(limit * 1_000_000)


def receive_catalog(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod: check and keep the catalog content a message carries; tell the server in
    the reply that this device holds it (only when it is on disk, where the next message's
    fresh process will find it)."""
    digest = str(msg.content[CONFIG].get(CATALOG_SHA_KEY, "")) if CONFIG in msg.content.config_records else ""
    node_config = dict(context.node_config)
    if digest and CATALOG in msg.content.array_records:
        shipped = msg.content[CATALOG][CATALOG_CONTENT_KEY]
        limit = catalog_limit_bytes(node_config)
        if len(shipped.data) > limit:  # refused before it is decoded, hashed or written
            raise CatalogContentError(
                f"the catalog content received is {len(shipped.data):,} bytes, over this device's "
                f"catalog-max-mb ({limit:,} bytes): refused (raise it in the node config to accept it)"
            )
        content = values(shipped)  # a view of the message's bytes: a small device holds the matrix once
        if content.dtype != np.float64 or content.ndim != 2:
            raise CatalogContentError(f"the catalog content received is {content.dtype} of shape {content.shape}, not a float64 matrix: refused")
        if content_sha256(content) != digest:
            raise CatalogContentError(f"the catalog content received does not match its SHA-256 {digest}: refused")
        _keep(node_config, digest, content, received=True)
    path = _stored_path(node_config, digest) if digest else None
    held = path is not None and path.is_file()
    reply = call_next(msg, context)
    if held and not reply.has_error():
        reply.content[CATALOG] = ConfigRecord({CATALOG_HELD_KEY: digest})
    return reply


def catalog_content(msg: Message, node_config: dict, data: LocalData, modalities: tuple[str, ...]) -> np.ndarray:
    """The content matrix this message's released model is scored with: the one named by the
    message's SHA-256 (a deployment), else computed from the device's catalog features."""
    digest = str(msg.content[CONFIG].get(CATALOG_SHA_KEY, ""))
    if not digest:
        return _computed(data, modalities)
    if digest in _HELD:
        return _HELD[digest]
    path = _stored_path(node_config, digest)
    if path is None or not path.is_file():
        raise CatalogContentError(
            f"this device holds no catalog content with SHA-256 {digest} (it keeps it in <state-dir>/{CATALOG_FOLDER}/); "
            "the server sends it again with the next message"
        )
    try:
        content = np.load(path, allow_pickle=False)
    except (OSError, ValueError):  # truncated or not an array file at all
        content = np.zeros((0,))
    if content.dtype != np.float64 or content.ndim != 2 or content_sha256(content) != digest:
        path.unlink()  # the server sends the matrix again after this error; nothing stale says "held"
        raise CatalogContentError(
            f"<state-dir>/{CATALOG_FOLDER}/{digest}.npy: changed on the device, no longer the catalog content with that SHA-256: "
            "removed, the server sends it again with the next message"
        )
    _keep(node_config, digest, content, received=False)
    return content


def _computed(data: LocalData, modalities: tuple[str, ...]) -> np.ndarray:
    """The matrix from the device's own catalog features, once per process (the features are
    shared by every partition a simulation process serves)."""
    key = (id(data.features), modalities)
    if key not in _COMPUTED or _COMPUTED[key][0] is not data.features:
        f = data.features
        _COMPUTED[key] = (f, content_matrix(f.text, f.text_mask, f.image, f.image_mask, modalities))
    return _COMPUTED[key][1]
