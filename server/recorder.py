"""One round's record, written in commit order: checkpoint, then ledger, then metrics.

The round's checkpoint is written before its ledger entries commit, so every round in the
ledger has its model on disk and a resume continues from the ledger's last round; the metrics
row, written last, carries the ledger head it belongs to (the audit compares).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message

from server.aggregation import Aggregate, Aggregator
from server.book import RoundBook
from server.mechanisms import mechanism_class
from server.replies import TrainReplies, rejected_entry
from shared.array_values import nbytes
from shared.config import RunConfig
from shared.messages import client_id, client_row, dimension, metrics_of, spend_entry, update_norm, update_of
from shared.privacy.ledger import Ledger
from shared.run_directory import RunDirectory


def measured(sent: ArrayRecord, reply: Message) -> dict[str, Any]:
    """What the server measured of a device's update: its L2 norm (reply minus the model sent)
    and its number of coordinates. The audit holds the norm to the one the device signed."""
    update = update_of(reply)
    return {"measured-update-norm": update_norm(sent, update), "update-dimension": dimension(update)}


@dataclass
class RoundTiming:
    started: float
    train_seconds: float


class RoundRecorder:
    """Writes each round of a run: the book, ``clients.jsonl``, checkpoint, ledger, metrics, log."""

    def __init__(self, run_dir: RunDirectory, ledger: Ledger, book: RoundBook, config: RunConfig, log=print) -> None:
        self.run_dir, self.ledger, self.book, self.config, self.log = run_dir, ledger, book, config, log

    def stop(self, server_round: int, reason: str, body: dict[str, Any]) -> None:
        self.log(f"fedmmrec: stopping before round {server_round}: {reason}")
        self.ledger.append([("stop", server_round, body)])

    def screen(self, batch: TrainReplies) -> None:
        """Move replies from devices that lost their state (a fresh budget) to the rejected."""
        for reply in list(batch.trained):
            problem = self.book.state_loss(spend_entry(reply))
            if problem:
                print(f"  client {reply.metadata.src_node_id} rejected: {problem}", flush=True)
                batch.trained.remove(reply)
                batch.rejected.append((reply, problem))

    def admit(self, server_round: int, batch: TrainReplies, sent: ArrayRecord, result: Aggregate) -> list[dict[str, Any]]:
        """The round's trained replies into the book and ``clients.jsonl`` (before evaluation:
        who has trained decides who evaluates); their ledger entries."""
        if result.skipped:
            self.log(
                f"fedmmrec: round {server_round} skipped: {result.skipped} ({len(batch.rejected)} rejected, "
                f"{batch.failed} failed or late); model unchanged"
            )
        return [self._spend(reply, server_round, sent) for reply in batch.trained]

    def commit(
        self,
        server_round: int,
        batch: TrainReplies,
        sent: ArrayRecord,
        result: Aggregate,
        spends: list[dict[str, Any]],
        evaluation: dict[str, float],
        timing: RoundTiming,
        aggregator: Aggregator,
    ) -> dict[str, Any]:
        """Commit round ``server_round``; return its metrics row."""
        entries = [("client-round", server_round, entry) for entry in spends]
        bytes_sent = [int(metrics_of(reply)["bytes-sent"]) for reply in batch.trained]
        row = {
            "round": server_round,
            "clients-sampled": len(batch.asked),
            "clients-trained": len(batch.trained),
            "clients-declined": len(batch.declined),
            "clients-rejected": len(batch.rejected),
            "clients-failed": batch.failed,
            "round-skipped": bool(result.skipped),
            "train-loss": result.train_loss,
            "bytes-sent-per-client": float(np.mean(bytes_sent)) if bytes_sent else 0.0,
            "bytes-received-per-client": float(nbytes(result.arrays)),
            **self.book.epsilon_stats(),
            **result.row_fields,
            **evaluation,
            "train-seconds": round(timing.train_seconds, 3),
            "round-seconds": round(time.time() - timing.started, 3),
        }
        server_entry = {
            "clients-sampled": len(batch.asked),
            "replies-received": len(batch.trained),
            "clients-declined": len(batch.declined),
            "released-update-norm": update_norm(sent, result.arrays),
            "update-dimension": dimension(result.arrays),
            **({"round-skipped": True} if result.skipped else {}),  # the model did not move: the audit's drift check skips it
            **result.ledger_fields,
        }
        entries.append(("server-round", server_round, server_entry))
        entries += [("client-round", server_round, {**spend_entry(reply), "declined": True}) for reply in batch.declined]
        entries += [rejected_entry(reply, reason, server_round) for reply, reason in batch.rejected]
        self.run_dir.save_round_checkpoint(server_round, result.arrays.to_torch_state_dict(), aggregator.state())
        row["ledger-head"] = self.ledger.append(entries)
        self.run_dir.prune_round_checkpoints(keep=server_round)
        self.run_dir.append_metrics(row)
        self.run_dir.save_checkpoint("latest.pt", result.arrays.to_torch_state_dict(), {"round": server_round})
        self._log(row, aggregator)
        return row

    def _spend(self, reply: Message, server_round: int, sent: ArrayRecord) -> dict[str, Any]:
        """A trained reply into the book and ``clients.jsonl``; its ledger entry."""
        client = client_id(reply)
        self.book.epsilon[client] = float(metrics_of(reply)["epsilon"])
        self.book.rounds_trained[client] = self.book.rounds_trained.get(client, 0) + 1
        self.book.eval_nodes.add(reply.metadata.src_node_id)
        entry = {**spend_entry(reply), **measured(sent, reply)}
        self.book.record_identity(entry)
        self.run_dir.append_client_row(client_row(reply, server_round))
        return entry

    def _log(self, row: dict[str, Any], aggregator: Aggregator) -> None:
        spent = [f"example-level epsilon max {row['epsilon-max']:.2f}"] if mechanism_class(self.config).local_dp else []
        if aggregator.spends_user_level:
            spent.append(f"user-level epsilon {row['user-level-epsilon']:.2f}")
        self.log(
            f"[round {row['round']}/{self.config.federation.num_server_rounds}] trained {row['clients-trained']} clients, "
            f"loss {row['train-loss']:.4f}, {_evaluated(row)}, "
            f"{', '.join(spent) or 'NOT PRIVATE'}, {row['bytes-sent-per-client'] / 1024:.0f} KiB sent per client, "
            f"{row['round-seconds']:.1f}s"
        )


def _evaluated(row: dict[str, Any]) -> str:
    """The round's evaluation as its line says it (none: ``fraction-evaluate = 0``, or no device
    that trained answered)."""
    if not row.get("clients-evaluated"):
        return "not evaluated"
    return f"HR@10 {row['hr@10']:.3f}, NDCG@10 {row['ndcg@10']:.3f} ({row['clients-evaluated']} clients)"

