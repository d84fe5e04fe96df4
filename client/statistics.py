"""``privacy = user`` on the device: send a bounded statistic of its history, rank with the
released model. The user's own vector is computed here from its history and never sent.

The statistic is computed exactly as :mod:`shared.cooccurrence` defines it (unit L2 norm over
all of the user's interactions); the server clips it again, so a device that sends more gains
nothing and weakens no one's guarantee.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from client.local_data import LocalData
from shared.cooccurrence import CooccurrenceModel, cooccurrence_contribution, popularity_contribution

TASKS = ("popularity", "cooccurrence")


def contribution(msg: Message, data: LocalData, task: str) -> np.ndarray:
    """This device's contribution to release ``task``."""
    if task == "popularity":
        return popularity_contribution(data.train_items, data.num_items)
    if task == "cooccurrence":
        return cooccurrence_contribution(data.train_items, msg.content["arrays"]["top-items"].numpy())
    raise ValueError(f"unknown release task {task!r}; choose one of {', '.join(TASKS)}")


def contribution_reply(msg: Message, data: LocalData, task: str, client_id: str) -> Message:
    vector = contribution(msg, data, task).astype(np.float32)
    arrays = ArrayRecord({"contribution": torch.from_numpy(vector)})
    metrics = MetricRecord({"num-examples": len(data.train_items), "bytes-sent": int(vector.nbytes)})
    privacy = ConfigRecord({"client-id": client_id, "release": task})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics, "privacy": privacy}), reply_to=msg)


def released_model(msg: Message) -> CooccurrenceModel:
    return CooccurrenceModel.from_arrays({key: value.numpy() for key, value in msg.content["arrays"].items()})


def scores(msg: Message, data: LocalData) -> np.ndarray:
    """Every catalog item's score for this device's user under the released model."""
    return released_model(msg).scores(data.train_items)
