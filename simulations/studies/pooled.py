"""Pooled, non-private baseline: the same model trained on all users' data in one place.

("Central" in this project means only central DP, noise added by the server; this baseline
has no DP at all. ``train-central`` and ``kind = "central"`` remain as aliases that warn.)

It answers "what does federation plus DP cost?": same split, same item tower, same metrics,
but every user's embedding trained jointly with full-batch access and no noise.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.baselines import evaluate_scorer, most_popular
from shared.config import resolve
from shared.models.recommender import model_spec
from shared.data import load_dataset, split_for
from shared.data.prepare import resolve_data_dir
from shared.features import load_or_compute_features
from shared.models.recommender import Recommender, catalog_tensors
from shared.run_directory import RunDirectory, library_versions
from shared.training import bpr_loss, negative_pool, sample_negatives


def train_pooled(overrides: dict[str, Any] | None = None, epochs: int = 10, lr: float = 0.005, batch_size: int = 128) -> Path:
    """Train centrally (Adam, no DP) and write a run directory with summary.json."""
    started = time.time()
    config = resolve(None, overrides)
    data_dir = resolve_data_dir(config)
    config = config.replace(data_dir=str(data_dir))
    dataset = load_dataset(data_dir)
    split = split_for(dataset, config)
    catalog = catalog_tensors(load_or_compute_features(dataset, config.data.feature_cache or None), split.held_out_items)
    run_dir = RunDirectory(config.run.run_dir, config.run.run_id or time.strftime("pooled-%Y%m%d-%H%M%S"))
    torch.manual_seed(config.run.seed)
    rng = np.random.default_rng(config.run.seed)
    model = Recommender(model_spec(config, dataset.num_items), num_users=len(split.users))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    users = np.concatenate([np.full(len(items), k) for k, items in enumerate(split.train_items)])
    items = np.concatenate(split.train_items)
    pools = [negative_pool(dataset.num_items, train, split.held_out_items) for train in split.train_items]
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(users))
        losses = []
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            negatives = np.stack(
                [sample_negatives(rng, pools[users[j]], (config.training.negatives,)) for j in batch]
            )
            loss = bpr_loss(model, torch.as_tensor(users[batch]), torch.as_tensor(items[batch]), torch.as_tensor(negatives), catalog)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        run_dir.append_metrics({"epoch": epoch, "train-loss": float(np.mean(losses))})
    model.eval()
    final = evaluate_scorer(split, lambda k: model.score_all(k, catalog).numpy())
    run_dir.save_checkpoint("final.pt", model.item_tower.state_dict(), {"config": config.flat(), "pooled": True})
    run_dir.write_summary(
        {
            "run-id": run_dir.run_id,
            "kind": "pooled, not private",
            "final": final,
            "baselines": {"most-popular": most_popular(split)},
            "epochs": epochs,
            "wall-seconds": round(time.time() - started, 1),
            "config": config.flat(),
            "versions": library_versions(),
        },
    )
    print(
        f"fedmmrec: pooled (not private) HR@10 {final['hr@10']:.3f} NDCG@10 {final['ndcg@10']:.3f} "
        f"over {final['users']} users; run directory {run_dir.path}",
        flush=True,
    )
    return run_dir.path
