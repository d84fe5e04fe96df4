"""Trainable item-side modules (modality encoders, fusion heads) and the user representation."""

from shared.models.fusion import FUSION_HEADS, FusionHead, make_fusion
from shared.models.recommender import ItemTower, Recommender, item_inputs

__all__ = ["FUSION_HEADS", "FusionHead", "make_fusion", "ItemTower", "Recommender", "item_inputs"]
