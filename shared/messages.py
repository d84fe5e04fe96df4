"""The message contract between the ServerApp and the ClientApp: every record and key, in one place.

A TRAIN or EVALUATE message carries the global arrays (``arrays``) and the round's settings
(``config``). A train reply carries the device's update (``arrays``), what it did
(``metrics``: :class:`TrainMetrics`) and what it spent (``privacy``: :class:`PrivacyRecord`),
which the server writes to the ledger and a device signs. An evaluation reply carries one
ranking's metrics. Everything else in the project builds and reads messages through here, so
a key is spelled once.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from shared.array_values import values

ARRAYS, CONFIG, METRICS, PRIVACY = "arrays", "config", "metrics", "privacy"
ROUND_KEY = "server-round"
TASK_KEY = "task"  # privacy = user: which release a TRAIN message asks a statistic for (or, in an EVALUATE message, RANK_TASK)
RANK_TASK = "rank-with-released-model"  # an EVALUATE message's task: rank with the released item model (no tower)
TOWER_TASK = ""  # a message that names no task: the item tower's modes (DP-SGD training, ranking with the tower)
CONTRIBUTION_KEY = "contribution"
# A deployment's catalog content (server.catalog_shipment, client.catalog_content): the matrix
# in the ``catalog`` array record of a server message, its SHA-256 in the config, and the
# device's "held" in the ``catalog`` config record of its reply.
CATALOG, CATALOG_CONTENT_KEY, CATALOG_SHA_KEY, CATALOG_HELD_KEY = "catalog", "content", "catalog-sha256", "held"


def _kebab(name: str) -> str:
    return name.replace("_", "-")


@dataclass(frozen=True)
class TrainMetrics:
    """What a device reports of one round's training (the ``metrics`` record)."""

    num_examples: int
    train_loss: float
    epsilon: float  # cumulative, example-level, at the run's delta; -1: infinite (no DP)
    steps: int
    sample_rate: float
    bytes_sent: int
    declined: bool = False  # at its epsilon cap: did not train

    def record(self) -> MetricRecord:
        values = {_kebab(f.name): getattr(self, f.name) for f in fields(self)}
        values["train-loss"] = self.train_loss if math.isfinite(self.train_loss) else 0.0
        values["epsilon"] = self.epsilon if math.isfinite(self.epsilon) else -1.0
        values["declined"] = int(self.declined)
        return MetricRecord(values)


REQUIRED_METRICS = tuple(_kebab(f.name) for f in fields(TrainMetrics) if f.name != "declined")


@dataclass(frozen=True)
class PrivacyRecord:
    """What a device spent, as the ledger records it (the ``privacy`` record). No data."""

    client_id: str  # the device's pseudonym
    identity: str = ""  # who it is to the server (partition or authenticated node)
    history: str = "[]"  # the accountant's history as JSON: [[noise multiplier, rate, steps], ...]
    noise_multiplier: float = 0.0
    clip_norm: float = 0.0
    batch_size: int = 0
    poisson: bool = False
    accountant: str = ""
    delta: float = 0.0
    # The L2 norm of the update the device sends (its reply minus the model it received),
    # signed with the spend: the audit's noise-conformance check reads the device's word,
    # and the server's measurement of the same update must agree with it. -1: no update.
    update_norm: float = -1.0

    def record(self) -> ConfigRecord:
        return ConfigRecord({_kebab(key): value for key, value in asdict(self).items()})


def update_norm(before: ArrayRecord, after: ArrayRecord) -> float:
    """The L2 norm of ``after - before`` over every array (float64; the device and the server
    compute it alike, so the device's signed value and the server's measurement are equal)."""
    total = 0.0
    for key, array in after.items():
        diff = values(array).astype(np.float64) - values(before[key]).astype(np.float64)
        total += float((diff**2).sum())
    return float(np.sqrt(total))


def dimension(arrays: ArrayRecord) -> int:
    return int(sum(values(array).size for array in arrays.values()))


def train_reply(msg: Message, arrays: ArrayRecord, metrics: TrainMetrics, privacy: ConfigRecord) -> Message:
    """A device's reply to a TRAIN message: its update, metrics and (signed) privacy record."""
    return Message(RecordDict({ARRAYS: arrays, METRICS: metrics.record(), PRIVACY: privacy}), reply_to=msg)


def decline_reply(msg: Message, metrics: TrainMetrics, privacy: PrivacyRecord) -> Message:
    """A reply without an update: the device's next round would exceed its epsilon cap."""
    return Message(RecordDict({METRICS: metrics.record(), PRIVACY: privacy.record()}), reply_to=msg)


def contribution_reply(msg: Message, vector: ArrayRecord, num_examples: int, bytes_sent: int, client_id: str, task: str) -> Message:
    """``privacy = user``: a device's bounded statistic for release ``task``."""
    metrics = MetricRecord({"num-examples": num_examples, "bytes-sent": bytes_sent})
    privacy = ConfigRecord({"client-id": client_id, "release": task})
    return Message(RecordDict({ARRAYS: vector, METRICS: metrics, PRIVACY: privacy}), reply_to=msg)


def evaluation_reply(msg: Message, metrics: dict[str, Any]) -> Message:
    """One ranking's metrics (``trained`` 1), see :mod:`shared.metrics`."""
    return Message(RecordDict({METRICS: MetricRecord({"num-examples": 1, "trained": 1, **metrics})}), reply_to=msg)


def unranked_reply(msg: Message) -> Message:
    """An evaluation reply from a device with no held-out item (the time split: nothing of its
    came after the cut): it contributed, it has nothing to be ranked on."""
    return Message(RecordDict({METRICS: MetricRecord({"num-examples": 0, "trained": 1, "ranked": 0})}), reply_to=msg)


def untrained_reply(msg: Message) -> Message:
    """An evaluation reply from a device that never trained: it has no user vector to rank with."""
    return Message(RecordDict({METRICS: MetricRecord({"num-examples": 1, "trained": 0})}), reply_to=msg)


def server_messages(
    nodes: list[int], arrays: ArrayRecord, config: dict[str, Any], server_round: int, message_type: str = MessageType.TRAIN
) -> list[Message]:
    """One message per node, as Flower's strategies build them: ``arrays`` + ``config`` with the round."""
    record = ConfigRecord({**dict(config), ROUND_KEY: server_round})
    return [Message(RecordDict({ARRAYS: arrays, CONFIG: record}), dst_node_id=node, message_type=message_type) for node in nodes]


def message_config(msg: Message) -> dict[str, Any]:
    """The settings a message carries (the server's choice for this round)."""
    return dict(msg.content[CONFIG])


def metrics_of(reply: Message) -> dict[str, Any]:
    """A reply's metrics (empty when it has none)."""
    return dict(reply.content.metric_records.get(METRICS, {}))


def is_decline(reply: Message) -> bool:
    return bool(int(metrics_of(reply).get("declined", 0)))


def update_of(reply: Message) -> ArrayRecord:
    return reply.content[ARRAYS]


def client_id(reply: Message) -> str:
    """The device's pseudonym (its Flower node id when it sent none)."""
    privacy = reply.content.config_records.get(PRIVACY, {})
    return str(privacy.get("client-id", "") or reply.metadata.src_node_id)


def spend_entry(reply: Message) -> dict[str, Any]:
    """The ledger's client-round entry from a train reply: what the device did and spent."""
    metrics = metrics_of(reply)
    privacy = dict(reply.content.config_records.get(PRIVACY, {}))
    return {
        "client": client_id(reply),
        "identity": str(privacy.get("identity", "")),
        "num-examples": int(metrics["num-examples"]),
        "sample-rate": float(metrics["sample-rate"]),
        "poisson": bool(privacy.get("poisson", False)),
        "steps": int(metrics["steps"]),
        "noise-multiplier": float(privacy.get("noise-multiplier", 0.0)),
        "clip-norm": float(privacy.get("clip-norm", 0.0)),
        "batch-size": int(privacy.get("batch-size", 0)),
        "accountant": str(privacy.get("accountant", "")),
        "history": json.loads(str(privacy.get("history", "[]"))),
        "epsilon": float(metrics["epsilon"]),
        **({"update-norm": float(privacy["update-norm"])} if "update-norm" in privacy else {}),
        **{key: str(privacy[key]) for key in ("signature", "public-key") if key in privacy},
    }


def client_row(reply: Message, server_round: int) -> dict[str, Any]:
    """A train reply's line in ``clients.jsonl``: the pseudonym (never the user id) and its spend."""
    metrics = metrics_of(reply)
    return {"round": server_round, "client": client_id(reply), **{key: metrics[key] for key in REQUIRED_METRICS}}


# user-noise = distributed: the secure-aggregation stages (shared.secure_sum.session). A stage's
# protocol fields travel in the SECURE record, the masked vector in ARRAYS under MASKED_KEY.
SECURE = "secure"
SECURE_KEYS, SECURE_SHARE, SECURE_INPUT = "secure-keys", "secure-share", "secure-input"
SECURE_CONFIRM, SECURE_UNMASK = "secure-confirm", "secure-unmask"
SECURE_STAGES = (SECURE_KEYS, SECURE_SHARE, SECURE_INPUT, SECURE_CONFIRM, SECURE_UNMASK)
MASKED_KEY = "masked"


def secure_message(node: int, stage: str, fields: dict[str, Any], arrays: ArrayRecord, config: dict[str, Any], server_round: int) -> Message:
    """One secure-aggregation stage's TRAIN message to ``node``."""
    record = ConfigRecord({**dict(config), ROUND_KEY: server_round, TASK_KEY: stage})
    return Message(
        RecordDict({ARRAYS: arrays, CONFIG: record, SECURE: ConfigRecord(fields)}), dst_node_id=node, message_type=MessageType.TRAIN
    )


def secure_reply(msg: Message, fields: dict[str, Any], arrays: ArrayRecord | None = None) -> Message:
    content = RecordDict({SECURE: ConfigRecord(fields)})
    if arrays is not None:
        content[ARRAYS] = arrays
    return Message(content, reply_to=msg)


def secure_fields(msg: Message) -> dict[str, Any]:
    return dict(msg.content.config_records.get(SECURE, {}))
