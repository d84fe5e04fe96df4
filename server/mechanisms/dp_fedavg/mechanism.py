"""``privacy = central``: user-level DP-FedAvg (McMahan et al. 2018) at the server.

The server samples devices by Poisson sampling, clips each update to ``server-clip-norm``,
sums with equal weights and adds Gaussian noise; its accountant composes the sampled Gaussian
mechanism over rounds. The server sees each device's clipped update in the clear: it is
trusted. Canaries (``canaries``) let the audit compute a one-run empirical lower bound."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server.mechanisms.rounds import RoundsMechanism
from shared.config import RunConfig

if TYPE_CHECKING:
    from server.audit.report import AuditReport
    from shared.privacy.ledger import Entry
    from shared.run_directory import RunDirectory


class DPFedAvg(RoundsMechanism):
    name = "dp-fedavg"
    mode = "central"
    unit = "user (all of one device's interactions), at the server"
    neighbours = "add or remove one user (a device and all its data) from the population"
    trust = "the server: it sees each device's clipped update in the clear and adds the noise"
    central_dp = True
    aggregation = "dp-fedavg"

    @classmethod
    def validate(cls, config: RunConfig) -> None:
        super().validate(config)
        if config.federation.strategy != "fedavg":
            raise ValueError("central DP (privacy = central or both) aggregates with DP-FedAvg: use strategy = fedavg")

    def header_fields(self, canary_commitment: str | None) -> dict[str, Any]:
        return {
            "server-mechanism": "DP-FedAvg: clip each update to server-clip-norm, equal weights, Gaussian noise "
            "std server-noise-multiplier * server-clip-norm on the sum, divided by the expected count "
            "fraction-train * population",
            "server-accounting": "sampled Gaussian mechanism (Poisson rate fraction-train, noise multiplier "
            "server-noise-multiplier) composed over the rounds run",
            "server-epsilon-cap": self.config.privacy.server_epsilon_cap or None,
            "canaries": self.config.privacy.canaries,
            "canary-commitment": canary_commitment,
        }

    @classmethod
    def audit(
        cls, report: "AuditReport", run: "RunDirectory", header: dict[str, Any], entries: "list[Entry]",
        delta: float, gaps: list[float], node_keys: Any = None,
    ) -> None:
        """``server-accounting`` and, with canaries, ``empirical-lower-bound``."""
        from server.mechanisms.dp_fedavg.audit import audit_canaries, audit_server

        servers = [e for e in entries if e.kind == "server-round"]
        audit_server(report, header, servers, delta, gaps)
        audit_canaries(report, run, header, servers, delta)
