"""Per-example gradient clipping in closed form: the DP-SGD step of ``dp-engine = "fast"``.

Why: Opacus' hooks mode materialises every tensor's per-example gradient, then clips, sums and
noises them one tensor at a time through Python hooks; on a device's small batches (8 examples)
that bookkeeping, not arithmetic, took 2-4x the time of the step without DP. For the layers our
towers are built from (Linear, LayerNorm, Embedding), a per-example gradient's norm and the
clipped sum over the batch follow directly from each layer's input and the gradient at its
output, so one forward and one backward (to the layer outputs only) give everything:

- Linear, per example b with rows t (the items an example scores): the weight's gradient is
  ``G_b^T A_b``, whose squared norm is ``<G_b G_b^T, A_b A_b^T>`` (the "ghost norm": Goodfellow
  2015, Li et al. 2022), a T x T product instead of an out x in one; the bias's is ``sum_t G_bt``.
- LayerNorm: ``sum_t G_bt * xhat_bt`` (weight) and ``sum_t G_bt`` (bias).
- Embedding: row ``i`` of example b's gradient is ``sum_{t: idx_bt = i} G_bt``, so its squared
  norm is ``sum_{t,t'} [idx_bt = idx_bt'] <G_bt, G_bt'>``.

The clipped sum of a tensor is then one weighted product (``(f * G)^T A``, an ``index_add``).
Clipping is per tensor with Opacus' own factor, ``min(1, C_p / (norm + 1e-6))``, so a step is
Opacus' ``clipping="per_layer"`` step; ``tests/test_per_example_clipping.py`` checks the norms
and the clipped sums against Opacus' per-example gradients on every fusion head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

SUPPORTED = (nn.Linear, nn.LayerNorm, nn.Embedding)
SMALL_WEIGHT = 16_384  # out x in up to which per-example weight gradients are cheaper formed than ghosted


class PerExampleClipping:
    """Clipped per-example gradient sums of ``params`` (each to its own ``max_norms`` entry).

    Records every call of the layers that own ``params`` (forward hooks), so build it once per
    model and use it for a round's steps; ``close()`` removes the hooks.
    """

    def __init__(self, model: nn.Module, params: Sequence[nn.Parameter], max_norms: Sequence[float]) -> None:
        if len(params) != len(max_norms):
            raise ValueError(f"{len(params)} parameters but {len(max_norms)} clip norms")
        owners: dict[int, tuple[nn.Module, str]] = {}
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                owners[id(param)] = (module, name)
        self.params = list(params)
        self.owners = []
        for param in self.params:
            if id(param) not in owners:
                raise ValueError("a parameter to clip is not part of the model")
            module, name = owners[id(param)]
            if not isinstance(module, SUPPORTED):
                raise TypeError(
                    f"{type(module).__name__}.{name}: closed-form clipping supports "
                    f"{', '.join(t.__name__ for t in SUPPORTED)}; use dp-engine = \"opacus\""
                )
            if isinstance(module, nn.Embedding) and (
                module.padding_idx is not None or module.max_norm is not None or module.scale_grad_by_freq or module.sparse
            ):
                raise TypeError("Embedding with padding_idx, max_norm, scale_grad_by_freq or sparse is not supported")
            self.owners.append((module, name))
        self.max_norms = torch.tensor([float(c) for c in max_norms])
        self._calls: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._hooks = [m.register_forward_hook(self._record) for m in dict.fromkeys(m for m, _ in self.owners)]

    def _record(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if torch.is_grad_enabled():
            self._calls.setdefault(module, []).append((args[0], output))

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._calls = {}

    def clipped_sums(self, loss_sum: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
        """Per tensor, the sum over the batch of the clipped per-example gradients.

        ``loss_sum`` is the *sum* of the ``batch_size`` per-example losses of the forward pass(es)
        recorded since the last call; every recorded tensor's first dimension is the example.
        """
        calls, self._calls = self._calls, {}
        modules = list(calls)
        outputs = [out for m in modules for _, out in calls[m]]
        grads = iter(torch.autograd.grad(loss_sum, outputs, allow_unused=True))
        with torch.no_grad():  # the rest is arithmetic on recorded tensors: no graph to build
            return self._clip_and_sum(modules, calls, grads, batch_size)

    def _clip_and_sum(self, modules, calls, grads, batch_size: int) -> list[torch.Tensor]:
        per_module = {}
        for module in modules:
            pairs = [(inp, out, next(grads)) for inp, out in calls[module]]
            per_module[module] = _layer_terms(module, pairs, batch_size)
        norms, summers = [], []
        for module, name in self.owners:
            if module not in per_module:  # the layer was not used: zero gradient
                norms.append(torch.zeros(batch_size))
                summers.append(lambda f, p=getattr(module, name): torch.zeros_like(p))
                continue
            norm, summer = per_module[module][name]
            norms.append(norm)
            summers.append(summer)
        factors = (self.max_norms.unsqueeze(1) / (torch.stack(norms) + 1e-6)).clamp(max=1.0)
        return [summer(f).view_as(p) for summer, f, p in zip(summers, factors, self.params)]


def _batched(t: torch.Tensor, batch_size: int, tail: int) -> torch.Tensor:
    """[B, ..., tail dims] -> [B, T, prod(tail dims)]: every row an example touches, per example."""
    return t.reshape(batch_size, -1, math.prod(t.shape[t.dim() - tail :]))


def _layer_terms(module: nn.Module, pairs, batch_size: int):
    """{parameter name: (per-example norms [B], clipped-sum function of the factors [B])}."""
    zero = [(inp, out, g if g is not None else torch.zeros_like(out)) for inp, out, g in pairs]
    if isinstance(module, nn.Linear):
        a = _joined([_batched(inp, batch_size, 1) for inp, _, _ in zero])
        g = _joined([_batched(gr, batch_size, 1) for _, _, gr in zero])
        terms = {"weight": _outer_terms(g, a)}
        if module.bias is not None:
            gb = g.sum(1)
            terms["bias"] = (gb.norm(dim=1), lambda f: f @ gb)
        return terms
    if isinstance(module, nn.LayerNorm):
        tail = len(module.normalized_shape)
        xhat = [torch.nn.functional.layer_norm(inp, module.normalized_shape, eps=module.eps) for inp, _, _ in zero]
        gw = sum((_batched(gr * x, batch_size, tail).sum(1) for (_, _, gr), x in zip(zero, xhat)))
        gb = sum((_batched(gr, batch_size, tail).sum(1) for _, _, gr in zero))
        terms = {}
        if module.weight is not None:
            terms["weight"] = (gw.norm(dim=1), lambda f: f @ gw)
        if module.bias is not None:
            terms["bias"] = (gb.norm(dim=1), lambda f: f @ gb)
        return terms
    # nn.Embedding
    idx = _joined([inp.reshape(batch_size, -1) for inp, _, _ in zero])
    g = _joined([_batched(gr, batch_size, 1) for _, _, gr in zero])
    if idx.shape[1] == 1:
        norm = g[:, 0].norm(dim=1)
    else:
        same_row = (idx.unsqueeze(2) == idx.unsqueeze(1)).to(g.dtype)
        norm = (torch.bmm(g, g.transpose(1, 2)) * same_row).sum((1, 2)).clamp(min=0).sqrt()
    weight = module.weight

    def summed(f: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(weight).index_add_(0, idx.reshape(-1), _weighted(g, f).flatten(0, 1))

    return {"weight": (norm, summed)}


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    """A layer's calls side by side (rows of the same example): their per-example gradients add."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _weighted(g: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    return g * factors.view(-1, 1, 1)


def _outer_terms(g: torch.Tensor, a: torch.Tensor):
    """(norms, clipped sum) of the per-example weight gradients ``g_b^T a_b`` ([B, T, out], [B, T, in]).

    A small weight's per-example gradients are formed outright (fewer operations: the sum is
    then one matrix-vector product); a large one's norms come from the T x T Gram matrices,
    without forming out x in per example, and its sum from the factor-weighted rows.
    """
    rows, width_out, width_in = g.shape[1], g.shape[2], a.shape[2]
    if width_out * width_in <= SMALL_WEIGHT or rows * (width_out + width_in) >= width_out * width_in:
        per_example = torch.bmm(g.transpose(1, 2), a).flatten(1)
        return per_example.norm(dim=1), lambda f: f @ per_example
    if rows == 1:
        norms = g[:, 0].norm(dim=1) * a[:, 0].norm(dim=1)
    else:
        norms = (torch.bmm(g, g.transpose(1, 2)) * torch.bmm(a, a.transpose(1, 2))).sum((1, 2)).clamp_(min=0).sqrt_()
    return norms, lambda f: _weighted(g, f).flatten(0, 1).T @ a.flatten(0, 1)
