"""Training steps shared by the federated client (under DP-SGD) and the central trainer.

Loss: BPR with ``negatives`` items per positive, drawn uniformly from the catalog items the user
has not interacted with (on the device: the catalog is public, the history is not).

DP on the device is example-level: one example is one interaction. DP-SGD (Opacus) uses
Poisson sampling at rate ``batch_size / n``, per-example clipping to ``clip_norm`` over *all*
trainable parameters (the private user embedding included, so that the item-side update
released to the server stays a DP output), and Gaussian noise of std
``noise_multiplier * clip_norm``.

Clipping is per parameter group (Opacus ``per_layer``): the item tower's per-example gradient is
clipped to ``item_clip_fraction * clip_norm`` (split evenly over its tensors) and the user
embedding's to the rest, so the total L2 sensitivity is still ``clip_norm`` and the accounting
is unchanged. Why: the item tower's raw per-example gradients are ~4x the user embedding's, so a
single flat clip would leave the user embedding (the part that personalises) almost no signal
under the noise.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from shared.models.recommender import Recommender, item_inputs
from shared.privacy import History, epsilon_of, make_accountant, total_steps


@dataclass(frozen=True)
class TrainConfig:
    """Local training settings (the ``[tool.flwr.app.config]`` keys of the same names)."""

    local_epochs: int = 1
    batch_size: int = 8
    lr: float = 0.5
    item_lr: float = 0.05
    negatives: int = 8
    dp: bool = True
    noise_multiplier: float = 0.8
    clip_norm: float = 1.0
    item_clip_fraction: float = 0.3
    delta: float = 1e-5
    accountant: str = "rdp"


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


def bpr_loss(
    model: nn.Module,
    users: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    catalog: dict[str, torch.Tensor],
) -> torch.Tensor:
    """Mean over the batch of the mean over negatives of -log sigmoid(s_pos - s_neg)."""
    index = torch.cat([positives.unsqueeze(1), negatives], dim=1)
    scores = model(users, item_inputs(catalog, index))
    return -torch.nn.functional.logsigmoid(scores[:, :1] - scores[:, 1:]).mean()


def planned_round(n: int, config: TrainConfig) -> tuple[float, int]:
    """(sample rate, steps) one local round will use: Opacus' rate 1/ceil(n / batch)."""
    batches = math.ceil(n / min(config.batch_size, n))
    return 1.0 / batches, config.local_epochs * batches


def projected_epsilon(history: History, n: int, config: TrainConfig) -> float:
    """Epsilon the client would have after one more local round (to enforce a budget cap)."""
    rate, steps = planned_round(n, config)
    return epsilon_of(list(history) + [(config.noise_multiplier, rate, steps)], config.delta, config.accountant)


def train_local(
    model: Recommender,
    catalog: dict[str, torch.Tensor],
    train_items: np.ndarray,
    config: TrainConfig,
    history: History,
    seed: int,
    grad_sample_mode: str = "hooks",
    unavailable: np.ndarray | None = None,
) -> LocalResult:
    """Train one device's model on its own interactions; extend the privacy ``history``.

    ``model.users`` has one row (this user). Returns the cumulative spend: epsilon is
    computed from the restored history plus this round's steps, never from this round alone.
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    pool = negative_pool(int(catalog["text"].shape[0]), train_items, unavailable)
    n = int(len(train_items))
    positives = torch.as_tensor(train_items, dtype=torch.long)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(positives), batch_size=min(config.batch_size, n), shuffle=True
    )
    # Separate step sizes: DP noise on the ~50k item-tower parameters is scaled by ``item_lr``,
    # while the 32-d private user embedding can take large steps.
    groups, clip_norms = parameter_groups(model, config)
    optimizer = torch.optim.SGD(groups)
    train_model: nn.Module = model
    engine = None
    if config.dp:
        from opacus import PrivacyEngine

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
                grad_sample_mode=grad_sample_mode,
            )
    sample_rate = 1.0 / len(loader) if config.dp else min(1.0, config.batch_size / n)
    losses = []
    steps = 0
    train_model.train()
    for _ in range(config.local_epochs):
        for (batch,) in loader:
            b = int(batch.shape[0])
            negatives = torch.as_tensor(sample_negatives(rng, pool, (b, config.negatives)), dtype=torch.long)
            users = torch.zeros(b, dtype=torch.long)
            optimizer.zero_grad(set_to_none=True)
            loss = bpr_loss(train_model, users, batch, negatives, catalog)
            with warnings.catch_warnings():
                # Opacus' hooks see no input requiring grad (our inputs are features): expected.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()  # an empty Poisson batch still takes a (noise-only) step
            if engine is None:  # non-private runs clip the batch gradient, for a fair baseline
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            optimizer.step()
            steps += 1
            if b:
                losses.append(float(loss.detach()))
    if engine is not None:
        new_history = list(engine.accountant.history)
        if hasattr(train_model, "remove_hooks"):
            train_model.remove_hooks()
    else:
        new_history = list(history)
    if engine is not None and total_steps(new_history) != total_steps(history) + steps:
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
