"""Standard recommenders from a well-kept library (Cornac) on exactly our split, scored by our
metrics code: the peers every results table should show.

Each model is fitted on the training interactions of the run's split (the same users, the same
held-out last items, the same cold-start hold-out) and scored for every partition through
:func:`shared.baselines.evaluate_scorer`, so the sampled protocol meets the same 99 negatives as
every other row. Items a model never saw in training (the cold-start hold-out) get the lowest
score, as most-popular gives them. ``content-knn`` is the one model written here: it ranks by
the public content alone (MiniLM text + MobileNetV2 image features), for cold start.

Settings: by default Cornac's published defaults raised to a usual capacity (64 factors);
EASE's lambda 250 and BPR's settings are the issue's reference settings. With ``tune`` the
settings are chosen on validation items instead (:func:`tuned_scorer`): each model is fitted on
the training items without each user's most recent one and scored on that one (NDCG@10 over
the catalog), over a small grid per model, then refitted on all training items with the best.
The test items are never seen while choosing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from shared.data.split import LeaveLastOutSplit

LIBRARY_MODELS = ("bpr", "ease", "vbpr", "content-knn")
# A light grid per model: what a practitioner would try first.
GRIDS: dict[str, list[dict[str, Any]]] = {
    "ease": [{"lamb": lamb} for lamb in (50, 100, 250, 500, 1000)],
    "bpr": [{"learning_rate": lr, "lambda_reg": reg} for lr in (0.005, 0.01, 0.05) for reg in (0.001, 0.01)],
    "vbpr": [{"learning_rate": lr} for lr in (0.001, 0.005, 0.01)],
    "content-knn": [{"neighbours": n} for n in (5, 10, 20, 50)],
}
UNSEEN = -1e9  # the score of an item the model never saw: last, like most-popular's zero count


def _cornac_train_set(split: LeaveLastOutSplit):
    import cornac

    triples = [(str(k), str(int(item)), 1.0) for k, items in enumerate(split.train_items) for item in items]
    return cornac.data.Dataset.build(triples, fmt="UIR", seed=0)


def _cornac_model(name: str, seed: int, features: np.ndarray | None, train_set, settings: dict[str, Any] | None = None):
    import cornac

    settings = settings or {}
    if name == "bpr":
        return cornac.models.BPR(
            k=64, max_iter=200, learning_rate=settings.get("learning_rate", 0.01), lambda_reg=settings.get("lambda_reg", 0.01), seed=seed
        )
    if name == "ease":
        return cornac.models.EASE(lamb=settings.get("lamb", 250), verbose=False, seed=seed)
    if name == "vbpr":
        ids = [str(i) for i in range(len(features))]
        modality = cornac.data.ImageModality(features=features.astype(np.float32), ids=ids, normalized=True)
        train_set.add_modalities(item_image=modality)
        modality.build(id_map=train_set.iid_map)
        return cornac.models.VBPR(
            k=32, k2=32, n_epochs=30, batch_size=256, learning_rate=settings.get("learning_rate", 0.005), verbose=False, seed=seed
        )
    raise ValueError(f"library model {name!r}: choose one of {', '.join(LIBRARY_MODELS)}")


def _unit(rows: np.ndarray) -> np.ndarray:
    """Each modality centred over the catalog (the backbones' common direction says nothing about
    an item) and at unit norm, so text (384-d) and image (1280-d) weigh the same."""
    centred = rows - rows.mean(0)
    return centred / (np.linalg.norm(centred, axis=1, keepdims=True) + 1e-9)


def content_knn_scorer(split: LeaveLastOutSplit, content: np.ndarray, neighbours: int = 20) -> Callable[[int], np.ndarray]:
    """Score of item i: the sum of its cosine similarities to its ``neighbours`` most similar
    items in the user's history (item-based kNN over public content)."""
    vectors = content / (np.linalg.norm(content, axis=1, keepdims=True) + 1e-9)

    def scores(k: int) -> np.ndarray:
        history = vectors[np.asarray(split.train_items[k], dtype=np.int64)]
        similarity = history @ vectors.T  # [history, N]
        top = min(neighbours, len(history))
        return np.sort(similarity, axis=0)[-top:].sum(0)

    return scores


def library_scorer(
    name: str, split: LeaveLastOutSplit, features: Any, seed: int = 0, settings: dict[str, Any] | None = None
) -> Callable[[int], np.ndarray]:
    """Fit ``name`` on the split's training interactions; return partition -> scores [N]."""
    content = np.hstack([_unit(features.text) * features.text_mask[:, None], _unit(features.image) * features.image_mask[:, None]])
    if name == "content-knn":
        return content_knn_scorer(split, content, **(settings or {}))
    train_set = _cornac_train_set(split)
    model = _cornac_model(name, seed, content if name == "vbpr" else None, train_set, settings)
    model.fit(train_set)
    item_index = np.array([int(raw) for raw in train_set.iid_map], dtype=np.int64)
    inner = np.array(list(train_set.iid_map.values()), dtype=np.int64)

    def scores(k: int) -> np.ndarray:
        out = np.full(split.num_items, UNSEEN)
        known = np.asarray(model.score(train_set.uid_map[str(k)]), dtype=np.float64).ravel()
        out[item_index] = known[inner]
        return out

    return scores


def validation_split(split: LeaveLastOutSplit) -> tuple[LeaveLastOutSplit, list[int]]:
    """The split one step back: each user's most recent training item held out as its test item
    (users with one training item keep it and are not scored); the partitions scored."""
    train, test, scored = [], [], []
    for k, items in enumerate(split.train_items):
        validation = int(split.validation_item[k]) if len(split.validation_item) else -1
        rest = np.asarray(items, dtype=np.int64)[np.asarray(items) != validation]
        if validation >= 0 and len(rest):
            train.append(rest)
            test.append(validation)
            scored.append(k)
        else:
            train.append(np.asarray(items, dtype=np.int64))
            test.append(int(split.test_item[k]))  # never scored: kept only so the arrays align
    return dataclasses.replace(split, train_items=train, test_item=np.asarray(test, dtype=np.int64)), scored


def tuned_scorer(name: str, split: LeaveLastOutSplit, features: Any, seed: int = 0) -> tuple[Callable[[int], np.ndarray], dict]:
    """The scorer of ``name`` with settings chosen on validation items (see the module
    docstring); also the choice and every candidate's validation NDCG@10."""
    from shared.baselines import evaluate_scorer

    validation, scored = validation_split(split)
    tried = []
    for settings in GRIDS[name]:
        figure = evaluate_scorer(validation, library_scorer(name, validation, features, seed, settings), scored)["ndcg@10"]
        tried.append({**settings, "validation-ndcg@10": figure})
    best = max(tried, key=lambda row: row["validation-ndcg@10"])
    chosen = {key: value for key, value in best.items() if key != "validation-ndcg@10"}
    return library_scorer(name, split, features, seed, chosen), {"chosen": chosen, "tried": tried}
