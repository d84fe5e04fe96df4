"""DP-FedAvg at the server (``privacy = central`` or ``both``): Poisson sampling, each update
clipped, Gaussian noise on the sum (:mod:`server.mechanisms.dp_fedavg.noise`); the run stops before a
round that would exceed ``server-epsilon-cap``."""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message
from flwr.serverapp import Grid

from server.aggregation.base import Aggregate, Aggregator
from shared.config import RunConfig
from shared.messages import metrics_of, server_messages, update_of
from shared.privacy.canaries import CanarySet
from server.mechanisms.dp_fedavg.noise import CentralDP, ServerDP, flatten


def _mean_loss(replies: list[Message]) -> float:
    if not replies:
        return float("nan")
    weights = [float(metrics_of(r)["num-examples"]) for r in replies]
    return float(np.average([float(metrics_of(r)["train-loss"]) for r in replies], weights=weights))


class DPFedAvgAggregator(Aggregator):
    replace_declined = False  # the accounting assumes one Poisson draw per round
    spends_user_level = True

    def __init__(self, config: RunConfig, population: int, initial: ArrayRecord, canaries: CanarySet | None = None) -> None:
        mechanism = CentralDP(
            clip_norm=config.privacy.server_clip_norm,
            noise_multiplier=config.privacy.server_noise_multiplier,
            sample_rate=config.federation.fraction_train,
            population=population,
        )
        if canaries is None and config.privacy.canaries:
            canaries = CanarySet.draw(config.privacy.canaries, flatten(initial).size)
        self.server_dp = ServerDP(mechanism, config.privacy.delta, config.privacy.accountant, config.privacy.server_epsilon_cap, canaries)

    @property
    def canaries(self) -> CanarySet | None:
        return self.server_dp.canaries

    def stop_before(self, server_round: int) -> tuple[str, dict[str, Any]] | None:
        if not self.server_dp.would_exceed_cap(server_round):
            return None
        epsilon = self.server_dp.epsilon(server_round)
        return (
            f"the user-level epsilon would reach {epsilon:.3f} > server-epsilon-cap {self.server_dp.epsilon_cap:g}",
            {"reason": "server-epsilon-cap", "epsilon-if-run": epsilon},
        )

    def train_messages(self, server_round, arrays, settings, grid: Grid, nodes) -> list[Message]:
        return server_messages(self.server_dp.sample(nodes), arrays, settings, server_round)

    def aggregate(self, server_round: int, arrays: ArrayRecord, replies: list[Message]) -> Aggregate:
        noisy, canaries = self.server_dp.release(arrays, [update_of(r) for r in replies])
        fields = self._ledger_fields(noisy, canaries, server_round)
        return Aggregate(
            noisy.arrays, _mean_loss(replies), ledger_fields=fields, row_fields={"user-level-epsilon": fields["user-level-epsilon"]}
        )

    def stop_after(self, trained: int, declined: int) -> bool:
        return False  # Poisson rounds go on: the next draw may find clients with budget

    def _ledger_fields(self, noisy, canaries: int, server_round: int) -> dict[str, Any]:
        mechanism = self.server_dp.mechanism
        epsilon = self.server_dp.epsilon(server_round)
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
