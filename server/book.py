"""The server's bookkeeping across rounds and restarts: who trained and spent what, and where a
resumed run continues (model, server optimiser state, rows so far)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord


@dataclass
class RoundBook:
    """What the server knows about its clients: spend and rounds by the client's pseudonym
    (chosen by the device, kept across restarts; never the user), and which Flower nodes hold
    a trained user representation (those are asked to evaluate)."""

    epsilon: dict[str, float] = field(default_factory=dict)
    rounds_trained: dict[str, int] = field(default_factory=dict)
    eval_nodes: set[int] = field(default_factory=set)
    evaluate_all: bool = False  # after a resume: node ids changed; untrained clients say so
    # Authenticated identity (partition, node) -> (pseudonym, DP steps in its history so far).
    identities: dict[str, tuple[str, int]] = field(default_factory=dict)

    def record_identity(self, entry: dict[str, Any]) -> None:
        if entry.get("identity"):
            self.identities[str(entry["identity"])] = (str(entry["client"]), sum(int(h[2]) for h in entry["history"]))

    def state_loss(self, entry: dict[str, Any]) -> str | None:
        """Why a reply must not count: its identity is known under another pseudonym, or with
        more history than it now reports (the device lost its state and would spend a fresh
        budget); None when it is consistent."""
        known = self.identities.get(str(entry.get("identity", "")))
        if not entry.get("identity") or known is None:
            return None
        name, steps = known
        reported = sum(int(h[2]) for h in entry["history"])
        if name != str(entry["client"]) or reported < steps:
            return (
                f"device {entry['identity']} came back as {entry['client']} with {reported} DP steps in its history; the "
                f"ledger holds {steps} under {name}: it lost its state and may not train on a fresh budget"
            )
        return None

    @classmethod
    def from_ledger(cls, entries) -> "RoundBook":
        """The book of a run being resumed, rebuilt from its ledger."""
        book = cls(evaluate_all=True)
        for entry in entries:
            if entry.kind == "client-round" and not entry.body.get("declined") and not entry.body.get("rejected"):
                book.record_identity(entry.body)
                client = str(entry.body["client"])
                book.epsilon[client] = float(entry.body["epsilon"])
                book.rounds_trained[client] = book.rounds_trained.get(client, 0) + 1
        return book

    def evaluation_pool(self, all_nodes: list[int]) -> list[int]:
        return sorted(all_nodes) if self.evaluate_all else sorted(self.eval_nodes)

    def epsilon_stats(self) -> dict[str, float]:
        values = [e for e in self.epsilon.values() if e >= 0]
        if not values:
            return {"epsilon-max": 0.0, "epsilon-mean": 0.0}
        return {"epsilon-max": float(max(values)), "epsilon-mean": float(np.mean(values))}


@dataclass
class ResumePoint:
    """Where a resumed run continues: the last round in the ledger, its model and bookkeeping."""

    round: int
    arrays: ArrayRecord
    strategy_state: dict[str, Any]
    book: RoundBook
    rows: list[dict[str, Any]]
