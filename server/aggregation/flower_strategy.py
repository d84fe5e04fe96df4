"""Aggregation by a Flower strategy: FedAvg (default), FedAdam, or a robust rule (FedMedian,
FedTrimmedAvg, Krum). Flower samples and aggregates; no server-side DP."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    Strategy,
)

from server.aggregation.base import Aggregate, Aggregator
from shared.config import RunConfig


def make_strategy(config: RunConfig, num_nodes: int) -> Strategy:
    """The Flower strategy ``config.federation.strategy`` names, sampling ``fraction-train`` of ``num_nodes``."""
    common = dict(
        fraction_train=config.federation.fraction_train,
        fraction_evaluate=0.0,  # evaluation is sent by server.rounds to clients that trained
        min_train_nodes=1,
        min_available_nodes=num_nodes,
    )
    expected = max(1, int(config.federation.fraction_train * num_nodes))
    if config.federation.strategy == "fedadam":
        return FedAdam(**common, eta=config.federation.server_lr, eta_l=config.training.lr, tau=config.federation.server_tau)
    if config.federation.strategy == "fedmedian":
        return FedMedian(**common)
    if config.federation.strategy == "fedtrimmedavg":
        return FedTrimmedAvg(**common, beta=config.federation.byzantine_fraction)
    if config.federation.strategy == "krum":
        return Krum(**common, num_malicious_nodes=int(config.federation.byzantine_fraction * expected))
    return FedAvg(**common)


def same_dtypes(arrays: ArrayRecord, template: ArrayRecord) -> ArrayRecord:
    """``arrays`` cast to ``template``'s dtypes. FedAdam and the other FedOpt strategies do
    their arithmetic in float64; a global model that drifted to float64 would double the
    traffic and make every float32 client reply fail validation from round 2 on."""
    return ArrayRecord({key: torch.from_numpy(arrays[key].numpy().astype(template[key].numpy().dtype)) for key in arrays})


class StrategyAggregator(Aggregator):
    """A Flower strategy behind the aggregation interface; a round with fewer than
    ``min-replies`` valid replies leaves the model unchanged."""

    def __init__(self, config: RunConfig, population: int) -> None:
        self.strategy = make_strategy(config, population)
        self.min_replies = int(config.federation.min_replies)

    def stop_before(self, server_round: int) -> None:
        return None

    def train_messages(self, server_round, arrays, settings, grid: Grid, nodes) -> list[Message]:
        return list(self.strategy.configure_train(server_round, arrays, ConfigRecord(dict(settings)), grid))

    def aggregate(self, server_round: int, arrays: ArrayRecord, replies: list[Message]) -> Aggregate:
        if len(replies) < self.min_replies:
            return Aggregate(arrays, float("nan"), skipped=f"{len(replies)} valid replies, fewer than min-replies {self.min_replies}")
        new_arrays, metrics = self.strategy.aggregate_train(server_round, replies) if replies else (None, None)
        arrays = same_dtypes(new_arrays, arrays) if new_arrays is not None else arrays
        return Aggregate(arrays, float(metrics["train-loss"]) if metrics else float("nan"))

    def state(self) -> dict[str, Any]:
        """The server optimiser's moments (FedAdam and other FedOpt strategies); {} for FedAvg."""
        state = {}
        for name in ("m_t", "v_t"):
            value = getattr(self.strategy, name, None)
            if value:
                state[name] = {k: torch.from_numpy(np.asarray(v)) for k, v in value.items()}
        return state

    def restore(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self.strategy, name, {k: v.numpy() for k, v in value.items()})
