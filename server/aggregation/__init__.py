"""Round-based aggregation behind one interface (:mod:`server.aggregation.base`).

A new aggregation is one new file implementing :class:`~server.aggregation.base.Aggregator`
plus one line in :data:`AGGREGATORS`; a round-based privacy mechanism
(:mod:`server.mechanisms.rounds`) names the one it trains with.
"""

from __future__ import annotations

from server.aggregation.base import Aggregate, Aggregator
from server.mechanisms.dp_fedavg.aggregation import DPFedAvgAggregator
from server.aggregation.flower_strategy import StrategyAggregator

# name -> factory(config, population, initial arrays, canaries)
AGGREGATORS = {
    "flower-strategy": lambda config, population, initial, canaries: StrategyAggregator(config, population),
    "dp-fedavg": DPFedAvgAggregator,
}

__all__ = ["AGGREGATORS", "Aggregate", "Aggregator"]
