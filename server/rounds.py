"""The federated round loop: sample, collect, aggregate, evaluate, record.

This is ``Strategy.start`` made explicit so that each round can be recorded as it ends
(:mod:`server.recorder`), so that federated evaluation goes to clients that have trained (a
user's embedding lives only on its device, so a device that never trained has no user
representation to rank with), and so that any mechanism behind :mod:`server.aggregation`
runs in the same loop.
"""

from __future__ import annotations

import random
import time
from typing import Any

from flwr.app import ArrayRecord, MessageType
from flwr.serverapp import Grid

from server.aggregation import Aggregator
from server.book import ResumePoint, RoundBook
from server.recorder import RoundRecorder, RoundTiming
from server.replies import collect_train, ok_replies, send_and_collect
from shared.config import RunConfig
from shared.messages import metrics_of, server_messages
from shared.metrics import mean_metrics_by_coldness


def evaluate_nodes(grid: Grid, node_ids: list[int], arrays: ArrayRecord, settings: dict[str, Any], server_round: int) -> dict[str, float]:
    """Ask ``node_ids`` to rank the catalog for their held-out item (``settings``: what a device
    is sent, :meth:`RunConfig.device_settings`); mean over clients."""
    if not node_ids:
        return {}
    messages = server_messages(node_ids, arrays, settings, server_round, MessageType.EVALUATE)
    rows = [metrics_of(r) for r in ok_replies(send_and_collect(grid, messages))]
    rows = [row for row in rows if int(row.get("trained", 1))]  # a device that never trained cannot rank
    rows = [row for row in rows if int(row.get("ranked", 1))]  # nothing held out (the time split: nothing after the cut)
    if not rows:
        return {}
    out: dict[str, float] = {"clients-evaluated": len(rows)}
    out.update(mean_metrics_by_coldness(rows, [bool(row["cold"]) for row in rows]))
    out["clients-cold"] = sum(int(row["cold"]) for row in rows)
    return out


def run_rounds(
    grid: Grid, aggregator: Aggregator, arrays: ArrayRecord, config: RunConfig, recorder: RoundRecorder,
    resume: ResumePoint | None = None,
) -> tuple[ArrayRecord, RoundBook, list[dict[str, Any]]]:
    """Train rounds up to ``num-server-rounds`` (after ``resume``'s); return the final arrays,
    the book and the metrics rows."""
    rng = random.Random(config.run.seed + (resume.round if resume else 0))
    nodes, book, rows = sorted(grid.get_node_ids()), recorder.book, list(resume.rows) if resume else []
    settings, timeout = config.device_settings(), config.federation.round_timeout
    for server_round in range((resume.round if resume else 0) + 1, config.federation.num_server_rounds + 1):
        stop = aggregator.stop_before(server_round)
        if stop:
            recorder.stop(server_round, *stop)
            break
        started = time.time()
        random.seed(rng.random())  # Flower samples nodes with the `random` module
        messages, train_started = aggregator.train_messages(server_round, arrays, settings, grid, nodes), time.time()
        batch = collect_train(grid, messages, nodes, aggregator.replace_declined, rng, arrays, settings, server_round, timeout)
        timing = RoundTiming(started, time.time() - train_started)
        recorder.screen(batch)
        sent, result = arrays, aggregator.aggregate(server_round, arrays, batch.trained)
        arrays = result.arrays
        spends = recorder.admit(server_round, batch, sent, result)
        pool = book.evaluation_pool(nodes)
        fraction = config.federation.fraction_evaluate  # 0: no evaluation during the rounds, the final one only
        k = max(1, int(round(fraction * len(pool)))) if pool and fraction > 0 else 0
        evaluation = evaluate_nodes(grid, sorted(rng.sample(pool, k)) if k < len(pool) else pool, arrays, settings, server_round)
        rows.append(recorder.commit(server_round, batch, sent, result, spends, evaluation, timing, aggregator))
        if aggregator.stop_after(len(batch.trained), len(batch.declined)):
            recorder.log(f"fedmmrec: stopping after round {server_round}: every client asked is at its epsilon cap")
            break
    return arrays, book, rows
