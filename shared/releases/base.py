"""One release of ``privacy = user``: what every part of the house asks of a statistic.

A release is a noisy sum of one bounded statistic per device (L2 norm at most 1, user-level
sensitivity 1). Its object knows the statistic's dimension, how a device computes its
contribution (numpy only: a device never imports torch), what the server sends with the
request, and how the server post-processes the noisy sum into the served model. The server's
run, the device, the audit's refit and the studies iterate the same list
(:data:`shared.releases.RELEASES`), so a release's name and arithmetic live here once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

from shared.item_model import CooccurrenceModel


def setting(config: Mapping, key: str, default: object = None):
    """A run-config value from a RunConfig or a flat mapping (a ledger header's, which may predate
    the key): the mapping's, else ``default``, else the code's default."""
    from shared.config import DEFAULTS

    return config[key] if key in config else (DEFAULTS[key] if default is None else default)


@dataclass(frozen=True)
class ModelSettings:
    """The run-config settings the post-processing reads (``max-factors`` and the rest)."""

    cooccurrence_items: int
    max_factors: int
    popularity_weight: float
    item_model: str
    ease_lambda: float
    cold_weight: float

    @classmethod
    def of(cls, config: Mapping) -> "ModelSettings":
        """From a flat kebab-case config (a :class:`~shared.config.RunConfig` or a ledger header's)."""
        def get(key: str):
            return setting(config, key)

        return cls(
            int(get("cooccurrence-items")), int(get("max-factors")), float(get("popularity-weight")), str(get("item-model")),
            float(get("ease-lambda")), float(get("cold-weight")),
        )


@dataclass(frozen=True)
class Fit:
    """What the server has made of the releases so far: the public catalog (content, the items
    that exist at release time) and the post-processed state each release adds to. Frozen: a
    release returns a new one (the audit refits from the recorded releases the same way)."""

    content: np.ndarray  # [items, features], the public catalog content (float64)
    known: np.ndarray  # [items] bool: items that exist at release time
    settings: ModelSettings
    noisy: dict[str, np.ndarray] = field(default_factory=dict)  # release name -> its noisy sum
    noise_std: dict[str, float] = field(default_factory=dict)  # release name -> the std its fit assumes
    top_items: np.ndarray | None = None  # the items whose co-occurrence is released (after popularity)
    model: CooccurrenceModel | None = None  # the served model (after co-occurrence)
    rank: int = 0  # factors kept (or M for EASE)

    @property
    def num_items(self) -> int:
        return len(self.known)

    @property
    def m(self) -> int:
        """Items whose co-occurrence is released: ``cooccurrence-items``, at most the known items."""
        return min(self.settings.cooccurrence_items, int(np.asarray(self.known, dtype=bool).sum()))

    def with_release(self, name: str, noisy: np.ndarray, std: float, **changes) -> "Fit":
        return replace(self, noisy={**self.noisy, name: noisy}, noise_std={**self.noise_std, name: std}, **changes)


@dataclass(frozen=True)
class DeviceView:
    """What a device computes a contribution from: its own history (which never leaves it), what
    the server sent with the request, and the catalog content (loaded only if a release needs it)."""

    train_items: np.ndarray
    num_items: int
    validation_item: int  # its most recent training interaction (-1: none)
    arrays: Mapping[str, np.ndarray]
    content: Callable[[], np.ndarray]


class Release(ABC):
    """One statistic: subclass it in one file and add it to :data:`shared.releases.RELEASES`."""

    name: ClassVar[str]  # the release's name in the ledger, the messages and releases.npz
    share_key: ClassVar[str | None] = None  # the run-config key of its budget share, if it has its own

    def budget_share(self, shares: Mapping[str, float]) -> float:
        """Its share of the budget (of mu^2 in Gaussian DP), from the run's configured shares
        (``popularity-budget-share``, ``selection-budget-share``); 0: not released."""
        return float(shares[self.share_key])

    @abstractmethod
    def dimension(self, fit: Fit) -> int:
        """Values per contribution (the noise is added to each)."""

    def request(self, fit: Fit) -> dict[str, np.ndarray]:
        """What the server sends every device with the request (post-processing of earlier releases)."""
        return {}

    @abstractmethod
    def contribution(self, view: DeviceView) -> np.ndarray:
        """The device's contribution: a vector of :meth:`dimension` values, L2 norm at most 1."""

    @abstractmethod
    def post_process(self, fit: Fit, noisy: np.ndarray, std: float) -> Fit:
        """The fit after this release's noisy sum (fitted under noise std ``std``): free of
        privacy cost, recomputed by the audit from what the run recorded."""

    def recorded(self, fit: Fit) -> dict[str, np.ndarray]:
        """What ``releases.npz`` keeps of this release (its noisy sum, and what the server derived
        from it that later requests carried)."""
        return {self.name: fit.noisy[self.name]}
