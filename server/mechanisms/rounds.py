"""Mechanisms that train the item tower in rounds (Flower's strategy loop, or DP-FedAvg).

The driver is :func:`server.rounds.run_rounds` over the mechanism's
:class:`~server.aggregation.base.Aggregator`, committing through the one
:class:`~server.recorder.RoundRecorder`; then the final evaluation and ``final.pt``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server.mechanisms.base import Outcome, PrivacyMechanism
from shared.messages import TOWER_TASK

if TYPE_CHECKING:
    from flwr.app import ArrayRecord
    from flwr.serverapp import Grid

    from server.aggregation import Aggregator
    from server.audit.report import AuditReport
    from server.run_setup import RunSetup
    from shared.privacy.canaries import CanarySet
    from shared.privacy.ledger import Entry
    from shared.run_directory import RunDirectory


class RoundsMechanism(PrivacyMechanism):
    """Rounds of device training aggregated by a Flower strategy (DP-FedAvg under central DP)."""

    aggregation = "flower-strategy"  # a name in server.aggregation.AGGREGATORS
    foreign_entries = ("release", "release-aborted")

    @classmethod
    def train_tasks(cls) -> dict[str, Any]:
        from client.tasks import train_tower

        return {TOWER_TASK: train_tower}

    @classmethod
    def evaluate_tasks(cls) -> dict[str, Any]:
        from client.tasks import evaluate_tower

        return {TOWER_TASK: evaluate_tower}

    def aggregator(self, population: int, initial: "ArrayRecord", canaries: "CanarySet | None") -> "Aggregator":
        from server.aggregation import AGGREGATORS

        return AGGREGATORS[self.aggregation](self.config, population, initial, canaries)

    def run(self, grid: "Grid", setup: "RunSetup") -> Outcome:
        from server.book import RoundBook
        from server.recorder import RoundRecorder
        from server.rounds import evaluate_nodes, run_rounds

        config, aggregator = self.config, setup.aggregator
        recorder = RoundRecorder(setup.run_dir, setup.ledger, setup.resume.book if setup.resume else RoundBook(), config)
        arrays, book, rows = run_rounds(grid, aggregator, setup.initial, config, recorder, setup.resume)
        user_epsilon = rows[-1].get("user-level-epsilon") if rows and aggregator.spends_user_level else None
        nodes = book.evaluation_pool(list(grid.get_node_ids()))
        evaluation = evaluate_nodes(grid, nodes, arrays, self.evaluation_settings(), 0)
        setup.run_dir.save_checkpoint("final.pt", arrays.to_torch_state_dict(), {"config": config.flat()})
        return Outcome(evaluation, rows, book, user_epsilon, arrays)

    @classmethod
    def audit(
        cls, report: "AuditReport", run: "RunDirectory", header: dict[str, Any], entries: "list[Entry]",
        delta: float, gaps: list[float], node_keys: Any = None,
    ) -> None:
        """The device-side checks run for every mode; without server-side DP there is no more."""
        report.figures["server epsilon (user-level)"] = "not applicable: no server-side DP"
        report.figures["empirical lower bound"] = "not run: canaries audit the server-side (central DP) mechanism"
