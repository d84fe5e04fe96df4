"""The interface every round-based aggregation mechanism implements.

The round loop (:mod:`server.rounds`) asks an :class:`Aggregator` four things and never which
mechanism it is: may round ``r`` run, which nodes train in it, what the round releases from
their replies, and what state a checkpoint must keep. One implementation per mechanism, one
file each, named in :data:`server.aggregation.AGGREGATORS` (as Opacus' accountants are).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, Message
from flwr.serverapp import Grid

# The server-round ledger fields of a round without server-side DP.
NO_SERVER_DP: dict[str, Any] = {"server-dp": False, "server-noise-std": 0.0, "server-clip-norm": None, "user-level-epsilon": None}


@dataclass
class Aggregate:
    """What one round released: the new global arrays and what the ledger and metrics record."""

    arrays: ArrayRecord
    train_loss: float
    skipped: str = ""  # why the model did not change ("" when it did)
    ledger_fields: dict[str, Any] = field(default_factory=lambda: dict(NO_SERVER_DP))
    row_fields: dict[str, Any] = field(default_factory=dict)  # extra metrics.jsonl columns


class Aggregator(ABC):
    """One aggregation mechanism, chosen once when the run is set up."""

    #: ask other clients in place of those that declined at their epsilon cap (keeps a round's
    #: size; off where the accounting assumes one Poisson draw)
    replace_declined: bool = True
    #: the privacy unit the mechanism itself protects, for the console ("" when none)
    spends_user_level: bool = False

    @abstractmethod
    def stop_before(self, server_round: int) -> tuple[str, dict[str, Any]] | None:
        """``(message, ledger body)`` when round ``server_round`` must not run (a budget), else None."""

    @abstractmethod
    def train_messages(
        self, server_round: int, arrays: ArrayRecord, settings: dict[str, Any], grid: Grid, nodes: list[int]
    ) -> list[Message]:
        """The round's TRAIN messages: who is sampled; they receive ``arrays`` and ``settings``."""

    @abstractmethod
    def aggregate(self, server_round: int, arrays: ArrayRecord, replies: list[Message]) -> Aggregate:
        """Release the round's model from the valid ``replies`` to the model ``arrays``."""

    def state(self) -> dict[str, Any]:
        """What a checkpoint must keep for a resume (a server optimiser's moments)."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` saved at a checkpoint."""

    def stop_after(self, trained: int, declined: int) -> bool:
        """Whether the run ends after a round: every client asked is at its cap."""
        return bool(declined and not trained)
