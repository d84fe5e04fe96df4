"""Check each train reply before it can reach aggregation: one bad reply never aborts a round.

A reply is rejected, with its reason, when its arrays are missing or unreadable, have keys the
global model lacks or lack keys it has, have another shape or dtype, or hold NaN or Inf; or when
its metrics lack the fields the ledger needs or hold a non-positive or non-finite example count.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ArrayRecord, Message

from shared.array_values import values
from shared.messages import ARRAYS, METRICS, REQUIRED_METRICS


def train_reply_problem(reply: Message, expected: ArrayRecord) -> str | None:
    """Why ``reply`` cannot be aggregated into a model shaped like ``expected`` (None: it can)."""
    content = reply.content
    if METRICS not in content.metric_records:
        return "no metrics record"
    metrics = content.metric_records[METRICS]
    missing_metrics = [key for key in REQUIRED_METRICS if key not in metrics]
    if missing_metrics:
        return f"metrics lack {', '.join(missing_metrics)}"
    examples = float(metrics["num-examples"])
    if not math.isfinite(examples) or examples <= 0:
        return f"num-examples is {examples}"
    if ARRAYS not in content.array_records:
        return "no arrays record"
    arrays = content.array_records[ARRAYS]
    missing = sorted(set(expected.keys()) - set(arrays.keys()))
    extra = sorted(set(arrays.keys()) - set(expected.keys()))
    if missing:
        return f"missing arrays: {', '.join(missing[:3])}"
    if extra:
        return f"unexpected arrays: {', '.join(extra[:3])}"
    for key, reference in expected.items():
        try:
            got = values(arrays[key])
        except (ValueError, TypeError) as exc:  # not an array numpy can read: this reply only
            return f"array {key} is unreadable ({exc})"
        want = values(reference)
        if got.shape != want.shape:
            return f"array {key} has shape {got.shape}, expected {want.shape}"
        if got.dtype != want.dtype:
            return f"array {key} has dtype {got.dtype}, expected {want.dtype}"
        if not np.isfinite(got).all():
            return f"array {key} holds NaN or Inf"
    return None
