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
from shared.models.recommender import ModelSpec, Recommender, catalog_tensors, item_inputs


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
