"""Mechanisms that release noisy sums of bounded device statistics (``privacy = user``).

Each device contributes once to each release; the server post-processes the releases (and the
public catalog's content) into the served item model, and each device ranks the catalog with
its own history. The driver is :func:`server.releases.run_releases`; who adds the noise is
the mechanism's :class:`Releaser` (the server's Gaussian, or the devices' Skellam shares under
secure aggregation).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from server.mechanisms.base import Outcome, PrivacyMechanism
from shared.config import RunConfig
from shared.messages import RANK_TASK, TASK_KEY
from shared.releases import check_release_settings

if TYPE_CHECKING:
    from flwr.app import ArrayRecord
    from flwr.serverapp import Grid

    from server.book import RoundBook
    from server.run_setup import RunSetup
    from shared.privacy.ledger import Ledger
    from shared.run_directory import RunDirectory


@dataclass
class Released:
    """One release as the driver needs it: the noisy sum, who is in it, the epsilon spent so
    far, the noise std the model is fitted under, and the ledger entry's body."""

    noisy: np.ndarray
    contributors: list[str]
    epsilon: float
    fitted_std: float
    body: dict[str, Any]


class Releaser(ABC):
    """Who adds the noise to each release, and what evidence the run keeps of it."""

    def start(self) -> None:
        """Before the first release (key agreement, for a secure sum)."""

    @abstractmethod
    def release(self, server_round: int, name: str, dimension: int, arrays: "ArrayRecord") -> Released:
        """Ask every device for its statistic ``name`` and release the noisy sum."""

    def finish(self, run_dir: "RunDirectory") -> None:
        """After the last release: write the evidence files the audit reads."""


class StudyNoise(ABC):
    """A mechanism's releases run in one process, for a study (:mod:`simulations.studies.streaming`):
    the same clip, rounding and noise as its releaser, over a study's own list of releases
    (budget shares and dimensions), without the messages. The study hands each release every
    device's contribution; the noise and the accounting are the mechanism's."""

    @abstractmethod
    def release(self, index: int, contributions: "Iterable[np.ndarray]", dimension: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        """Release ``index`` of the study's list: (the noisy sum over ``contributions``, each one
        device's, and the noise std it carries, in units of the clip)."""

    @abstractmethod
    def epsilon(self, count: int) -> float:
        """User-level epsilon after the first ``count`` releases of the list (at the run's delta)."""


class ReleasesMechanism(PrivacyMechanism):
    """User-level DP from a few releases of bounded device statistics, no rounds of training."""

    mode = "user"
    unit = "user (all of one device's interactions), at the server"
    neighbours = "add or remove one user (a device and all its data) from the population"
    resumable = False  # a run of releases is not resumed: a new run spends a new budget
    export_kind = "user-level"  # the released model and the catalog's content
    foreign_entries = ("server-round", "client-round", "resume", "data")

    @classmethod
    def validate(cls, config: RunConfig) -> None:
        super().validate(config)
        check_release_settings(config)
        p = config.privacy
        if p.cooccurrence_items < 1 or p.max_factors < 1:
            raise ValueError("cooccurrence-items and max-factors must be at least 1")
        from shared.cooccurrence import ITEM_MODELS

        if p.item_model not in ITEM_MODELS:
            raise ValueError(f"item-model {p.item_model!r}: choose one of {', '.join(ITEM_MODELS)}")
        if not p.ease_lambda > 0 or not p.cold_weight >= 0:
            raise ValueError("ease-lambda must be positive and cold-weight at least 0")

    @classmethod
    def train_tasks(cls) -> dict[str, Any]:
        """A bounded statistic in the clear, one task per release (the server adds the noise)."""
        from client.statistics import send_statistic
        from shared.releases import RELEASES

        return {release.name: send_statistic for release in RELEASES}

    @classmethod
    def evaluate_tasks(cls) -> dict[str, Any]:
        from client.ranking import rank_with_released_model

        return {RANK_TASK: rank_with_released_model}

    def header_fields(self, canary_commitment: str | None) -> dict[str, Any]:
        return {
            "client-sampling": "every device, once per release (full participation)",
            "local-sampling": "none: each device sends one statistic of all its interactions per release",
        }

    def user_epsilon_field(self) -> float:
        """The budget for the header (-1: infinite, JSON has no inf)."""
        epsilon = self.config.privacy.user_epsilon
        return epsilon if epsilon != float("inf") else -1.0

    @abstractmethod
    def releaser(self, grid: "Grid", nodes: list[int], dimensions: dict[str, int], ledger: "Ledger", log) -> Releaser:
        """Who adds this mechanism's noise."""

    def study_noise(self, shares: list[float], dimensions: list[int], devices: int) -> StudyNoise:
        """This mechanism's noise over a study's list of releases (each a share of the run's
        ``user-epsilon`` and a dimension), for ``devices`` devices."""
        raise ValueError(f"mechanism {self.name} has no study noise: the studies run the mechanisms that define study_noise")

    def evaluation_settings(self) -> dict[str, Any]:
        return {**self.config.device_settings(), TASK_KEY: RANK_TASK}

    def run(self, grid: "Grid", setup: "RunSetup") -> Outcome:
        from flwr.app import ArrayRecord

        from server.book import RoundBook
        from server.rounds import evaluate_nodes
        from server.releases import run_releases
        from shared.features import load_or_compute_features

        known = np.ones(setup.dataset.num_items, dtype=bool)
        if setup.split is not None:
            known[setup.split.held_out_items] = False  # items that do not exist yet (cold-start protocol)
        features = load_or_compute_features(setup.dataset, self.config.data.feature_cache or None, progress=False)
        nodes = sorted(grid.get_node_ids())

        def evaluate(through: "Grid", arrays: ArrayRecord, server_round: int) -> dict[str, float]:
            return evaluate_nodes(through, nodes, arrays, self.evaluation_settings(), server_round)

        evaluation, rows, epsilon = run_releases(grid, self, features, known, setup.run_dir, setup.ledger, evaluate)
        return Outcome(evaluation, rows, RoundBook(), epsilon, ArrayRecord())

    def summary_privacy(self, book: "RoundBook", rows: list[dict[str, Any]], user_epsilon: float | None) -> dict[str, Any]:
        return {**super().summary_privacy(book, rows, user_epsilon), "clients-trained": rows[-1]["clients-trained"]}

    def privacy_line(self, privacy: dict[str, Any]) -> str:
        epsilon = privacy["user-level-epsilon"]
        claim = "NOT PRIVATE (user-epsilon = inf)" if epsilon == float("inf") else f"user-level epsilon {epsilon:.2f}"
        return claim + f" at delta {self.config.privacy.delta:g}"
