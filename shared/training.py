"""Training steps shared by the federated client (under DP-SGD) and the central trainer.

Loss: BPR with ``negatives`` items per positive, drawn uniformly from the catalog items the user
has not interacted with (on the device: the catalog is public, the history is not).

DP on the device is example-level: one example is one interaction. DP-SGD uses Poisson
sampling at rate ``1 / ceil(n / batch_size)`` (Opacus' rate), per-example clipping to
``clip_norm`` over *all* trainable parameters (the private user embedding included, so that the
item-side update released to the server stays a DP output), and Gaussian noise of std
``noise_multiplier * clip_norm``. Two engines run the same mechanism: ``fast`` (default,
:mod:`shared.per_example`: per-example norms and clipped sums in closed form, one backward) and
``opacus`` (Opacus' PrivacyEngine, GradSampleModule hooks). The accountant is Opacus' either way.

Clipping is per parameter tensor (Opacus ``per_layer``): the item tower's per-example gradient is
clipped to ``item_clip_fraction * clip_norm`` (split evenly over its tensors) and the user
embedding's to the rest, so the total L2 sensitivity is still ``clip_norm`` and the accounting
is unchanged. Why: the item tower's raw per-example gradients are ~4x the user embedding's, so a
single flat clip would leave the user embedding (the part that personalises) almost no signal
under the noise.
"""


from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from shared.config import DEFAULTS
from shared.models.recommender import Recommender, item_inputs
from shared.per_example import PerExampleClipping
from shared.privacy.accounting import (
    History,
    epsilon_of,
    make_accountant,
    merged,
    total_steps,
)


@dataclass(frozen=True)
class TrainConfig:
    """Local training settings: the run-config keys of the same names, with the run config's
    defaults (:data:`shared.config.RUN_CONFIG` is their one home)."""

    local_epochs: int = DEFAULTS["local-epochs"]
    batch_size: int = DEFAULTS["batch-size"]
    lr: float = DEFAULTS["lr"]
    item_lr: float = DEFAULTS["item-lr"]
    negatives: int = DEFAULTS["negatives"]
    dp: bool = True
    noise_multiplier: float = DEFAULTS["noise-multiplier"]
    clip_norm: float = DEFAULTS["clip-norm"]
    item_clip_fraction: float = DEFAULTS["item-clip-fraction"]
    delta: float = DEFAULTS["delta"]
    accountant: str = DEFAULTS["accountant"]
    dp_engine: str = DEFAULTS["dp-engine"]


@dataclass(frozen=True)
class LocalResult:
    """What one client's local training produced (units: epsilon at ``delta``, steps of SGD)."""

    loss: float
    num_examples: int
    steps: int
    sample_rate: float
    epsilon: float
    history: History


def parameter_groups(model: Recommender, config: TrainConfig) -> tuple[list[dict], list[float]]:
    """SGD groups (user embedding, item tower) and the matching per-tensor clip norms.

    The norms follow the optimizer's parameter order (Opacus pairs them by position); their L2
    is ``clip_norm``.
    """
    users = [p for p in model.users.parameters() if p.requires_grad]
    items = [p for p in model.item_tower.parameters() if p.requires_grad]
    item_total = config.clip_norm * config.item_clip_fraction
    user_total = config.clip_norm * (1.0 - config.item_clip_fraction**2) ** 0.5
    norms = [user_total / len(users) ** 0.5] * len(users) + [item_total / len(items) ** 0.5] * len(items)
    groups = [{"params": users, "lr": config.lr}, {"params": items, "lr": config.item_lr}]
    return groups, norms


def negative_pool(num_items: int, positives: np.ndarray, unavailable: np.ndarray | None = None) -> np.ndarray:
    """Catalog items the user has not interacted with: where BPR negatives are drawn from.

    ``unavailable`` items (the cold-start protocol's held-out items) are not in the training
    catalog at all: they stand for items that do not exist yet, so they are never negatives
    either. Drawing them as negatives would teach the model that they are bad.
    Built once per user (per round on a device), not once per batch.
    """
    blocked = np.zeros(num_items, dtype=bool)
    blocked[positives] = True
    if unavailable is not None:
        blocked[unavailable] = True
    pool = np.flatnonzero(~blocked)
    if len(pool) == 0:
        raise ValueError("cannot draw negatives: the user has interacted with every item")
    return pool


def sample_negatives(rng: np.random.Generator, pool: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform negatives from a :func:`negative_pool`."""
    return pool[rng.integers(len(pool), size=shape)]


def bpr_losses(
    model: nn.Module,
    users: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    catalog: dict[str, torch.Tensor],
) -> torch.Tensor:
    """Per example [B]: the mean over its negatives of -log sigmoid(s_pos - s_neg)."""
    index = torch.cat([positives.unsqueeze(1), negatives], dim=1)
    scores = model(users, item_inputs(catalog, index))
    return -torch.nn.functional.logsigmoid(scores[:, :1] - scores[:, 1:]).mean(dim=1)


def bpr_loss(
    model: nn.Module,
    users: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    catalog: dict[str, torch.Tensor],
) -> torch.Tensor:
    """Mean over the batch of :func:`bpr_losses`."""
    return bpr_losses(model, users, positives, negatives, catalog).mean()


def planned_round(n: int, config: TrainConfig) -> tuple[float, int]:
    """(sample rate, steps) one local round will use: Opacus' rate 1/ceil(n / batch)."""
    batches = math.ceil(n / min(config.batch_size, n))
    return 1.0 / batches, config.local_epochs * batches


def projected_epsilon(history: History, n: int, config: TrainConfig) -> float:
    """Epsilon the client would have after one more local round (to enforce a budget cap)."""
    rate, steps = planned_round(n, config)
    return epsilon_of(list(history) + [(config.noise_multiplier, rate, steps)], config.delta, config.accountant)


def noise_generator(seed: int | None) -> torch.Generator:
    """The generator of a device's DP noise and Poisson sampling.

    ``seed`` makes a simulation repeat. A real device passes None: its noise is then seeded
    from the operating system's entropy, because every other seed here (run seed, round, node
    id) is known to the server, which could regenerate the noise and subtract it.
    """
    generator = torch.Generator()
    generator.manual_seed(int.from_bytes(os.urandom(8), "little") if seed is None else int(seed))
    return generator


def train_local(
    model: Recommender,
    catalog: dict[str, torch.Tensor],
    train_items: np.ndarray,
    config: TrainConfig,
    history: History,
    seed: int,
    unavailable: np.ndarray | None = None,
    noise_seed: int | None = None,
    grad_sample_mode: str = "hooks",
) -> LocalResult:
    """Train one device's model on its own interactions; extend the privacy ``history``.

    ``model.users`` has one row (this user). Returns the cumulative spend: epsilon is
    computed from the restored history plus this round's steps, never from this round alone.
    ``seed`` drives negatives and (without DP) batch order; ``noise_seed`` the DP noise and
    Poisson sampling (None: OS entropy, see :func:`noise_generator`). ``grad_sample_mode`` is
    Opacus' (``dp-engine = "opacus"`` only).
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    pool = negative_pool(int(catalog["text"].shape[0]), train_items, unavailable)
    n = int(len(train_items))
    positives = torch.as_tensor(train_items, dtype=torch.long)
    # Separate step sizes: DP noise on the ~50k item-tower parameters is scaled by ``item_lr``,
    # while the 32-d private user embedding can take large steps.
    groups, clip_norms = parameter_groups(model, config)
    optimizer = torch.optim.SGD(groups)

    def loss_of(net: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        b = int(batch.shape[0])
        negatives = torch.as_tensor(sample_negatives(rng, pool, (b, config.negatives)), dtype=torch.long)
        return bpr_losses(net, torch.zeros(b, dtype=torch.long), batch, negatives, catalog)

    model.train()
    if not config.dp:
        losses, new_history = _train_without_dp(model, optimizer, positives, loss_of, config, rng), list(history)
        steps, sample_rate = len(losses), min(1.0, config.batch_size / n)
    else:
        generator = noise_generator(noise_seed)
        train = _train_opacus if config.dp_engine == "opacus" else _train_fast
        losses, new_history = train(model, optimizer, positives, loss_of, config, clip_norms, history, generator, grad_sample_mode)
        steps = total_steps(new_history) - total_steps(history)
        sample_rate = planned_round(n, config)[0]
        if steps != planned_round(n, config)[1]:
            raise RuntimeError("accountant history does not account for every local step")
    epsilon = epsilon_of(new_history, config.delta, config.accountant) if config.dp else float("inf")
    return LocalResult(
        loss=float(np.mean(losses)) if losses else float("nan"),
        num_examples=n,
        steps=steps,
        sample_rate=float(sample_rate),
        epsilon=epsilon,
        history=new_history,
    )


def _train_without_dp(model, optimizer, positives, loss_of, config: TrainConfig, rng) -> list[float]:
    """Shuffled mini-batches; the batch gradient is clipped to ``clip_norm`` for a fair baseline."""
    n = len(positives)
    size = min(config.batch_size, n)
    losses = []
    for _ in range(config.local_epochs):
        order = torch.as_tensor(rng.permutation(n))
        for start in range(0, n, size):
            loss = loss_of(model, positives[order[start : start + size]]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            optimizer.step()
            losses.append(float(loss.detach()))
    return losses


def _train_fast(model, optimizer, positives, loss_of, config: TrainConfig, clip_norms, history, generator, _mode):
    """DP-SGD with closed-form per-example clipping (:mod:`shared.per_example`).

    The same mechanism as Opacus' per_layer DP-SGD: Poisson sampling at rate q = 1/steps per
    epoch (an empty batch still takes a noise-only step), each tensor's per-example gradient
    clipped to its norm, Gaussian noise of std ``noise_multiplier * ||clip norms||`` on every
    coordinate, the sum divided by the expected batch size ``int(n q)``.
    """
    n = len(positives)
    rate, steps = planned_round(n, config)
    expected_batch = int(n * rate)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    std = config.noise_multiplier * float(torch.tensor(clip_norms).norm())
    sizes = [p.numel() for p in params]
    clipping = PerExampleClipping(model, params, clip_norms)
    losses = []
    try:
        for _ in range(steps):
            batch = positives[torch.rand(n, generator=generator) < rate]
            b = int(batch.shape[0])
            if b:
                per_example = loss_of(model, batch)
                sums = clipping.clipped_sums(per_example.sum(), b)
                losses.append(float(per_example.detach().mean()))
            else:
                sums = [torch.zeros_like(p) for p in params]
            # One draw for every coordinate; the parameters' gradients are views of it.
            flat = torch.randn(sum(sizes), generator=generator).mul_(std)
            grads = [z.view_as(p) for z, p in zip(flat.split(sizes), params)]
            torch._foreach_add_(grads, sums)
            flat.div_(expected_batch)
            for p, grad in zip(params, grads):
                p.grad = grad
            optimizer.step()
    finally:
        clipping.close()
    return losses, merged(list(history) + [(config.noise_multiplier, rate, steps)])


def _train_opacus(model, optimizer, positives, loss_of, config: TrainConfig, clip_norms, history, generator, mode):
    """DP-SGD with Opacus' PrivacyEngine (per_layer clipping, Poisson sampling)."""
    from opacus import PrivacyEngine

    n = len(positives)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(positives), batch_size=min(config.batch_size, n), shuffle=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus' secure-RNG notice
        engine = PrivacyEngine(accountant=config.accountant)
        engine.accountant = make_accountant(config.accountant, history)
        train_model, optimizer, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=config.noise_multiplier,
            max_grad_norm=clip_norms,
            clipping="per_layer",
            poisson_sampling=True,
            grad_sample_mode=mode,
            noise_generator=generator,
        )
    losses = []
    try:
        for _ in range(config.local_epochs):
            for (batch,) in loader:
                optimizer.zero_grad(set_to_none=True)
                per_example = loss_of(train_model, batch)
                loss = per_example.mean()
                with warnings.catch_warnings():
                    # Opacus' hooks see no input requiring grad (our inputs are features): expected.
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    loss.backward()  # an empty Poisson batch still takes a (noise-only) step
                optimizer.step()
                if len(batch):
                    losses.append(float(loss.detach()))
    finally:
        if hasattr(train_model, "remove_hooks"):
            train_model.remove_hooks()
    return losses, list(engine.accountant.history)


@torch.no_grad()
def _catalog_vectors(model: Recommender, catalog: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return model.item_tower(catalog), model.item_tower.bias(catalog)


def refit_user(
    model: Recommender,
    catalog: dict[str, torch.Tensor],
    train_items: np.ndarray,
    steps: int,
    seed: int,
    negatives: int = 8,
    unavailable: np.ndarray | None = None,
    lr: float = 0.05,
) -> torch.Tensor:
    """Scores [N] after fitting this device's user vector to the *current* item tower.

    Why: a user is sampled to train in only a few rounds, and the global item tower moves in
    every round, so the DP-trained embedding in the node state was fitted to an older tower.
    Before ranking, the device adapts its vector (tower frozen; full-batch BPR with Adam, from
    the stored vector) on its own interactions. The refitted vector serves this ranking only:
    it is not stored, never trained on and never leaves the device, so the DP guarantee of the
    released tower updates is untouched. (Like every evaluation metric, the rank this reports
    to the server is outside the DP accounting.)
    """
    vectors, biases = _catalog_vectors(model, catalog)
    user = model.users.weight[0].detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([user], lr=lr)
    rng = np.random.default_rng(seed)
    pool = negative_pool(len(vectors), train_items, unavailable)
    positives = torch.as_tensor(train_items, dtype=torch.long)
    for _ in range(steps):
        sampled = torch.as_tensor(sample_negatives(rng, pool, (len(positives), negatives)), dtype=torch.long)
        pos = vectors[positives] @ user + biases[positives]
        neg = vectors[sampled] @ user + biases[sampled]
        loss = -torch.nn.functional.logsigmoid(pos.unsqueeze(1) - neg).mean() + 1e-3 * user.square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (vectors @ user.detach() + biases).detach()


def train_config(config: Mapping[str, Any]) -> TrainConfig:
    """A device's local training settings from the settings its message carries."""
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"dp"}
    from server.mechanisms import mechanism_class  # the registry says whether the mode trains under DP-SGD

    return TrainConfig(dp=mechanism_class(config).local_dp, **{name: config[name.replace("_", "-")] for name in names})
