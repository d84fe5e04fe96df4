"""Fusion heads: turn an item's modality tokens [..., M, dim] into one embedding [..., dim].

Interchangeable behind one interface (as Cornac's recommenders and MMRec's models are), chosen
by the run config key ``fusion``: ``concat`` (concatenation + MLP), ``gated`` (a learned
per-dimension gate between modalities) or ``attention`` (a learned query attending over the
modality tokens). Each uses only Opacus-supported layers.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class FusionHead(nn.Module):
    """Base class: ``forward(tokens[..., M, dim]) -> [..., dim]``."""

    def __init__(self, num_modalities: int, dim: int) -> None:
        super().__init__()
        self.num_modalities = num_modalities
        self.dim = dim


class ConcatFusion(FusionHead):
    """Concatenate the modality tokens and mix them with a two-layer MLP."""

    def __init__(self, num_modalities: int, dim: int) -> None:
        super().__init__(num_modalities, dim)
        self.hidden = nn.Linear(num_modalities * dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        flat = tokens.flatten(-2)
        return self.out(torch.nn.functional.gelu(self.hidden(flat)))


class GatedFusion(FusionHead):
    """Softmax gate per dimension over modalities, computed from all tokens, then a projection."""

    def __init__(self, num_modalities: int, dim: int) -> None:
        super().__init__(num_modalities, dim)
        self.gate = nn.Linear(num_modalities * dim, num_modalities * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = self.gate(tokens.flatten(-2)).unflatten(-1, (self.num_modalities, self.dim))
        weights = torch.softmax(logits, dim=-2)
        return self.out((weights * tokens).sum(dim=-2))


class AttentionFusion(FusionHead):
    """A learned query attends over the modality tokens (plus modality-type embeddings)."""

    def __init__(self, num_modalities: int, dim: int) -> None:
        super().__init__(num_modalities, dim)
        self.modality_type = nn.Embedding(num_modalities, dim)
        self.query = nn.Embedding(1, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        nn.init.normal_(self.modality_type.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(self.num_modalities, device=tokens.device)
        positions = positions.expand(tokens.shape[:-1])
        tokens = tokens + self.modality_type(positions)
        query = self.query(torch.zeros(tokens.shape[:-2], dtype=torch.long, device=tokens.device))
        scores = (self.key(tokens) * query.unsqueeze(-2)).sum(-1) / math.sqrt(self.dim)
        attention = torch.softmax(scores, dim=-1).unsqueeze(-1)
        return self.out((attention * self.value(tokens)).sum(dim=-2))


FUSION_HEADS: dict[str, type[FusionHead]] = {
    "concat": ConcatFusion,
    "gated": GatedFusion,
    "attention": AttentionFusion,
}


def make_fusion(name: str, num_modalities: int, dim: int) -> FusionHead:
    """Build a fusion head by name; an unknown name lists the valid ones."""
    try:
        cls = FUSION_HEADS[name]
    except KeyError:
        raise ValueError(f"unknown fusion {name!r}; choose one of {', '.join(FUSION_HEADS)}") from None
    return cls(num_modalities, dim)
