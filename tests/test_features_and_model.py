"""Backbone features are real, cached by content, and the model handles missing modalities."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from shared.data import load_dataset
from shared.features import cache as cache_module
from shared.features import load_or_compute_features
from shared.models.fusion import FUSION_HEADS
from shared.models.recommender import (
    ModelSpec,
    Recommender,
    catalog_tensors,
    item_inputs,
)


def test_features_are_computed_once_then_read_from_cache(small_dataset, feature_cache, monkeypatch):
    dataset = load_dataset(small_dataset)
    first = load_or_compute_features(dataset, feature_cache, progress=False)
    assert first.text.shape == (120, 384) and first.image.shape == (120, 1280)
    assert np.allclose(np.linalg.norm(first.text[first.text_mask], axis=1), 1.0, atol=1e-4)
    assert np.all(first.image[first.image_mask].std(axis=1) > 0)
    assert not first.text[~first.text_mask].any()

    def fail(*args, **kwargs):
        raise AssertionError("backbone called although the cache holds the features")

    monkeypatch.setattr("shared.features.text.encode_texts", fail)
    monkeypatch.setattr("shared.features.image.encode_images", fail)
    second = load_or_compute_features(dataset, feature_cache, progress=False)
    assert np.array_equal(first.text, second.text) and np.array_equal(first.image, second.image)


def test_two_processes_missing_one_cache_entry_at_once_compute_it_once(small_dataset, tmp_path, monkeypatch):
    # Two users of one cache (the suite's workers, a grid's runs): the second to miss waits for
    # the first's result instead of encoding the catalog again. The threads open the lock file
    # separately, so they contend as two processes do.
    import threading

    dataset = load_dataset(small_dataset)
    calls, second_entered = [], threading.Event()

    def encode(texts, progress):
        calls.append(len(texts))
        if len(calls) == 1:
            second_entered.wait(timeout=2.0)  # without the lock the other thread gets in here
        else:
            second_entered.set()
        return np.ones((len(texts), 384), np.float32)

    monkeypatch.setattr(cache_module, "_encode_texts", encode)
    results = []

    def load():
        results.append(load_or_compute_features(dataset, tmp_path / "cache", progress=False, modalities=("text",)))

    first = threading.Thread(target=load)
    first.start()
    while not calls and first.is_alive():  # until the first is encoding
        first.join(timeout=0.01)
    second = threading.Thread(target=load)
    second.start()
    first.join()
    second.join()
    present = sum(bool(t) for t in dataset.descriptions)
    assert calls == [present]
    assert len(results) == 2 and np.array_equal(results[0].text, results[1].text)


def test_editing_a_description_changes_only_the_text_cache_key(small_dataset, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(small_dataset, root)
    before = load_dataset(root)
    text = (root / "items.csv").read_text()
    (root / "items.csv").write_text(text.replace("tones throughout", "tones all along", 1))
    after = load_dataset(root)
    assert cache_module.text_cache_key(before) != cache_module.text_cache_key(after)
    assert cache_module.image_cache_key(before) == cache_module.image_cache_key(after)


@pytest.mark.parametrize("fusion", sorted(FUSION_HEADS))
def test_missing_modality_uses_learned_placeholder(small_dataset, feature_cache, fusion):
    features = load_or_compute_features(load_dataset(small_dataset), feature_cache, progress=False)
    catalog = catalog_tensors(features)
    torch.manual_seed(0)
    model = Recommender(ModelSpec(fusion=fusion), num_users=1)
    index = torch.tensor([[int(np.flatnonzero(features.text_mask & features.image_mask)[0])]])
    inputs = item_inputs(catalog, index)
    with torch.no_grad():
        present = model.item_tower(inputs)
        inputs["image_mask"] = torch.zeros_like(inputs["image_mask"])
        missing = model.item_tower(inputs)
        model.item_tower.encoders["image"].missing.weight.add_(1.0)
        moved = model.item_tower(inputs)
    assert not torch.allclose(present, missing)
    assert not torch.allclose(missing, moved)  # the placeholder is what stands in for the image


def test_id_parts_learn_under_dp_and_never_touch_unknown_items(small_dataset, feature_cache):
    """With item-ids, DP-SGD trains the per-item offsets and biases of the items a user has;
    an item outside the training catalog (cold start) is scored from its content alone."""
    from shared.data import leave_last_out
    from shared.training import TrainConfig, train_local

    dataset = load_dataset(small_dataset)
    features = load_or_compute_features(dataset, feature_cache, progress=False)
    unknown = np.array([5, 7])
    catalog = catalog_tensors(features, unknown)
    torch.manual_seed(0)
    model = Recommender(ModelSpec(id_items=dataset.num_items), num_users=1)
    train = leave_last_out(dataset).train_items[0]
    train = train[~np.isin(train, unknown)]
    result = train_local(model, catalog, train, TrainConfig(local_epochs=2, item_lr=0.5), [], seed=1, unavailable=unknown)
    assert result.steps > 0 and np.isfinite(result.epsilon)
    biases = model.item_tower.id_biases.weight.detach().squeeze(-1)
    assert biases[train].abs().min() > 0  # every interacted item's bias moved
    with torch.no_grad():
        before = model.score_all(0, catalog)
        model.item_tower.id_offsets.weight.add_(3.0)
        model.item_tower.id_biases.weight.add_(3.0)
        after = model.score_all(0, catalog)
    known = np.setdiff1d(np.arange(dataset.num_items), unknown)
    assert torch.equal(before[unknown], after[unknown])  # content only: the id rows are never read
    assert not torch.allclose(before[known], after[known])


def test_refit_fits_the_user_vector_to_the_current_tower_without_storing_it(small_dataset, feature_cache):
    from shared.data import leave_last_out
    from shared.metrics import rank_of
    from shared.training import refit_user

    dataset = load_dataset(small_dataset)
    catalog = catalog_tensors(load_or_compute_features(dataset, feature_cache, progress=False))
    split = leave_last_out(dataset)
    torch.manual_seed(0)
    model = Recommender(ModelSpec(id_items=dataset.num_items), num_users=1)
    stored = model.users.weight.detach().clone()
    train = split.train_items[0]
    stale = model.score_all(0, catalog).numpy()
    fitted = refit_user(model, catalog, train, steps=100, seed=0).numpy()
    assert torch.equal(model.users.weight, stored)  # serving only: the stored vector is unchanged
    # The user's own training items move up the ranking once the vector fits this tower.
    mean_rank = lambda scores: np.mean([rank_of(scores, int(i), np.setdiff1d(train, [i])) for i in train])
    assert mean_rank(fitted) < 0.5 * mean_rank(stale)


def test_a_huge_description_costs_what_its_first_tokens_cost(monkeypatch):
    """A 16 MiB field is cut before the tokenizer sees it, and embeds as its first 256 tokens do."""
    import transformers

    from shared.features import text as text_module

    seen: list[int] = []
    real = transformers.AutoTokenizer.from_pretrained

    def spying(path):
        tokenizer = real(path)

        def tokenize(chunk, **kwargs):
            seen.extend(len(t) for t in chunk)
            return tokenizer(chunk, **kwargs)

        return tokenize

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spying)
    head = "a quiet film about a lighthouse keeper and the storm that changes his life " * 40  # > 256 tokens
    huge = head + "x" * (16 * 2**20)
    out = text_module.encode_texts([huge, head], progress=False)
    assert seen == [text_module.MAX_TEXT_CHARS, len(head)]
    assert np.allclose(out[0], out[1], atol=1e-6)  # the tail past 256 tokens never counted
