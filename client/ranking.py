"""The device's evaluation reply: where its held-out item ranks under any model's scores
(full ranking and the sampled protocol), the same for every mode."""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message

from client.local_data import LocalData
from client.state import who
from shared.messages import evaluation_reply
from shared.metrics import metrics_from_rank, rank_of, rank_percentile, sampled_metrics, sampled_rng


def ranking_reply(msg: Message, context: Context, data: LocalData, scores: np.ndarray) -> Message:
    """Metrics of this device's held-out item under ``scores`` (full ranking and sampled)."""
    rank = rank_of(scores, data.test_item, data.train_items)
    sampled = sampled_metrics(scores, data.test_item, data.train_items, sampled_rng(who(context)))
    cold = data.test_item in data.cold_items
    return evaluation_reply(
        msg,
        {
            "rank": rank,
            "rank-percentile": rank_percentile(rank, data.num_items, data.train_items, data.test_item),
            "cold": int(cold),
            **metrics_from_rank(rank),
            **sampled,
        },
    )
