"""The smallest multimodal tower worth training on devices: a learned projection of the public
item content, on top of the released statistics model.

Why this shape (the population study, :mod:`simulations.studies.population`): the devices' DP-FedAvg
noise grows like sqrt(d) over the d trained weights, so the trained part must be small; the
frozen encoders (MiniLM text, MobileNetV2 image) and the released statistics already give every
item a public content vector and every user a private score. What is left to learn from users
is which directions of the content their choices follow, which is what a fusion head does.
So the tower here is one linear map ``W`` [d, d] over the top ``d`` principal directions ``P``
of the content (:func:`content_projection`, public), initialised at the identity (the content
similarity of the public features, before any device trained it). Item ``i``'s embedding is
``a_i = P_i W``; a user's is the mean of its history's embeddings, computed on its device (as
the statistics model's user vector, FedRecon-style: it never leaves the device). The score adds
``weight * <a_i, mean_h a_h>`` to the statistics model's score.

A device's update is the gradient of its own leave-one-out loss (each of a few history items
in turn is the target, ranked by softmax at ``temperature`` among the items outside the rest of
its history that existed at release time), negated: one local step of size 1. New films are
left out of that softmax: no history holds one, so as negatives they would only teach the tower
to rank every new film last (measured: it halved cold HR@10 before they were left out).
:mod:`server.mechanisms.dp_fedavg.noise` clips and noises it like any DP-FedAvg update. numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from shared.item_content import unit_content
from shared.item_model import CooccurrenceModel


def content_projection(content: np.ndarray, components: int) -> np.ndarray:
    """The public content's top ``components`` principal directions, as coordinates [N, d]
    (unit-norm content vectors, centred; the same on the server and every device)."""
    vectors = unit_content(content)
    centred = vectors - vectors.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    k = min(components, len(s))
    return u[:, :k] * s[:k]


@dataclass(frozen=True)
class ContentAdapter:
    """The statistics model plus a device-trained content term (see the module docstring)."""

    statistics: CooccurrenceModel
    projection: np.ndarray  # P [N, d], public
    weights: np.ndarray  # W [d, d], trained by DP-FedAvg
    weight: float  # how much the content term adds to the statistics' score

    @cached_property
    def embeddings(self) -> np.ndarray:
        """Every item's embedding ``P W`` [N, d]: once per model, not once per device."""
        return self.projection @ self.weights

    def scores(self, history: np.ndarray) -> np.ndarray:
        """Every catalog item's score for a device with this history [N]."""
        history = np.asarray(history, dtype=np.int64)
        base = self.statistics.scores(history)
        if len(history) == 0:
            return base
        return base + self.weight * self.embeddings @ self.embeddings[history].mean(0)

    def update(self, history: np.ndarray, targets: np.ndarray, temperature: float) -> np.ndarray:
        """A device's update of ``W`` [d, d]: minus the mean gradient of its leave-one-out
        softmax loss over ``targets`` (items of its history). Zeros without a usable target."""
        history = np.asarray(history, dtype=np.int64)
        embeddings = self.embeddings
        gradient = np.zeros_like(self.weights)
        used = 0
        for target in np.asarray(targets, dtype=np.int64).tolist():
            rest = history[history != target]
            if len(rest) == 0:
                continue
            profile = embeddings[rest].mean(0)
            logits = temperature * (self.statistics.scores(rest) + self.weight * embeddings @ profile)
            logits[rest] = -np.inf
            if self.statistics.from_content is not None:
                # Films placed from their content did not exist when the devices' histories were
                # made: as negatives they would teach the tower that new films are never chosen.
                logits[self.statistics.from_content & (np.arange(len(logits)) != target)] = -np.inf
            probabilities = np.exp(logits - logits.max())
            probabilities /= probabilities.sum()
            probabilities[target] -= 1.0  # d loss / d logits
            # logits_i = T (base_i + weight * a_i . q), a = P W, q = mean over rest of a_h:
            # d/dW = T weight (P^T g q^T + mean_rest(P)^T (A^T g)^T)
            gradient += temperature * self.weight * (
                np.outer(self.projection.T @ probabilities, profile)
                + np.outer(self.projection[rest].mean(0), embeddings.T @ probabilities)
            )
            used += 1
        return -gradient / used if used else gradient

    def with_weights(self, weights: np.ndarray) -> "ContentAdapter":
        return ContentAdapter(self.statistics, self.projection, weights, self.weight)


@dataclass(frozen=True)
class TowerSettings:
    """How the tower is trained by DP-FedAvg (:func:`simulations.studies.population.train_tower`); the
    defaults were chosen on validation items, never on test items (docs/population.md)."""

    components: int = 32  # content principal directions: the tower has components^2 weights
    rounds: int = 20
    devices_per_round: int = 1000  # expected; the Poisson rate is min(1, this / population)
    clip_norm: float = 1.0
    server_lr: float = 3.0
    temperature: float = 10.0
    weight: float = 3.0
    targets: int = 4  # leave-one-out targets per device and round
