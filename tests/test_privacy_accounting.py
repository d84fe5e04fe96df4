"""Epsilon is cumulative across rounds, restored from plain JSON, and never resets."""

from __future__ import annotations

import numpy as np
import torch

from shared.data import leave_last_out, load_dataset
from shared.features import load_or_compute_features
from shared.models.recommender import ModelSpec, Recommender, catalog_tensors
from shared.privacy.accounting import (
    epsilon_of,
    history_from_json,
    history_to_json,
    total_steps,
)
from shared.training import TrainConfig, train_local


def test_history_round_trips_and_counts_steps():
    history = [(1.0, 0.25, 8), (1.0, 0.5, 4)]
    assert history_from_json(history_to_json(history)) == history
    assert total_steps(history) == 12
    assert epsilon_of(history, 1e-5) > epsilon_of(history[:1], 1e-5) > 0


def test_local_training_extends_the_restored_history(small_dataset, feature_cache):
    dataset = load_dataset(small_dataset)
    split = leave_last_out(dataset)
    catalog = catalog_tensors(load_or_compute_features(dataset, feature_cache, progress=False))
    config = TrainConfig(local_epochs=1, batch_size=8, noise_multiplier=1.0)
    torch.manual_seed(0)
    model = Recommender(ModelSpec(), num_users=1)
    first = train_local(model, catalog, split.train_items[0], config, [], seed=1)
    second = train_local(model, catalog, split.train_items[0], config, first.history, seed=2)
    n = len(split.train_items[0])
    assert first.sample_rate == 1 / int(np.ceil(n / 8))
    assert total_steps(first.history) == first.steps
    assert total_steps(second.history) == first.steps + second.steps
    assert second.epsilon > first.epsilon > 0
    assert np.isclose(second.epsilon, epsilon_of(second.history, config.delta))


def test_projected_epsilon_is_exactly_what_the_next_round_spends(small_dataset, feature_cache):
    from shared.training import projected_epsilon

    dataset = load_dataset(small_dataset)
    split = leave_last_out(dataset)
    catalog = catalog_tensors(load_or_compute_features(dataset, feature_cache, progress=False))
    config = TrainConfig(local_epochs=2, batch_size=8, noise_multiplier=0.9)
    items = split.train_items[1]
    predicted = projected_epsilon([], len(items), config)
    result = train_local(Recommender(ModelSpec(), num_users=1), catalog, items, config, [], seed=3)
    assert np.isclose(predicted, result.epsilon)
    assert projected_epsilon(result.history, len(items), config) > result.epsilon
