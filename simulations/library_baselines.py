"""Standard recommenders from a well-kept library (Cornac) on exactly our split, scored by our
metrics code: the peers every results table should show.

Each model is fitted on the training interactions of the run's split (the same users, the same
held-out last items, the same cold-start hold-out) and scored for every partition through
:func:`shared.baselines.evaluate_scorer`, so the sampled protocol meets the same 99 negatives as
every other row. Items a model never saw in training (the cold-start hold-out) get the lowest
score, as most-popular gives them. ``content-knn`` is the one model written here: it ranks by
the public content alone (MiniLM text + MobileNetV2 image features), for cold start.

Settings: Cornac's published defaults raised to a usual capacity (64 factors), not tuned on our
test items; EASE's lambda 250 and BPR's settings are the issue's reference settings.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from shared.data.split import LeaveLastOutSplit

LIBRARY_MODELS = ("bpr", "ease", "vbpr", "content-knn")
UNSEEN = -1e9  # the score of an item the model never saw: last, like most-popular's zero count


def _cornac_train_set(split: LeaveLastOutSplit):
    import cornac

    triples = [(str(k), str(int(item)), 1.0) for k, items in enumerate(split.train_items) for item in items]
    return cornac.data.Dataset.build(triples, fmt="UIR", seed=0)


def _cornac_model(name: str, seed: int, features: np.ndarray | None, train_set):
    import cornac

    if name == "bpr":
        return cornac.models.BPR(k=64, max_iter=200, learning_rate=0.01, lambda_reg=0.01, seed=seed)
    if name == "ease":
        return cornac.models.EASE(lamb=250, verbose=False, seed=seed)
    if name == "vbpr":
        ids = [str(i) for i in range(len(features))]
        modality = cornac.data.ImageModality(features=features.astype(np.float32), ids=ids, normalized=True)
        train_set.add_modalities(item_image=modality)
        modality.build(id_map=train_set.iid_map)
        return cornac.models.VBPR(k=32, k2=32, n_epochs=30, batch_size=256, learning_rate=0.005, verbose=False, seed=seed)
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


def library_scorer(name: str, split: LeaveLastOutSplit, features: Any, seed: int = 0) -> Callable[[int], np.ndarray]:
    """Fit ``name`` on the split's training interactions; return partition -> scores [N]."""
    content = np.hstack([_unit(features.text) * features.text_mask[:, None], _unit(features.image) * features.image_mask[:, None]])
    if name == "content-knn":
        return content_knn_scorer(split, content)
    train_set = _cornac_train_set(split)
    model = _cornac_model(name, seed, content if name == "vbpr" else None, train_set)
    model.fit(train_set)
    item_index = np.array([int(raw) for raw in train_set.iid_map], dtype=np.int64)
    inner = np.array(list(train_set.iid_map.values()), dtype=np.int64)

    def scores(k: int) -> np.ndarray:
        out = np.full(split.num_items, UNSEEN)
        known = np.asarray(model.score(train_set.uid_map[str(k)]), dtype=np.float64).ravel()
        out[item_index] = known[inner]
        return out

    return scores
