"""The device's evaluation reply: where its held-out item ranks under any model's scores
(full ranking and the sampled protocol), the same for every mode."""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message

from client.local_data import LocalData
from client.request import DeviceRequest, request_data
from client.state import who
from shared.data.split import NO_TEST_ITEM
from shared.messages import evaluation_reply, unranked_reply
from shared.metrics import user_metrics


def ranking_reply(msg: Message, context: Context, data: LocalData, scores: np.ndarray) -> Message:
    """Metrics of this device's held-out item under ``scores`` (full ranking and sampled); none
    for a device with nothing held out (the time split: nothing of its after the cut)."""
    if data.test_item == NO_TEST_ITEM:
        return unranked_reply(msg)
    row = user_metrics(scores, data.test_item, data.train_items, who(context), data.cold_items)
    return evaluation_reply(msg, {**row, "cold": int(data.test_item in data.cold_items)})


def rank_with_released_model(msg: Message, context: Context, request: DeviceRequest) -> Message:
    """The task handler of ``privacy = user``'s evaluation: rank the catalog with the released
    item model and this device's own history (which never leaves it)."""
    from client.statistics import scores

    data = request_data(context, request, restore=False)
    return ranking_reply(msg, context, data, scores(msg, data, dict(context.node_config)))
