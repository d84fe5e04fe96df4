"""The privacy-mechanism interface: every privacy mode goes through this one hall.

In the spirit of Opacus' accountants (one class per file behind ``IAccountant``, a registry of
names): a mechanism names itself, checks the settings it reads, states its guarantee for the
ledger's header (the unit, the neighbouring relation, whom you must trust), drives the run
(rounds or releases, both committing checkpoint or release file, then ledger, then metrics),
says what the summary reports of it, and runs its own audit checks from the ledger alone.
The run's set-up, its driver loop, the summary and the audit never ask which mode they are
in: they ask the mechanism.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from shared.config import RunConfig
from shared.run_directory import library_versions

if TYPE_CHECKING:  # the driver's types; the registry itself stays light (the CLI checks configs with it)
    from flwr.app import ArrayRecord
    from flwr.serverapp import Grid

    from server.aggregation import Aggregator
    from server.audit.report import AuditReport
    from server.book import RoundBook
    from server.run_setup import RunSetup
    from shared.privacy.canaries import CanarySet
    from shared.privacy.ledger import Entry
    from shared.run_directory import RunDirectory

NOT_APPLICABLE = "not applicable"


@dataclass
class Outcome:
    """What a mechanism's driver hands back to :func:`server.federation.run_federated`."""

    evaluation: dict[str, float]
    rows: list[dict[str, Any]]
    book: "RoundBook"
    user_epsilon: float | None  # None: this mechanism makes no user-level claim
    arrays: "ArrayRecord"  # the served model's arrays (the item tower, or nothing for releases)


class PrivacyMechanism(ABC):
    """One privacy mode. Subclass it in one file and add the class to
    :data:`server.mechanisms.MECHANISMS`: nothing else needs to know it exists."""

    name: ClassVar[str]  # the registry key
    mode: ClassVar[str]  # the run config's ``privacy`` value it serves
    variant: ClassVar[tuple[str, str] | None] = None  # (key, value): a second setting that picks it among a mode's
    unit: ClassVar[str]  # the privacy unit and where the noise is added
    neighbours: ClassVar[str]  # the neighbouring relation the epsilon is stated for
    trust: ClassVar[str]  # whom you must trust for the claim to hold
    local_dp: ClassVar[bool] = False  # devices train with DP-SGD (example-level claims in the ledger)
    central_dp: ClassVar[bool] = False  # the server clips and noises the devices' updates (DP-FedAvg)
    resumable: ClassVar[bool] = True
    export_kind: ClassVar[str] = "item-tower"  # what ``fedmmrec export`` writes of a run: its trained tower
    foreign_entries: ClassVar[tuple[str, ...]] = ()  # ledger entry kinds this mechanism never writes
    # check -> (what it verifies, what it cannot see), for checks of its own the audit's table
    # (server/audit/limits.py) does not describe; shown beside each result in the report.
    check_limits: ClassVar[dict[str, tuple[str, str]]] = {}
    warning: ClassVar[str | None] = None  # printed when a run starts (NOT PRIVATE)

    def __init__(self, config: RunConfig) -> None:
        self.validate(config)
        self.config = config

    @classmethod
    def selects(cls, config: Mapping[str, Any]) -> bool:
        """Whether a (flat) run config asks for this mechanism."""
        return config.get("privacy") == cls.mode and (cls.variant is None or config.get(cls.variant[0]) == cls.variant[1])

    @classmethod
    def validate(cls, config: RunConfig) -> None:
        """Refuse settings this mechanism cannot honour, saying the fix."""
        from shared.models.recommender import model_spec

        model_spec(config, num_items=1)  # the item tower's fusion head and modalities, named with the choices
        if config.privacy.canaries and not cls.central_dp:
            raise ValueError("canaries audit the server-side mechanism: they need privacy = central or both")

    # -- the ledger's header ------------------------------------------------------------
    def header(self, population: int, canary_commitment: str | None) -> dict[str, Any]:
        """The ledger's first entry: what is protected, against which neighbour, under which
        assumptions (read by the audit and by a reader of the ledger alone)."""
        config = self.config
        header = {
            "privacy-mode": config.privacy.privacy,
            "privacy-unit": self.unit,
            "neighbouring-relation": self.neighbours,
            "delta": config.privacy.delta,
            "delta-rationale": f"fixed by the run config; below 1/population (1/{population}) and below 1/n for every device's n",
            "population": population,
            "client-sampling": (
                f"Poisson: each client independently with probability {config.federation.fraction_train} each round (OS entropy)"
                if self.central_dp
                else f"each round a uniform fraction {config.federation.fraction_train} of clients, without replacement; "
                "clients at their cap are replaced by others not yet asked"
            ),
            "local-sampling": "Poisson, rate 1/ceil(n / batch-size) (Opacus DPDataLoader)" if self.local_dp else "shuffled batches",
            "accountant": config.privacy.accountant,
            "epsilon-cap": config.privacy.epsilon_cap or None,
            "server-dp": self.central_dp,
            "versions": library_versions(),
            "config": {k: (str(v) if isinstance(v, float) and not np.isfinite(v) else v) for k, v in config.items()},
        }
        header.update(self.header_fields(canary_commitment))
        return header

    def header_fields(self, canary_commitment: str | None) -> dict[str, Any]:
        """The mechanism's own header entries (its noise, its accounting, its trust)."""
        return {}

    # -- the run ------------------------------------------------------------------------
    def aggregator(
        self, population: int, initial: "ArrayRecord", canaries: "CanarySet | None"
    ) -> "Aggregator | None":
        """The round-based aggregation this mechanism trains with (None: it trains no rounds)."""
        return None

    @abstractmethod
    def run(self, grid: "Grid", setup: "RunSetup") -> Outcome:
        """Drive the run from its set-up to the served model's evaluation."""

    def evaluation_settings(self) -> dict[str, Any]:
        """What a device is sent to rank the catalog with the served model."""
        return self.config.device_settings()

    # -- the device's side ------------------------------------------------------------
    @classmethod
    def train_tasks(cls) -> dict[str, Any]:
        """What a device does with this mechanism's TRAIN messages: task -> handler
        ``(msg, context, request) -> reply`` (:mod:`client.tasks`). Imported lazily: the device
        loads only the handlers of the mechanism a message names, and never the server's code."""
        return {}

    @classmethod
    def evaluate_tasks(cls) -> dict[str, Any]:
        """The same for EVALUATE messages (ranking the catalog)."""
        return {}

    # -- the summary --------------------------------------------------------------------
    def summary_privacy(self, book: "RoundBook", rows: list[dict[str, Any]], user_epsilon: float | None) -> dict[str, Any]:
        """``summary.json``'s privacy block; a claim that does not apply says so (not 0.0)."""
        examples = book.epsilon_stats() if self.local_dp else {"epsilon-max": NOT_APPLICABLE, "epsilon-mean": NOT_APPLICABLE}
        return {
            "mode": self.config.privacy.privacy,
            "mechanism": self.name,
            "unit": self.unit,
            "delta": self.config.privacy.delta,
            "accountant": self.config.privacy.accountant,
            **examples,
            "user-level-epsilon": user_epsilon,
            "clients-trained": len(book.rounds_trained),
        }

    def privacy_line(self, privacy: dict[str, Any]) -> str:
        """What the run spent, with its unit and delta, for the console's last line."""
        parts = []
        if self.local_dp:
            parts.append(f"example-level epsilon max {privacy['epsilon-max']:.2f}")
        if self.central_dp and privacy["user-level-epsilon"] is not None:
            parts.append(f"user-level epsilon {privacy['user-level-epsilon']:.2f}")
        if not parts:
            return "NOT PRIVATE"
        return " and ".join(parts) + f" at delta {self.config.privacy.delta:g}"

    # -- the audit ----------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def audit(
        cls, report: "AuditReport", run: "RunDirectory", header: dict[str, Any], entries: "list[Entry]",
        delta: float, gaps: list[float], node_keys: Any = None,
    ) -> None:
        """This mechanism's checks of a finished run, from its run directory alone."""
