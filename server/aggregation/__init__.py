"""Round-based aggregation mechanisms behind one interface (:mod:`server.aggregation.base`).

A new mechanism is one new file implementing :class:`~server.aggregation.base.Aggregator`
plus one line in :data:`AGGREGATORS`. ``privacy = user`` is not round-based (three releases
of device statistics) and has its own driver, :mod:`server.user_level`.
"""

from __future__ import annotations

from flwr.app import ArrayRecord

from server.aggregation.base import Aggregate, Aggregator
from server.aggregation.dp_fedavg import DPFedAvgAggregator
from server.aggregation.flower_strategy import StrategyAggregator
from shared.config import RunConfig
from shared.privacy.canaries import CanarySet

# name -> factory(config, population, initial arrays, canaries)
AGGREGATORS = {
    "flower-strategy": lambda config, population, initial, canaries: StrategyAggregator(config, population),
    "dp-fedavg": DPFedAvgAggregator,
}


def aggregator_name(config: RunConfig) -> str:
    """Which mechanism a run config asks for: DP-FedAvg under central DP, else the Flower strategy."""
    return "dp-fedavg" if config.privacy.central_dp else "flower-strategy"


def make_aggregator(
    config: RunConfig, population: int, initial: ArrayRecord, canaries: CanarySet | None = None
) -> Aggregator:
    return AGGREGATORS[aggregator_name(config)](config, population, initial, canaries)


__all__ = ["AGGREGATORS", "Aggregate", "Aggregator", "aggregator_name", "make_aggregator"]
