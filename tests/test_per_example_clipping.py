"""The fast DP engine computes what Opacus computes: per-example norms and clipped sums checked
against Opacus' own per-example gradients, on real features and every fusion head; its noise
has the stated scale; its seeds repeat in a simulation and never on a device."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from shared.data import leave_last_out, load_dataset
from shared.features import load_or_compute_features
from shared.models.recommender import ModelSpec, Recommender, catalog_tensors
from shared.per_example import PerExampleClipping
from shared.training import TrainConfig, bpr_losses, parameter_groups, train_local


@pytest.fixture(scope="module")
def catalog(small_dataset, feature_cache):
    dataset = load_dataset(small_dataset)
    return catalog_tensors(load_or_compute_features(dataset, feature_cache, progress=False), np.array([3, 4]))


def _opacus_clipped_sums(model: nn.Module, loss_fn, params, max_norms):
    """Opacus' per-example gradients, clipped and summed with its per_layer formula."""
    wrapped = GradSampleModule(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss_fn(wrapped).mean().backward()
    sums, norms = [], []
    for p, c in zip(params, max_norms):
        per_example = p.grad_sample
        norm = per_example.flatten(1).norm(dim=1)
        sums.append(torch.einsum("i,i...", (c / (norm + 1e-6)).clamp(max=1.0), per_example))
        norms.append(norm)
    wrapped._close()
    return sums, norms


@pytest.mark.parametrize("fusion", ["concat", "gated", "attention"])
def test_clipped_sums_equal_opacus_per_layer_clipping(catalog, fusion):
    num_items = int(catalog["text"].shape[0])
    torch.manual_seed(0)
    model = Recommender(ModelSpec(fusion=fusion, id_items=num_items), num_users=1)
    with torch.no_grad():  # id parts away from their zero start, so their gradients matter
        model.item_tower.id_offsets.weight.normal_(std=0.5)
        model.item_tower.id_biases.weight.normal_(std=0.5)
    groups, max_norms = parameter_groups(model, TrainConfig(clip_norm=0.5))
    params = [p for g in groups for p in g["params"]]
    positives = torch.tensor([0, 1, 2, 3, 5, 8])
    negatives = torch.randint(0, num_items, (6, 8))
    negatives[0, 1] = negatives[0, 2]  # one example scores an item twice: its rows add
    negatives[1, 0] = positives[1]

    def loss_fn(net):
        return bpr_losses(net, torch.zeros(6, dtype=torch.long), positives, negatives, catalog)

    clipping = PerExampleClipping(model, params, max_norms)
    ours = clipping.clipped_sums(loss_fn(model).sum(), 6)
    clipping.close()
    expected, norms = _opacus_clipped_sums(model, loss_fn, params, max_norms)
    clipped = sum(int((n > c).sum()) for n, c in zip(norms, max_norms))
    assert clipped > 20  # the clip binds for many (tensor, example) pairs: the test sees clipping
    scale = max(float(e.abs().max()) for e in expected)
    for p, mine, theirs in zip(params, ours, expected):
        assert mine.shape == p.shape
        assert torch.allclose(mine, theirs, atol=1e-5 * scale, rtol=1e-4)


def test_a_layer_called_twice_sums_its_rows_per_example():
    """A module used twice in one forward (shared weights): the per-example gradient is the sum
    over both calls, and its norm is that sum's, as Opacus accumulates it."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(7, 4)
            self.linear = nn.Linear(4, 3)
            self.norm = nn.LayerNorm(3)

        def forward(self, idx):
            first = self.norm(self.linear(self.embed(idx[:, 0])))
            second = self.norm(self.linear(self.embed(idx[:, 1:])).mean(1))
            return (first * second).sum(-1)

    torch.manual_seed(1)
    model = Twice()
    idx = torch.tensor([[1, 2, 2], [3, 3, 4], [0, 5, 6], [1, 1, 1]])
    params = list(model.parameters())
    max_norms = [0.05] * len(params)
    clipping = PerExampleClipping(model, params, max_norms)
    ours = clipping.clipped_sums(model(idx).sum(), 4)
    clipping.close()
    expected, _ = _opacus_clipped_sums(model, lambda net: net(idx), params, max_norms)
    for mine, theirs in zip(ours, expected):
        assert torch.allclose(mine, theirs, atol=1e-6)


def test_unsupported_layers_are_refused_by_name():
    model = nn.Sequential(nn.Conv1d(2, 2, 1))
    with pytest.raises(TypeError, match="Conv1d.weight.*dp-engine"):
        PerExampleClipping(model, list(model.parameters()), [1.0, 1.0])


def test_noise_has_the_stated_scale_and_repeats_only_when_seeded(small_dataset, catalog):
    """With a clip far below the gradients, an update is noise: per coordinate, std
    lr * sigma * ||clip norms|| / expected batch. A simulation's seed repeats it; a device's
    OS-entropy noise (noise_seed None) never does."""
    items = leave_last_out(load_dataset(small_dataset)).train_items[0]
    config = TrainConfig(local_epochs=1, batch_size=8, noise_multiplier=2.0, clip_norm=1e-6, item_lr=0.5)

    def one_round(noise_seed):
        torch.manual_seed(0)
        model = Recommender(ModelSpec(), num_users=1)
        before = torch.nn.utils.parameters_to_vector(model.item_tower.parameters()).detach()
        result = train_local(model, catalog, items, config, [], seed=1, noise_seed=noise_seed)
        after = torch.nn.utils.parameters_to_vector(model.item_tower.parameters()).detach()
        return (after - before) / config.item_lr, result

    moved, result = one_round(7)
    expected_batch = int(len(items) * result.sample_rate)
    std = config.noise_multiplier * config.clip_norm / expected_batch * result.steps**0.5
    assert moved.std().item() == pytest.approx(std, rel=0.02)
    assert abs(moved.mean().item()) < 0.02 * std
    assert torch.equal(one_round(7)[0], moved)
    assert not torch.equal(one_round(None)[0], one_round(None)[0])


def test_both_engines_spend_the_same_and_both_learn(small_dataset, catalog):
    items = leave_last_out(load_dataset(small_dataset)).train_items[0]
    results = {}
    for engine in ("fast", "opacus"):
        torch.manual_seed(0)
        model = Recommender(ModelSpec(), num_users=1)
        config = TrainConfig(local_epochs=4, noise_multiplier=0.5, dp_engine=engine, lr=0.5, item_lr=0.1)
        first = train_local(model, catalog, items, config, [], seed=1, noise_seed=1)
        second = train_local(model, catalog, items, config, first.history, seed=2, noise_seed=2)
        results[engine] = (first, second)
    fast, opacus = results["fast"], results["opacus"]
    assert fast[1].history == opacus[1].history and fast[1].epsilon == opacus[1].epsilon
    for first, second in (fast, opacus):
        assert second.loss < first.loss  # the second round starts where the first left off
