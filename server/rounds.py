"""The federated round loop: Flower strategy for sampling and aggregation, our bookkeeping.

This is ``Strategy.start`` made explicit so that each round can be recorded as it ends
(``metrics.jsonl``, checkpoint), and so that federated evaluation goes to clients that have
trained: a user's embedding lives only on its device, so a device that never trained has no
user representation to rank with.
"""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from server.book import ResumePoint, RoundBook, restore_strategy, strategy_state
from server.central_dp import ServerDP
from server.replies import (
    MESSAGE_TIMEOUT_S,
    client_entry,
    client_id,
    collect_train,
    ok_replies,
    rejected_entry,
    trace_received,
    train_messages,
)
from server.run_directory import RunDirectory
from shared.ledger import Ledger
from shared.metrics import mean_metrics_by_coldness


def _update_norm(before: ArrayRecord, after: ArrayRecord) -> float:
    total = 0.0
    for key, array in after.items():
        diff = array.numpy().astype(np.float64) - before[key].numpy().astype(np.float64)
        total += float((diff**2).sum())
    return float(np.sqrt(total))


def _measured(global_arrays: ArrayRecord, reply: Message) -> dict[str, Any]:
    """What the server measured of a device's update, for the audit's conformance check: its
    L2 norm (reply minus the model sent) and its number of coordinates."""
    sent = reply.content["arrays"]
    return {
        "update-norm": _update_norm(global_arrays, sent),
        "update-dimension": int(sum(array.numpy().size for array in sent.values())),
    }


def evaluate_nodes(
    grid: Grid, node_ids: list[int], arrays: ArrayRecord, config: ConfigRecord, server_round: int
) -> dict[str, float]:
    """Ask ``node_ids`` to rank the catalog for their held-out item; mean over clients."""
    if not node_ids:
        return {}
    config = ConfigRecord({**dict(config), "server-round": server_round})
    messages = [
        Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=node, message_type=MessageType.EVALUATE)
        for node in node_ids
    ]
    replies = ok_replies(grid.send_and_receive(messages, timeout=MESSAGE_TIMEOUT_S))
    rows = [dict(r.content["metrics"]) for r in replies]
    rows = [row for row in rows if int(row.get("trained", 1))]  # a device that never trained cannot rank
    if not rows:
        return {}
    out: dict[str, float] = {"clients-evaluated": len(rows)}
    out.update(mean_metrics_by_coldness(rows, [bool(row["cold"]) for row in rows]))
    out["clients-cold"] = sum(int(row["cold"]) for row in rows)
    return out


def same_dtypes(arrays: ArrayRecord, template: ArrayRecord) -> ArrayRecord:
    """``arrays`` cast to ``template``'s dtypes. FedAdam and the other FedOpt strategies do
    their arithmetic in float64; a global model that drifted to float64 would double the
    traffic and make every float32 client reply fail validation from round 2 on."""
    return ArrayRecord({key: torch.from_numpy(arrays[key].numpy().astype(template[key].numpy().dtype)) for key in arrays})


def _mean_loss(replies: list[Message]) -> float:
    weights = [float(r.content["metrics"]["num-examples"]) for r in replies]
    losses = [float(r.content["metrics"]["train-loss"]) for r in replies]
    return float(np.average(losses, weights=weights)) if replies else float("nan")


def run_rounds(
    grid: Grid,
    strategy: Strategy,
    initial_arrays: ArrayRecord,
    config: dict[str, Any],
    run_dir: RunDirectory,
    ledger: Ledger,
    server_dp: ServerDP | None = None,
    log=print,
    resume: "ResumePoint | None" = None,
) -> tuple[ArrayRecord, RoundBook, list[dict[str, Any]]]:
    """Train ``num-server-rounds`` rounds; return the final arrays, the book and the rows.

    Without ``server_dp`` Flower's strategy samples and aggregates. With it, the server samples
    by Poisson and releases DP-FedAvg aggregates (:mod:`server.central_dp`), and stops before a
    round that would exceed its user-level budget.
    """
    arrays = initial_arrays
    book = resume.book if resume else RoundBook()
    client_config = ConfigRecord(dict(config))
    rng = random.Random(config["seed"] + (resume.round if resume else 0))
    all_nodes = sorted(grid.get_node_ids())
    rows = list(resume.rows) if resume else []
    if resume and resume.strategy_state:
        restore_strategy(strategy, resume.strategy_state)
    first = resume.round + 1 if resume else 1
    for server_round in range(first, config["num-server-rounds"] + 1):
        if server_dp is not None and server_dp.would_exceed_cap(server_round):
            epsilon = server_dp.epsilon(server_round)
            log(
                f"fedmmrec: stopping before round {server_round}: the user-level epsilon would reach "
                f"{epsilon:.3f} > server-epsilon-cap {server_dp.epsilon_cap:g}"
            )
            ledger.append([("stop", server_round, {"reason": "server-epsilon-cap", "epsilon-if-run": epsilon})])
            break
        started = time.time()
        random.seed(rng.random())  # Flower samples nodes with the `random` module
        if server_dp is not None:
            messages = train_messages(server_dp.sample(all_nodes), arrays, client_config, server_round)
        else:
            messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(dict(client_config)), grid))
        train_started = time.time()
        batch = collect_train(
            grid, messages, all_nodes, server_dp is None, rng, arrays, client_config, server_round
        )
        train_seconds = time.time() - train_started
        for reply in list(batch.trained):
            problem = book.state_loss(client_entry(reply))
            if problem:
                print(f"  client {reply.metadata.src_node_id} rejected: {problem}", flush=True)
                batch.trained.remove(reply)
                batch.rejected.append((reply, problem))
        replies, declined = batch.trained, batch.declined
        previous = arrays
        server_entry: dict[str, Any] = {"server-dp": False, "server-noise-std": 0.0, "server-clip-norm": None, "user-level-epsilon": None}
        skipped = server_dp is None and len(replies) < int(config["min-replies"])
        if skipped:
            log(
                f"fedmmrec: round {server_round} skipped: {len(replies)} valid replies, fewer than min-replies "
                f"{config['min-replies']} ({len(batch.rejected)} rejected, {batch.failed} failed or late); model unchanged"
            )
            train_loss = float("nan")
        elif server_dp is not None:
            noisy, canaries = server_dp.release(arrays, [r.content["arrays"] for r in replies])
            arrays = noisy.arrays
            train_loss = _mean_loss(replies)
            server_entry = _server_dp_entry(server_dp, noisy, canaries, server_round)
        else:
            new_arrays, train_metrics = strategy.aggregate_train(server_round, replies) if replies else (None, None)
            arrays = same_dtypes(new_arrays, arrays) if new_arrays is not None else arrays
            train_loss = float(train_metrics["train-loss"]) if train_metrics else float("nan")
        trained, bytes_sent, ledger_entries = [], [], []
        for reply in replies:
            node = reply.metadata.src_node_id
            metrics = reply.content["metrics"]
            trace_received(reply, server_round)
            client = client_id(reply)
            book.epsilon[client] = float(metrics["epsilon"])
            book.rounds_trained[client] = book.rounds_trained.get(client, 0) + 1
            book.eval_nodes.add(node)
            bytes_sent.append(int(metrics["bytes-sent"]))
            trained.append(node)
            entry = {**client_entry(reply), **_measured(previous, reply)}
            book.record_identity(entry)
            ledger_entries.append(("client-round", server_round, entry))
            run_dir.append_client_row(
                {
                    "round": server_round,
                    "client": client,  # the device's pseudonym, never the user id
                    **{key: metrics[key] for key in ("num-examples", "steps", "sample-rate", "epsilon", "train-loss", "bytes-sent")},
                }
            )
        eval_pool = book.evaluation_pool(all_nodes)
        k = max(1, int(round(config["fraction-evaluate"] * len(eval_pool)))) if eval_pool else 0
        eval_nodes = sorted(rng.sample(eval_pool, k)) if k < len(eval_pool) else eval_pool
        evaluation = evaluate_nodes(grid, eval_nodes, arrays, client_config, server_round)
        row = {
            "round": server_round,
            "clients-sampled": len(batch.asked),
            "clients-trained": len(trained),
            "clients-declined": len(declined),
            "clients-rejected": len(batch.rejected),
            "clients-failed": batch.failed,
            "round-skipped": skipped,
            "train-loss": train_loss,
            "bytes-sent-per-client": float(np.mean(bytes_sent)) if bytes_sent else 0.0,
            "bytes-received-per-client": float(sum(a.numpy().nbytes for a in arrays.values())),
            **book.epsilon_stats(),
            **({"user-level-epsilon": server_entry["user-level-epsilon"]} if server_dp is not None else {}),
            **evaluation,
            "train-seconds": round(train_seconds, 3),
            "round-seconds": round(time.time() - started, 3),
        }
        ledger_entries.append(
            (
                "server-round",
                server_round,
                {
                    "clients-sampled": len(batch.asked),
                    "replies-received": len(trained),
                    "clients-declined": len(declined),
                    "released-update-norm": _update_norm(previous, arrays),
                    "update-dimension": int(sum(a.numpy().size for a in arrays.values())),
                    **server_entry,
                },
            )
        )
        for reply in declined:
            entry = client_entry(reply)
            ledger_entries.append(("client-round", server_round, {**entry, "declined": True}))
        ledger_entries += [rejected_entry(reply, reason, server_round) for reply, reason in batch.rejected]
        # The round's checkpoint is written before its ledger entries commit, so every round in
        # the ledger has its model on disk: a resume continues from the ledger's last round.
        run_dir.save_round_checkpoint(server_round, arrays.to_torch_state_dict(), strategy_state(strategy))
        row["ledger-head"] = ledger.append(ledger_entries)  # anchors the ledger: the audit compares
        run_dir.prune_round_checkpoints(keep=server_round)
        rows.append(row)
        run_dir.append_metrics(row)
        run_dir.save_checkpoint("latest.pt", arrays.to_torch_state_dict(), {"round": server_round})
        spent = [f"example-level epsilon max {row['epsilon-max']:.2f}"] if config["privacy"] in ("local", "both") else []
        if server_dp is not None:
            spent.append(f"user-level epsilon {row['user-level-epsilon']:.2f}")
        log(
            f"[round {server_round}/{config['num-server-rounds']}] trained {len(trained)} clients, "
            f"loss {row['train-loss']:.4f}, HR@10 {row.get('hr@10', float('nan')):.3f}, "
            f"NDCG@10 {row.get('ndcg@10', float('nan')):.3f} ({row.get('clients-evaluated', 0)} clients), "
            f"{', '.join(spent) or 'NOT PRIVATE'}, {row['bytes-sent-per-client'] / 1024:.0f} KiB sent per client, "
            f"{row['round-seconds']:.1f}s"
        )
        if declined and not trained and server_dp is None:
            log(f"fedmmrec: stopping after round {server_round}: every client asked is at its epsilon cap")
            break
    return arrays, book, rows


def _server_dp_entry(server_dp: ServerDP, noisy, canaries: int, server_round: int) -> dict[str, Any]:
    """The server-round ledger fields of a DP-FedAvg release."""
    mechanism = server_dp.mechanism
    epsilon = server_dp.epsilon(server_round)
    return {
        "server-dp": True,
        "server-clip-norm": mechanism.clip_norm,
        "server-noise-multiplier": mechanism.noise_multiplier,
        "client-sample-rate": mechanism.sample_rate,
        "denominator": mechanism.denominator,
        "server-noise-std": noisy.noise_std_of_sum,
        "server-noise-std-of-average": noisy.noise_std_of_sum / mechanism.denominator,
        "updates-aggregated": noisy.clients,
        "updates-clipped": noisy.clipped,
        "canaries-in-round": canaries,
        "user-level-history": [list(h) for h in mechanism.history(server_round)],
        "user-level-epsilon": epsilon if np.isfinite(epsilon) else -1.0,
    }
