"""``fedmmrec explanations RUN_DIR``: how much each part drives the run's recommendations, and
whether the explanations are faithful.

For every user of the run's split (or the first ``users``), the device-side code ranks the
catalog from the run's export with the user's training history and explains its top 10:

- **contributions**: the mean share of each part (collaborative, popularity, text, image,
  prior, id) in the size of the recommended items' scores (|part| / sum of |parts|), for warm
  items and for cold ones (no training interaction: scored from content alone), and the same
  for every cold item's score whether recommended or not;
- **faithfulness, by deletion**: for each recommended item, the modality the explanation names
  as its largest contributor and the one it names as its smallest are each removed (the
  model's own missing-modality placeholder for the tower; the modality's content columns for
  the user-level model) and the item is scored again. The explanation is faithful for that item
  when removing the largest lowers the score more than removing the smallest. Reported: the
  share of items where it holds.

Writes ``explanations.json`` and ``explanations.md`` into the run directory.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from client.exports import exported_model, load_export
from client.recommend import catalog_parts, rank
from server.export import export_run
from shared.config import from_saved
from shared.data import load_dataset, split_for
from shared.explain import without_modality
from shared.run_directory import RunDirectory

MODALITIES = ("text", "image")


def run_explanations(run_dir: str | Path, users: int = 0, k: int = 10) -> dict[str, Any]:
    run = RunDirectory.open(run_dir)
    saved = run.read_config()
    from server.resume import current_data_dir

    config = from_saved(saved, {"data-dir": current_data_dir(run, saved)})
    dataset = load_dataset(config.data.data_dir)
    split = split_for(dataset, config)
    cold = set(int(i) for i in split.cold_items)  # no training interaction: content alone ranks them
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = export_run(run.path, Path(tmp) / "export")
        export = load_export(export_dir)
        deletion = _deletion(export, run, config, dataset)
        shares: dict[str, dict[str, list[float]]] = {"warm": {}, "cold": {}, "every cold item": {}}
        cold_rows = np.asarray(sorted(cold), dtype=np.int64)
        counts = {group: 0 for group in shares}
        held, total = 0, 0
        chosen = range(min(users, len(split.users)) if users else len(split.users))
        for u in chosen:
            history = [dataset.item_ids[i] for i in split.train_items[u]]
            if len(cold_rows):  # every cold item's score, recommended or not: what content does for them
                parts = catalog_parts(export, [int(i) for i in split.train_items[u]])
                size = sum(np.abs(values[cold_rows]) for values in parts.values()) + 1e-12
                counts["every cold item"] += len(cold_rows)
                for name, values in parts.items():
                    shares["every cold item"].setdefault(name, []).append(float(np.mean(np.abs(values[cold_rows]) / size)))
            for item in rank(export, history, k, explain=True):  # the export verified once, not per user
                index = export.ids.index(item.item)
                group = "cold" if index in cold else "warm"
                counts[group] += 1
                for name, share in item.shares().items():
                    shares[group].setdefault(name, []).append(abs(share))
                named = {m: item.parts[m] for m in MODALITIES if m in item.parts}
                if len(named) == 2 and named["text"] != named["image"]:
                    largest, smallest = max(named, key=named.get), min(named, key=named.get)
                    drop = {m: item.score - deletion(index, split.train_items[u], m) for m in (largest, smallest)}
                    held += int(drop[largest] > drop[smallest])
                    total += 1
    result = {
        "run": str(run.path),
        "kind": export.kind,
        "users": len(chosen),
        "top-k": k,
        # A part an item lacks is a share of 0: divide by every item (every user, for the cold catalog).
        "mean-share": {
            group: {name: float(np.sum(values)) / max(1, len(chosen) if group == "every cold item" else counts[group])
                    for name, values in parts.items()}
            for group, parts in shares.items()
        },
        "items": counts,
        "faithful-share": held / total if total else None,
        "faithfulness-cases": total,
    }
    run.write_json("explanations.json", result)
    (run.path / "explanations.md").write_text(to_markdown(result), encoding="utf-8")
    return result


def _deletion(export, run: RunDirectory, config, dataset):
    """``score(item index, user's training items, modality removed)`` under the exported model."""
    if export.kind == "user-level":
        model, content = exported_model(export), export.arrays["content.npy"].astype(np.float64)

        def user_level(index: int, history, modality: str) -> float:
            stripped = without_modality(content, modality, rows=[index])  # this item only, as if it never had it
            terms = model.score_terms(np.asarray(history), stripped)
            return float(sum(values[index] for values in terms.values()))

        return user_level
    import torch

    from shared.models.recommender import model_spec
    from shared.features import load_or_compute_features
    from shared.models.recommender import ItemTower, catalog_tensors

    tower = ItemTower(model_spec(config, dataset.num_items))
    tower.load_state_dict(run.load_checkpoint(run.final_checkpoint())["item_tower"])
    tower.eval()
    catalog = catalog_tensors(load_or_compute_features(dataset, config.data.feature_cache or None, progress=False))
    embeddings = export.arrays["item_embeddings.npy"]
    masked = {}
    with torch.no_grad():
        for m in MODALITIES:
            inputs = dict(catalog)
            inputs[f"{m}_mask"] = torch.zeros_like(catalog[f"{m}_mask"])
            masked[m] = tower(inputs).numpy()
    biases = export.arrays["item_biases.npy"]

    def tower_score(index: int, history, modality: str) -> float:
        user = embeddings[np.asarray(history)].mean(0)  # the profile rank() uses without a device state
        return float(masked[modality][index] @ user + biases[index])

    return tower_score


def to_markdown(result: dict[str, Any]) -> str:
    names = sorted({name for parts in result["mean-share"].values() for name in parts})
    lines = [
        f"# Explanations of `{result['run']}` ({result['kind']} model)",
        "",
        f"Top {result['top-k']} of {result['users']} users (and every cold item's score for each of them): mean share of "
        "each part in the size of the score's parts (|part| / sum of |parts|).",
        "",
        "| items | count | " + " | ".join(names) + " |",
        "| --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for group, parts in result["mean-share"].items():
        lines.append(f"| {group} | {result['items'][group]} | " + " | ".join(f"{parts.get(n, 0.0):.2f}" for n in names) + " |")
    faithful = result["faithful-share"]
    lines += [
        "",
        "Deletion check: removing the modality named as the largest contributor lowers the score more than removing "
        f"the smallest in {faithful:.1%} of {result['faithfulness-cases']} cases."
        if faithful is not None
        else "Deletion check: no item had two modality parts (a model without content).",
    ]
    return "\n".join(lines) + "\n"


