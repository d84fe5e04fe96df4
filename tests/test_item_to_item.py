"""``item-model = ease``: item-to-item weights in closed form from the co-occurrence release, and
``cold-weight``, the scale of items placed from their content.

Checked against Cornac's EASE (the library peer), against a direct computation from the split's
training interactions through a real Flower run, and on the exact scaling of cold items."""

from __future__ import annotations

import math

import numpy as np
import pytest

from server.audit import audit
from shared.config import resolve
from shared.cooccurrence import EASE_CONTENT_RIDGE, _ridge, ease_weights, fit_model
from shared.item_content import content_matrix
from shared.item_model import CooccurrenceModel
from shared.data import load_dataset, split_for
from shared.features import load_or_compute_features
from simulations.engines.simulate import read_summary, simulate


def test_ease_weights_are_cornacs_ease_on_the_same_interactions():
    """Users with 5 items each: the Gram of rows at unit norm is X^T X / 5, so our penalty
    ``lam`` is Cornac's ``5 lam`` on the binary matrix (Cornac keeps negative weights with
    ``posB = False``)."""
    import cornac

    rng = np.random.default_rng(0)
    users, items, per_user, lam = 40, 15, 5, 2.0
    rows = [rng.choice(items, size=per_user, replace=False) for _ in range(users)]
    x = np.zeros((users, items))
    for u, chosen in enumerate(rows):
        x[u, chosen] = 1.0
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    ours = ease_weights(unit.T @ unit, lam)

    triples = [(str(u), str(int(i)), 1.0) for u, chosen in enumerate(rows) for i in chosen]
    train_set = cornac.data.Dataset.build(triples, fmt="UIR", seed=0)
    model = cornac.models.EASE(lamb=per_user * lam, posB=False, verbose=False)
    model.fit(train_set)
    order = [train_set.iid_map[str(i)] for i in range(items)]
    theirs = model.B[np.ix_(order, order)]
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)
    assert np.all(np.diag(ours) == 0.0)


def _fitted(cold_weight: float, item_model: str = "ease") -> CooccurrenceModel:
    rng = np.random.default_rng(1)
    n, m = 30, 12
    known = np.ones(n, dtype=bool)
    known[[3, 7, 20]] = False
    top = np.flatnonzero(known)[:m]
    x = (rng.random((50, m)) < 0.3).astype(float)
    x = x[x.sum(1) > 0]
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    content = rng.normal(size=(n, 9))
    model, _ = fit_model(
        rng.poisson(5.0, size=n).astype(float), 0.0, top, unit.T @ unit, 0.0, content, known, 4,
        item_model=item_model, ease_lambda=1.5, cold_weight=cold_weight,
    )
    return model


@pytest.mark.parametrize("item_model", ["ease", "factors"])
def test_cold_weight_scales_exactly_the_items_placed_from_content(item_model):
    one, three = _fitted(1.0, item_model), _fitted(3.0, item_model)
    cold = one.from_content
    assert cold.tolist().count(True) == 3
    np.testing.assert_array_equal(three.factors[~cold], one.factors[~cold])
    np.testing.assert_allclose(three.factors[cold], 3.0 * one.factors[cold])
    assert np.abs(one.factors[cold]).sum() > 0


def test_ease_user_vector_is_the_history_over_the_top_items_and_scores_are_its_weights():
    model = _fitted(1.0)
    history = np.array([0, 2, 5, 3])  # item 3 is not among the top items: it adds nothing
    positions = [int(np.flatnonzero(model.top_items == i)[0]) for i in (0, 2, 5)]
    expected_user = np.zeros(len(model.top_items))
    expected_user[positions] = 1.0
    np.testing.assert_array_equal(model.user_vector(history), expected_user)
    personal, _, _ = model.score_parts(history, None)
    weights = model.factors[model.top_items].T  # B[i, j]: from top item i to top item j
    direct = weights[positions].sum(0)
    np.testing.assert_allclose(personal[model.top_items], direct / np.abs(direct).max())
    restored = CooccurrenceModel.from_arrays(model.to_arrays())
    assert restored.item_item and np.allclose(restored.user_vector(history), expected_user)


def test_text_only_content_has_no_image_columns():
    rng = np.random.default_rng(2)
    text, image = rng.normal(size=(20, 384)), rng.normal(size=(20, 100))
    ones = np.ones(20, dtype=bool)
    both = content_matrix(text, ones, image, ones)
    only_text = content_matrix(text, ones, image, ones, ("text",))
    np.testing.assert_array_equal(only_text[:, 384:-3], 0.0)
    np.testing.assert_array_equal(only_text[:, :384], both[:, :384])
    assert only_text[:, -2].sum() == 0 and only_text[:, -3].sum() == 20  # image flag off, text on
    only_image = content_matrix(text, ones, image, ones, ("image",))
    np.testing.assert_array_equal(only_image[:, :384], 0.0)
    np.testing.assert_array_equal(only_image[:, 384:-3], both[:, 384:-3])


def test_federated_ease_without_noise_is_ease_on_the_pooled_interactions(small_dataset, feature_cache, tmp_path):
    """Through the ClientApp and the server: every device sends its unit co-occurrence, the server sums (no noise at
    ``user-epsilon = inf``) and solves EASE; the served weights equal EASE computed directly from
    the split's training interactions, and the cold items are the content map times the weight."""
    settings = {
        "data-dir": str(small_dataset), "feature-cache": str(feature_cache), "run-dir": str(tmp_path),
        "run-id": "ease", "privacy": "user", "user-noise": "central", "user-epsilon": math.inf, "item-model": "ease",
        "ease-lambda": 1.5, "cold-weight": 2.5, "cooccurrence-items": 1000, "cold-start-items": 0.1,
        "modalities": "text",
    }
    run = simulate(settings, engine="in-process")
    config = resolve(None, settings)
    dataset = load_dataset(small_dataset)
    split = split_for(dataset, config)
    with np.load(run / "model.npz") as arrays:
        model = CooccurrenceModel.from_arrays(dict(arrays))
    known = np.ones(split.num_items, dtype=bool)  # every item but the cold-start hold-out
    known[split.held_out_items] = False
    assert model.item_item and np.array_equal(model.top_items, np.flatnonzero(known))
    x = np.zeros((len(split.train_items), split.num_items))
    for k, items in enumerate(split.train_items):
        x[k, np.asarray(items, dtype=np.int64)] = 1.0
    unit = (x / np.linalg.norm(x, axis=1, keepdims=True))[:, model.top_items]
    expected = ease_weights(unit.T @ unit, 1.5)
    np.testing.assert_allclose(model.factors[model.top_items].T, expected, atol=2e-5)  # float32 on the wire

    features = load_or_compute_features(dataset, feature_cache, progress=False)
    content = content_matrix(features.text, features.text_mask, features.image, features.image_mask, ("text",))
    cold = np.flatnonzero(~known)
    assert len(cold) == len(split.held_out_items) > 0
    placed = 2.5 * content[cold] @ _ridge(content[model.top_items], expected.T, EASE_CONTENT_RIDGE)
    np.testing.assert_allclose(model.factors[cold], placed, atol=1e-4)
    assert read_summary(run)["privacy"]["user-level-epsilon"] == math.inf
    assert audit(run).passed
