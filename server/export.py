"""``fedmmrec export RUN_DIR --out DIR``: what a device needs to rank items without the training
stack, from the run directory alone.

- ``item_tower.pt``: the trained item tower as TorchScript (encoders + fusion), taking the
  four feature tensors (text, text mask, image, image mask) and returning item embeddings from
  content alone, so a device can embed a new item from its backbone features (cold start);
- ``item_embeddings.npy`` [N, dim] float32, ``item_biases.npy`` [N] float32 and
  ``item_ids.json``: the catalog precomputed, id parts included (biases are zero for a
  content-only model); a user's score is ``embedding @ user + bias``;
- ``manifest.json``: run id, model spec, SHA-256 of each file, the ledger head and the privacy
  summary of the run the model came from.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shared.checksums import file_sha256
from shared.config import model_spec
from shared.data import load_catalog
from shared.features import load_or_compute_features
from shared.models.recommender import ItemTower, catalog_tensors
from shared.privacy.ledger import verify_chain
from shared.run_directory import MODEL_FILE, RunDirectory


def verified_ledger_head(run: RunDirectory) -> str:
    """The hash of the ledger's last entry, after its chain verifies (never a copy of it)."""
    entries = run.read_ledger()
    problems = verify_chain(entries)
    if problems or not entries:
        raise ValueError(f"{run.ledger_path}: the ledger does not verify: {problems[0] if problems else 'empty'}")
    return entries[-1].hash


class _TowerOnTensors(nn.Module):
    """The item tower with positional tensor inputs (TorchScript-friendly)."""

    def __init__(self, tower: ItemTower) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
        # A new item has no id parts: index 0 with item_known false selects the content path.
        unknown = torch.zeros(text.shape[:-1], dtype=torch.bool)
        inputs = {"text": text, "text_mask": text_mask, "image": image, "image_mask": image_mask}
        return self.tower({**inputs, "item": unknown.long(), "item_known": unknown})


def export_run(run_dir: str | Path, out: str | Path) -> Path:
    run_dir, out = Path(run_dir), Path(out)
    try:
        run = RunDirectory.open(run_dir)
        config = run.read_config()
    except FileNotFoundError as exc:
        raise ValueError(f"{exc}: {run_dir} is not a run directory") from exc
    if config.get("privacy") == "user":
        raise ValueError(
            f"{run_dir}: a privacy = user run trains no item tower; its served model is {run.file(MODEL_FILE)} "
            "(numpy: top-items, factors, popularity), which a device loads as it is"
        )
    checkpoint = run.final_checkpoint()
    if checkpoint is None:
        raise ValueError(f"{run.checkpoints}: no final.pt or latest.pt to export")
    dataset = load_catalog(config["data-dir"])  # only the public catalog: a deployed server has no interactions
    tower = ItemTower(model_spec(config, dataset.num_items))
    tower.load_state_dict(run.load_checkpoint(checkpoint)["item_tower"])
    tower.eval()
    catalog = catalog_tensors(load_or_compute_features(dataset, config.get("feature-cache") or None, progress=False))
    inputs = (catalog["text"], catalog["text_mask"], catalog["image"], catalog["image_mask"])

    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        scripted = torch.jit.trace(_TowerOnTensors(tower).eval(), tuple(t[:2] for t in inputs))
        embeddings = tower(catalog).numpy().astype(np.float32)
        biases = tower.bias(catalog).numpy().astype(np.float32)
    scripted.save(str(out / "item_tower.pt"))
    np.save(out / "item_embeddings.npy", embeddings)
    np.save(out / "item_biases.npy", biases)
    (out / "item_ids.json").write_text(json.dumps(list(dataset.item_ids)), encoding="utf-8")
    summary_path = run.summary_path
    summary = run.read_summary() if run.has_summary() else {}
    head = verified_ledger_head(run)
    if summary.get("ledger-head") not in (None, head):
        raise ValueError(
            f"{summary_path}: ledger-head {summary['ledger-head'][:16]}... is not the ledger's verified head "
            f"{head[:16]}...: the ledger or the summary was changed; run fedmmrec audit {run_dir}"
        )
    manifest = {
        "run-id": run_dir.name,
        "checkpoint": checkpoint.name,
        "model-spec": {k: config.get(k, False) for k in ("modalities", "dim", "hidden", "fusion", "item-ids")},
        "items": len(dataset.item_ids),
        "files": {name: file_sha256(out / name) for name in ("item_tower.pt", "item_embeddings.npy", "item_biases.npy", "item_ids.json")},
        "ledger-head": head,
        "privacy": summary.get("privacy"),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out
