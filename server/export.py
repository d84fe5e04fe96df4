"""``fedmmrec export RUN_DIR --out DIR``: what a device needs to rank items, and explain them,
without the training stack, from the run directory alone.

An item-tower run (``privacy = local``, ``central``, ``both``, ``none``):

- ``item_tower.pt``: the trained item tower as TorchScript (encoders + fusion), taking the
  four feature tensors (text, text mask, image, image mask) and returning item embeddings from
  content alone, so a device can embed a new item from its backbone features (cold start);
- ``item_embeddings.npy`` [N, dim] float32, ``item_biases.npy`` [N] float32: the catalog
  precomputed, id parts included (biases are zero for a content-only model); a user's score is
  ``embedding @ user + bias``;
- ``item_base.npy`` [N, dim], ``item_parts.npy`` [N, players, dim]: the embeddings' exact
  Shapley split over the players (modalities, and ids) for ``recommend --explain``
  (:mod:`shared.explain`).

A ``privacy = user`` run: ``model.npz`` (the released model as the run saved it) and
``content.npy`` (the public catalog's content matrix).

Both: ``item_ids.json``, ``item_titles.json`` (for readable explanations) and ``manifest.json`` (kind, run id, SHA-256 of each file, the verified
ledger head and the privacy summary of the run the model came from).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from server.mechanisms import mechanism_of_ledger
from server.resume import current_data_dir
from shared.checksums import file_sha256
from shared.config import parse_modalities
from shared.models.recommender import model_spec
from shared.item_content import content_matrix
from shared.data import load_catalog
from shared.explain import tower_shapley
from shared.features import load_or_compute_features
from shared.models.recommender import ItemTower, catalog_tensors
from shared.export_signature import signed_manifest
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


EXPORT_KEY = "export-key.pem"  # a run's own export-signing key, when no deployment key is given
EXPORT_PUBLIC_KEY = "export-key.pub"  # its public half, for the devices to trust


def export_run(run_dir: str | Path, out: str | Path, signing_key: str | Path | None = None) -> Path:
    """Write what a device needs to rank (and explain) with numpy alone, and a manifest with
    every file's SHA-256, the verified ledger head and the privacy summary, signed
    (:mod:`shared.export_signature`) with ``signing_key`` (the deployment's ``export.key``) or
    else the run's own ``export-key.pem``, whose public half is written beside it
    (``export-key.pub``) for the devices to trust."""
    run_dir, out = Path(run_dir), Path(out)
    try:
        run = RunDirectory.open(run_dir)
        config = run.read_config()
    except FileNotFoundError as exc:
        raise ValueError(f"{exc}: {run_dir} is not a run directory") from exc
    summary = run.read_summary() if run.has_summary() else {}
    head = verified_ledger_head(run)
    if summary.get("ledger-head") not in (None, head):
        raise ValueError(
            f"{run.summary_path}: ledger-head {summary['ledger-head'][:16]}... is not the ledger's verified head "
            f"{head[:16]}...: the ledger or the summary was changed; run fedmmrec audit {run_dir}"
        )
    # Only the public catalog (a deployed server has no interactions), as the run has it now.
    dataset = load_catalog(current_data_dir(run, config))
    features = load_or_compute_features(dataset, config.get("feature-cache") or None, progress=False)
    out.mkdir(parents=True, exist_ok=True)
    kind = mechanism_of_ledger({"config": config}).export_kind
    if kind == "user-level":
        written, extra = _export_user_level(run, config, features, out), {}
    else:
        written, extra = _export_tower(run, config, dataset, features, out)
    (out / "item_ids.json").write_text(json.dumps(list(dataset.item_ids)), encoding="utf-8")
    titles = dict(zip(dataset.item_ids, dataset.titles))
    (out / "item_titles.json").write_text(json.dumps(titles, ensure_ascii=False), encoding="utf-8")
    manifest = {
        "kind": kind,
        "run-id": run_dir.name,
        "items": len(dataset.item_ids),
        "files": {name: file_sha256(out / name) for name in (*written, "item_ids.json", "item_titles.json")},
        "ledger-head": head,
        "privacy": summary.get("privacy"),
        **extra,
    }
    key_path = Path(signing_key) if signing_key else run.file(EXPORT_KEY)
    if signing_key and not key_path.is_file():
        raise ValueError(f"{key_path}: signing key not found")
    manifest = signed_manifest(json.loads(json.dumps(manifest, default=str), parse_constant=str), key_path)
    if not signing_key:
        run.file(EXPORT_PUBLIC_KEY).write_text(manifest["signer"], encoding="utf-8")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def _export_user_level(run: RunDirectory, config: dict, features, out: Path) -> tuple[str, ...]:
    """``privacy = user``: the released model as the run saved it, and the public catalog's
    content matrix (the device's content similarity and its explanation need it)."""
    model_path = run.file(MODEL_FILE)
    if not model_path.is_file():
        raise ValueError(f"{model_path}: missing: the run did not finish its releases")
    (out / MODEL_FILE).write_bytes(model_path.read_bytes())
    content = content_matrix(
        features.text, features.text_mask, features.image, features.image_mask, parse_modalities(config.get("modalities", "text,image"))
    )
    np.save(out / "content.npy", content.astype(np.float32))
    return (MODEL_FILE, "content.npy")


def _export_tower(run: RunDirectory, config: dict, dataset, features, out: Path) -> tuple[tuple[str, ...], dict]:
    """The item tower as TorchScript (embeds new items from their features), the catalog's
    embeddings and biases, and their exact Shapley split over the players (modalities, ids)."""
    checkpoint = run.final_checkpoint()
    if checkpoint is None:
        raise ValueError(f"{run.checkpoints}: no final.pt or latest.pt to export")
    tower = ItemTower(model_spec(config, dataset.num_items))
    tower.load_state_dict(run.load_checkpoint(checkpoint)["item_tower"])
    tower.eval()
    catalog = catalog_tensors(features)
    inputs = (catalog["text"], catalog["text_mask"], catalog["image"], catalog["image_mask"])
    with torch.no_grad():
        scripted = torch.jit.trace(_TowerOnTensors(tower).eval(), tuple(t[:2] for t in inputs))
        embeddings = tower(catalog).numpy().astype(np.float32)
        biases = tower.bias(catalog).numpy().astype(np.float32)
    base, parts, players = tower_shapley(tower, catalog)
    gap = float(np.abs(base + parts.sum(1) - embeddings).max())
    if gap > 1e-4:  # Shapley efficiency: the parts must add up to the embedding
        raise RuntimeError(f"the Shapley parts miss the embeddings by {gap:.2e}")
    scripted.save(str(out / "item_tower.pt"))
    np.save(out / "item_embeddings.npy", embeddings)
    np.save(out / "item_biases.npy", biases)
    np.save(out / "item_base.npy", base.astype(np.float32))
    np.save(out / "item_parts.npy", parts.astype(np.float32))
    extra = {
        "checkpoint": checkpoint.name,
        "model-spec": {k: config.get(k, False) for k in ("modalities", "dim", "hidden", "fusion", "item-ids")},
        "explanation-players": players,
    }
    return ("item_tower.pt", "item_embeddings.npy", "item_biases.npy", "item_base.npy", "item_parts.npy"), extra
