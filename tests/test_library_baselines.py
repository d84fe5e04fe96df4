"""The study's peer rows: Cornac's models on exactly our split, scored by our metrics code."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from shared.baselines import evaluate_scorer
from shared.data import leave_last_out, load_dataset
from shared.features import load_or_compute_features
from simulations.studies.experiment import load_experiment, run_experiment
from simulations.studies.library_baselines import UNSEEN, content_knn_scorer, library_scorer


@pytest.fixture(scope="module")
def split_and_features(small_dataset, feature_cache):
    dataset = load_dataset(small_dataset)
    return leave_last_out(dataset, 0.1, 0), load_or_compute_features(dataset, feature_cache, progress=False)


def _ease_by_hand(split, lamb: float = 250.0) -> np.ndarray:
    """EASE (Steck 2019) in closed form on the split's training matrix, positive weights only."""
    x = np.zeros((len(split.train_items), split.num_items))
    for k, items in enumerate(split.train_items):
        x[k, items] = 1.0
    gram = x.T @ x + lamb * np.eye(split.num_items)
    p = np.linalg.inv(gram)
    b = p / -np.diag(p)
    np.fill_diagonal(b, 0.0)
    return x @ np.maximum(b, 0.0)


def test_cornac_ease_on_our_split_gives_the_metrics_of_a_direct_computation(split_and_features):
    split, features = split_and_features
    adapter = library_scorer("ease", split, features)
    direct = _ease_by_hand(split)
    seen = np.zeros(split.num_items, dtype=bool)
    for items in split.train_items:
        seen[items] = True
    for k in range(len(split.train_items)):
        np.testing.assert_allclose(adapter(k)[seen], direct[k][seen], rtol=1e-6, atol=1e-9)
        assert (adapter(k)[~seen] == UNSEEN).all()  # never trained on: ranked last, like most-popular
    # Equal scores (items with the same training column) come out of two BLAS orders one ulp
    # apart and the pessimistic tie rule would split them; both sides are rounded far above the
    # round-off (1e-16 relative measured) and far below any real score difference.
    by_hand = evaluate_scorer(split, lambda k: np.round(np.where(seen, direct[k], UNSEEN), 10))
    assert evaluate_scorer(split, lambda k: np.round(adapter(k), 10)) == by_hand


def test_the_warm_negatives_protocol_is_blind_to_how_a_model_scores_new_films(split_and_features):
    """Two scorers that differ only on the cold films: above every warm film, or at minus
    infinity (a library peer's "never seen"). Against warm negatives only they differ by exactly
    the cold test users (a cold held-out film is a hit for one and a miss for the other); against
    all unseen items the first also loses warm users' hits to cold negatives."""
    split, _ = split_and_features
    cold = np.zeros(split.num_items, dtype=bool)
    cold[split.cold_items] = True
    popularity = split.train_popularity().astype(np.float64)
    above = evaluate_scorer(split, lambda k: np.where(cold, 1e9, popularity))
    never = evaluate_scorer(split, lambda k: np.where(cold, -np.inf, popularity))
    assert above["users-cold"] > 0
    warm_only = "hr@10-sampled-warm-negatives"
    assert above[warm_only] - never[warm_only] == pytest.approx(above["users-cold"] / above["users"])
    assert above["hr@10-sampled"] < above[warm_only]
    assert never["hr@10-sampled"] >= never[warm_only]  # cold negatives are free for "never seen"


def test_content_knn_sums_the_nearest_history_similarities(split_and_features):
    split, _ = split_and_features
    content = np.eye(split.num_items)[:, :8] + 0.0  # items 0-7 one-hot, the rest zero
    scores = content_knn_scorer(split, content, neighbours=1)(0)
    history = set(int(i) for i in split.train_items[0])
    assert scores[:8] == pytest.approx([1.0 if i in history else 0.0 for i in range(8)], abs=1e-6)


def test_a_grid_runs_library_rows_beside_the_others(small_dataset, feature_cache, tmp_path):
    grid = tmp_path / "peers.toml"
    grid.write_text(
        f"""
[experiment]
name = "peers"
out = "{tmp_path / 'out'}"
seeds = [0]
[experiment.base]
data-dir = "{small_dataset}"
feature-cache = "{feature_cache}"
[[setting]]
name = "most-popular"
kind = "most-popular"
[[setting]]
name = "Cornac EASE"
kind = "library"
model = "ease"
[[setting]]
name = "content kNN"
kind = "library"
model = "content-knn"
tune = true
""",
        encoding="utf-8",
    )
    out = run_experiment(grid)
    rows = {r["setting"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert set(rows) == {"most-popular", "Cornac EASE", "content kNN"}
    tuning = json.loads((out / "runs" / "content-knn-s0" / "summary.json").read_text())["tuning"]
    assert len(tuning["tried"]) == 4 and set(tuning["chosen"]) == {"neighbours"}
    assert all(0.0 <= float(r["hr@10-sampled"]) <= 1.0 for r in rows.values())
    grid.write_text(grid.read_text().replace('model = "ease"', 'model = "slim"'), encoding="utf-8")
    with pytest.raises(ValueError, match=r"setting 'Cornac EASE': model must be one of bpr, ease, vbpr, content-knn"):
        load_experiment(grid)


@pytest.mark.parametrize("name", ["ease", "content-knn"])
def test_peers_are_tuned_on_validation_items_and_never_see_the_test_items(split_and_features, name):
    import dataclasses

    from simulations.studies.library_baselines import GRIDS, tuned_scorer, validation_split

    split, features = split_and_features
    validation, scored = validation_split(split)
    assert scored and all(validation.test_item[k] == split.validation_item[k] for k in scored)
    assert all(split.validation_item[k] not in validation.train_items[k] for k in scored)
    scorer, tuning = tuned_scorer(name, split, features)
    assert len(tuning["tried"]) == len(GRIDS[name])
    best = max(tuning["tried"], key=lambda row: row["validation-ndcg@10"])
    assert tuning["chosen"] == {k: v for k, v in best.items() if k != "validation-ndcg@10"}
    # Other test items change nothing in the choice: they are never looked at.
    shuffled = dataclasses.replace(split, test_item=np.roll(split.test_item, 1))
    assert tuned_scorer(name, shuffled, features)[1] == tuning
    refit = library_scorer(name, split, features, 0, tuning["chosen"])
    assert all(np.array_equal(scorer(k), refit(k)) for k in range(3))
