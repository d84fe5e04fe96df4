"""Frozen pretrained backbones (text, image) and the on-disk cache of their item features."""

from shared.features.cache import ItemFeatures, load_or_compute_features

__all__ = ["ItemFeatures", "load_or_compute_features"]
