"""Device-private state that persists across rounds: the user embedding and the DP history.

Kept in the node's ``context.state`` (Flower keeps it for the node across rounds) and, when the
node config names a ``state-dir`` (deployment), also in ``<state-dir>/device-state.json`` so
that a restarted SuperNode does not forget what it spent. The file is written atomically
(write, fsync, rename): a power cut leaves the old file or the new one, never half of one. A
corrupt file, or one that belongs to another user, is an error and is never silently replaced:
starting over from zero would under-report the privacy already spent.

Neither is ever put into a reply: only the item tower travels.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context

from shared.privacy.accounting import History, history_from_json, history_to_json
from shared.run_directory import DEVICE_STATE_FILE as STATE_FILE
from shared.privacy.spend_signature import KEY_FILE as SIGNING_KEY_FILE
from shared.run_directory import simulated_device_folder

USER_KEY = "private-user"
PRIVACY_KEY = "privacy"
TRAINED_KEY = "trained"  # the items this device has trained on (its replay memory's population)
STATE_FORMAT = "fedmmrec-device-state/1"

if TYPE_CHECKING:  # only the tower's modes hold a user embedding; the statistics need no torch
    import torch


class DeviceStateError(ValueError):
    """The device's state file cannot be trusted; the message names the file and the problem."""


def state_path(context: Context, config: Mapping[str, Any]) -> Path | None:
    """``<state-dir>/device-state.json`` on a device; in a simulation whose server set
    ``device-state-dir``, ``<device-state-dir>/partition-<id>/device-state.json``."""
    folder = context.node_config.get("state-dir")
    if folder:
        return Path(str(folder)) / STATE_FILE
    if config.get("device-state-dir") and "partition-id" in context.node_config:
        return simulated_device_folder(str(config["device-state-dir"]), int(context.node_config["partition-id"])) / STATE_FILE
    return None


def who(context: Context) -> int:
    """This client's index: its partition in a simulation (so runs repeat), its node id on a device."""
    return int(context.node_config.get("partition-id", context.node_id % 100_003))


def identity(context: Context) -> str:
    """Who this device is to the server, apart from its pseudonym: its simulated partition, or
    its Flower node id (bound to the key it authenticates with) on a real device. The server
    keeps spend under it, so a device that lost its state cannot start a fresh budget."""
    if "partition-id" in context.node_config and "data-dir" not in context.node_config:
        return f"partition-{int(context.node_config['partition-id'])}"
    return f"node-{context.node_id}"


def signing_key_path(context: Context, config: Mapping[str, Any]) -> Path | None:
    """The key this device signs with: its SuperNode's ``auth-key``, else a key kept beside
    its state (a simulated device); None when it has neither (nothing is signed)."""
    key = context.node_config.get("auth-key")
    if key:
        return Path(str(key))
    state = state_path(context, config)
    return None if state is None else state.parent / SIGNING_KEY_FILE


def pseudonym(context: Context) -> str:
    """This device's pseudonymous client id in the ledger: random, kept with its state, so it
    survives restarts (Flower's node ids may not) and says nothing about the user."""
    if PRIVACY_KEY in context.state.config_records and "pseudonym" in context.state.config_records[PRIVACY_KEY]:
        return str(context.state.config_records[PRIVACY_KEY]["pseudonym"])
    name = secrets.token_hex(8)
    context.state[PRIVACY_KEY] = ConfigRecord({"history": "[]", "epsilon": 0.0, "pseudonym": name})
    return name


def restore_device_state(context: Context, config: Mapping[str, Any], user_id: str) -> None:
    """Fill the node state from the state file after a restart (no-op without a state file)."""
    path = state_path(context, config)
    if path is None or PRIVACY_KEY in context.state.config_records or not path.exists():
        return
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        fmt, owner = raw["format"], raw["user"]
        history = history_from_json(json.dumps(raw["history"]))
        weight = np.asarray(raw["user-embedding"], dtype=np.float32) if raw["user-embedding"] else None
        epsilon = float(raw["epsilon"])
        name = str(raw["pseudonym"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DeviceStateError(f"{path}: corrupt device state ({exc}); not replacing it: move it away only if "
                               "you accept losing the record of the privacy already spent") from exc
    if fmt != STATE_FORMAT:
        raise DeviceStateError(f"{path}: format {fmt!r}, expected {STATE_FORMAT!r}")
    if owner != user_id:
        raise DeviceStateError(f"{path}: state of user {owner!r}, but this device's data is user {user_id!r}")
    context.state[PRIVACY_KEY] = ConfigRecord({"history": history_to_json(history), "epsilon": epsilon, "pseudonym": name})
    context.state[TRAINED_KEY] = ConfigRecord({"items": json.dumps([int(i) for i in raw.get("trained-items", [])])})
    if weight is not None:
        context.state[USER_KEY] = ArrayRecord({"weight": Array(weight)})


def load_user_embedding(context: Context):
    """The stored user embedding tensor [1, dim], or None before the first training round."""
    if USER_KEY not in context.state.array_records:
        return None
    return context.state.array_records[USER_KEY].to_torch_state_dict()["weight"]


def load_trained_items(context: Context) -> set[int]:
    """The catalog indices this device trained on in earlier rounds (empty before its first)."""
    if TRAINED_KEY not in context.state.config_records:
        return set()
    return set(json.loads(str(context.state.config_records[TRAINED_KEY]["items"])))


def load_history(context: Context) -> History:
    if PRIVACY_KEY not in context.state.config_records:
        return []
    return history_from_json(str(context.state.config_records[PRIVACY_KEY]["history"]))


def save_device_state(
    context: Context, config: Mapping[str, Any], user_id: str, weight: torch.Tensor, history: History, epsilon: float,
    trained_items: set[int] | None = None,
) -> None:
    """Store the embedding, history and the items trained on in the node state and, with a
    state dir, on disk."""
    name = pseudonym(context)
    trained = sorted(load_trained_items(context) | set(int(i) for i in (trained_items or ())))
    context.state[TRAINED_KEY] = ConfigRecord({"items": json.dumps(trained)})
    context.state[USER_KEY] = ArrayRecord({"weight": weight.detach().clone()})
    context.state[PRIVACY_KEY] = ConfigRecord({"history": history_to_json(history), "epsilon": float(epsilon), "pseudonym": name})
    path = state_path(context, config)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": STATE_FORMAT,
        "user": user_id,
        "pseudonym": name,
        "history": json.loads(history_to_json(history)),
        "epsilon": float(epsilon) if epsilon == epsilon and abs(epsilon) != float("inf") else -1.0,
        "user-embedding": weight.detach().cpu().tolist(),
        "trained-items": trained,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
