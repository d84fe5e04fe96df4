"""Per-modality encoder: projection and residual adapter over a frozen backbone feature.

A missing modality (no description, no image) is replaced by a learned placeholder vector, not
by encoding a zero feature: zeros would look like data and the adapter would learn to read them.
All layers are ones Opacus computes per-example gradients for (Linear, LayerNorm, Embedding),
and there is no BatchNorm (its running statistics would leak private data).
"""

from __future__ import annotations

import torch
from torch import nn


class ModalityEncoder(nn.Module):
    """Map a backbone feature [..., in_dim] to a modality token [..., dim]."""

    def __init__(self, in_dim: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.project = nn.Linear(in_dim, dim)
        self.adapter_norm = nn.LayerNorm(dim)
        self.adapter_up = nn.Linear(dim, hidden)
        self.adapter_down = nn.Linear(hidden, dim)
        self.missing = nn.Embedding(1, dim)  # learned placeholder for a missing modality
        nn.init.normal_(self.missing.weight, std=0.02)

    def forward(self, features: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        # Parameter-free standardisation of each backbone vector: MobileNet features have norms
        # in the tens, MiniLM's are unit-norm; unscaled, SGD on the projection diverges.
        hidden = self.project(torch.nn.functional.layer_norm(features, features.shape[-1:]))
        hidden = hidden + self.adapter_down(torch.nn.functional.gelu(self.adapter_up(self.adapter_norm(hidden))))
        placeholder = self.missing(torch.zeros_like(present, dtype=torch.long))
        return torch.where(present.unsqueeze(-1), hidden, placeholder)
