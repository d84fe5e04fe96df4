"""The recommender: an item tower (shared, federated) and user embeddings (private, on device).

``score(user, item) = <user_embedding, item_tower(item)> + item_bias(item)``. The item tower is
the only part that travels to the server; a user's embedding is trained on the device and stays
there. The tower always encodes the item's content, so a brand-new item (cold start) gets an
embedding as soon as it has a description or an image.

With ``id_items`` (run config ``item-ids``) the tower also holds a collaborative part, as
FedMF/FedNCF do: a learned offset vector and a popularity bias per catalog item, both starting
at zero. Content alone cannot tell a blockbuster from an obscure film with a similar plot; the
per-item part can, for the items people have interacted with. An item the tower has never been
trained on (``item_known`` false: a new item, or one the cold-start protocol holds out) is
scored from its content alone, exactly as a catalog item added after training would be.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from shared.config import DEFAULTS, parse_modalities
from shared.features.cache import ItemFeatures
from shared.features.image import IMAGE_DIM
from shared.features.text import TEXT_DIM
from shared.models.encoders import ModalityEncoder
from shared.models.fusion import FUSION_HEADS, make_fusion

MODALITY_DIMS = {"text": TEXT_DIM, "image": IMAGE_DIM}


@dataclass(frozen=True)
class ModelSpec:
    """Architecture choices; identical on every client and the server (sent in the config)."""

    # Defaults: the run config's (shared.config.RUN_CONFIG is their one home).
    modalities: tuple[str, ...] = tuple(DEFAULTS["modalities"].split(","))
    dim: int = DEFAULTS["dim"]
    hidden: int = DEFAULTS["hidden"]
    fusion: str = DEFAULTS["fusion"]
    id_items: int = 0  # catalog size when items also get learned id offsets and biases; 0: content only

    def __post_init__(self) -> None:
        unknown = [m for m in self.modalities if m not in MODALITY_DIMS]
        if unknown or not self.modalities:
            raise ValueError(
                f"modalities {self.modalities!r}: choose a non-empty subset of {tuple(MODALITY_DIMS)}"
            )


class ItemTower(nn.Module):
    """Modality encoders + fusion head: item content -> item embedding [..., dim]."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.encoders = nn.ModuleDict(
            {m: ModalityEncoder(MODALITY_DIMS[m], spec.dim, spec.hidden) for m in spec.modalities}
        )
        self.fusion = make_fusion(spec.fusion, len(spec.modalities), spec.dim)
        if spec.id_items:
            self.id_offsets = nn.Embedding(spec.id_items, spec.dim)
            self.id_biases = nn.Embedding(spec.id_items, 1)
            nn.init.zeros_(self.id_offsets.weight)
            nn.init.zeros_(self.id_biases.weight)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = [self.encoders[m](inputs[m], inputs[f"{m}_mask"]) for m in self.spec.modalities]
        vectors = self.fusion(torch.stack(tokens, dim=-2))
        if self.spec.id_items:
            known = inputs["item_known"].unsqueeze(-1)
            vectors = vectors + torch.where(known, self.id_offsets(inputs["item"]), 0.0)
        return vectors

    def bias(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-item popularity bias [...]: zero without id parts and for items never trained."""
        if not self.spec.id_items:
            return torch.zeros(inputs["item"].shape)
        return torch.where(inputs["item_known"], self.id_biases(inputs["item"]).squeeze(-1), 0.0)


class Recommender(nn.Module):
    """User embeddings + item tower. On a device ``num_users`` is 1 (its own user)."""

    def __init__(self, spec: ModelSpec, num_users: int = 1) -> None:
        super().__init__()
        self.item_tower = ItemTower(spec)
        self.users = nn.Embedding(num_users, spec.dim)
        nn.init.normal_(self.users.weight, std=0.1)

    def forward(self, user: torch.Tensor, items: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scores [B, K] for users [B] against gathered item inputs [B, K, ...]."""
        item_vectors = self.item_tower(items)
        user_vectors = self.users(user)
        return (item_vectors * user_vectors.unsqueeze(1)).sum(-1) + self.item_tower.bias(items)

    @torch.no_grad()
    def score_all(self, user: int, catalog: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scores [N] of one user against the whole catalog (inputs [N, ...])."""
        item_vectors = self.item_tower(catalog)
        return item_vectors @ self.users.weight[user] + self.item_tower.bias(catalog)


def catalog_tensors(features: ItemFeatures, unknown_items: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """The catalog's features as tensors (shared memory with the numpy arrays).

    ``item`` is each row's catalog index (for the id parts) and ``item_known`` says whether the
    model may use an item's id parts: false for ``unknown_items``, which stand for items that did
    not exist while the model was trained (the cold-start protocol's held-out items).
    """
    known = torch.ones(len(features.text), dtype=torch.bool)
    if unknown_items is not None and len(unknown_items):
        known[torch.as_tensor(np.asarray(unknown_items, dtype=np.int64))] = False
    return {
        "text": torch.from_numpy(np.ascontiguousarray(features.text)),
        "text_mask": torch.from_numpy(np.ascontiguousarray(features.text_mask)),
        "image": torch.from_numpy(np.ascontiguousarray(features.image)),
        "image_mask": torch.from_numpy(np.ascontiguousarray(features.image_mask)),
        "item": torch.arange(len(features.text)),
        "item_known": known,
    }


def item_inputs(catalog: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gather the item inputs for an index tensor of any shape."""
    return {key: value[index] for key, value in catalog.items()}


def item_tower_state(model: Recommender) -> dict[str, torch.Tensor]:
    """The parameters that travel to the server: the item tower only, never user embeddings."""
    return {k: v.detach().clone() for k, v in model.item_tower.state_dict().items()}


def model_spec(config: Mapping[str, Any], num_items: int = 0) -> ModelSpec:
    """The architecture the config asks for; ``num_items`` (the catalog size) sizes the id parts."""
    if config["fusion"] not in FUSION_HEADS:
        raise ValueError(f"fusion {config['fusion']!r}: choose one of {', '.join(FUSION_HEADS)}")
    modalities = parse_modalities(config["modalities"])
    id_items = int(num_items) if config.get("item-ids") else 0
    if config.get("item-ids") and id_items <= 0:
        raise ValueError("item-ids: the model needs the catalog size (num_items) to size its id parts")
    return ModelSpec(
        modalities=modalities, dim=int(config["dim"]), hidden=int(config["hidden"]), fusion=config["fusion"], id_items=id_items
    )
