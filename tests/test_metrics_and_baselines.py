"""Ranking metrics, baselines and the pooled (non-private) trainer on the same split."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from shared.baselines import most_popular
from shared.data import leave_last_out, load_dataset, split_for
from shared.metrics import metrics_from_rank, rank_of
from simulations.cli import main as cli
from simulations.studies.pooled import train_pooled


def test_rank_excludes_training_items_and_breaks_ties_pessimistically():
    scores = np.array([0.9, 0.5, 0.5, 0.1, 0.8])
    assert rank_of(scores, target=1, exclude=np.array([0])) == 2  # item 4 above, item 2 tied
    assert rank_of(scores, target=1, exclude=np.array([0, 4])) == 1
    assert rank_of(np.zeros(5), target=3, exclude=np.array([], dtype=int)) == 4


def test_metrics_from_rank_values():
    assert metrics_from_rank(0) == {"hr@10": 1.0, "ndcg@10": 1.0, "recall@20": 1.0}
    assert math.isclose(metrics_from_rank(2)["ndcg@10"], 0.5)
    assert metrics_from_rank(15) == {"hr@10": 0.0, "ndcg@10": 0.0, "recall@20": 1.0}


def test_most_popular_never_recommends_cold_items(small_dataset):
    split = leave_last_out(load_dataset(small_dataset))
    result = most_popular(split)
    assert result["users"] == 12
    assert result["hr@10-cold"] == 0.0 or result["users-cold"] == 0


def test_pooled_trainer_writes_a_run_directory(small_dataset, feature_cache, tmp_path):
    run_dir = train_pooled(
        {"data-dir": str(small_dataset), "feature-cache": str(feature_cache), "run-dir": str(tmp_path), "run-id": "pooled"},
        epochs=2,
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["kind"] == "pooled, not private"
    assert summary["final"]["users"] == 12 and 0.0 <= summary["final"]["hr@10"] <= 1.0
    assert (run_dir / "checkpoints" / "final.pt").is_file()


def test_cli_reports_a_broken_dataset_with_file_and_line(small_dataset, tmp_path, capsys):
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(small_dataset, root)
    lines = (root / "interactions.csv").read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + ",not-a-time"
    (root / "interactions.csv").write_text("\n".join(lines) + "\n")
    assert cli(["data", "check", str(root)]) == 2
    err = capsys.readouterr().err
    assert "interactions.csv, line 2: timestamp 'not-a-time' is not Unix seconds" in err


def test_sampled_protocol_ranks_against_99_unseen_items():
    import numpy as np

    from shared.metrics import sampled_metrics, sampled_rng

    n, target, seen = 500, 7, np.array([1, 2, 3])
    perfect = np.zeros(n)
    perfect[target] = 1.0
    assert sampled_metrics(perfect, target, seen, sampled_rng(0)) == {"hr@10-sampled": 1.0, "ndcg@10-sampled": 1.0}
    assert sampled_metrics(np.zeros(n), target, seen, sampled_rng(0))["hr@10-sampled"] == 0.0  # ties count against
    hits = [sampled_metrics(np.random.default_rng(k).random(n), target, seen, sampled_rng(k))["hr@10-sampled"] for k in range(2000)]
    assert abs(np.mean(hits) - 0.10) < 0.02  # a random scorer: 10 of 100
    worst = np.ones(n)
    worst[seen] = 5.0  # seen items are never among the negatives
    worst[target] = 2.0
    assert sampled_metrics(worst, target, seen, sampled_rng(0))["hr@10-sampled"] == 1.0


def test_sampled_protocol_twice_the_second_never_draws_a_cold_item_as_a_negative():
    import numpy as np

    from shared.metrics import user_metrics

    n, target, seen, cold = 500, 7, np.array([1, 2, 3]), np.arange(400, 500)
    scores = np.zeros(n)
    scores[cold] = 10.0  # a model that places every new film above the held-out item
    scores[target] = 5.0
    row = user_metrics(scores, target, seen, 0, cold)
    # Drawn from all 496 unseen items, about 20 of the 99 negatives are cold and outrank it.
    assert row["hr@10-sampled"] == 0.0 and row["ndcg@10-sampled"] == 0.0
    # Drawn from the warm ones only, it outranks all 99 (the full ranking is unchanged).
    assert row["hr@10-sampled-warm-negatives"] == 1.0 and row["ndcg@10-sampled-warm-negatives"] == 1.0
    assert row["rank"] == 100
    # A cold held-out item is ranked against warm negatives too.
    cold_row = user_metrics(scores, 450, seen, 0, cold)
    assert cold_row["hr@10-sampled-warm-negatives"] == 1.0 and cold_row["hr@10-sampled"] == 0.0
    # Without cold items (or without the cold-start protocol) the two protocols are one.
    plain = user_metrics(np.random.default_rng(3).random(n), target, seen, 0)
    assert plain["hr@10-sampled"] == plain["hr@10-sampled-warm-negatives"]
    assert plain["ndcg@10-sampled"] == plain["ndcg@10-sampled-warm-negatives"]


def test_cold_start_hold_out_removes_items_from_every_training_set(small_dataset):
    dataset = load_dataset(small_dataset)
    split = split_for(dataset, {"cold-start-items": 0.3, "seed": 4})
    held_out = set(split.held_out_items.tolist())
    assert len(held_out) == round(0.3 * dataset.num_items)
    assert all(not held_out & set(items.tolist()) for items in split.train_items)
    assert held_out <= set(split.cold_items.tolist())
    cold_tests = [int(t) for t in split.test_item if int(t) in held_out]
    assert cold_tests, "with 30% of items held out some user's last item is one of them"
    assert split_for(dataset, {"cold-start-items": 0.3, "seed": 4}).held_out_items.tolist() == sorted(held_out)
    assert split_for(dataset, {"cold-start-items": 0.3, "seed": 5}).held_out_items.tolist() != sorted(held_out)
    result = most_popular(split)
    cold = set(split.cold_items.tolist())
    assert result["users-cold"] == sum(int(t) in cold for t in split.test_item) and result["hr@10-cold"] == 0.0
    assert leave_last_out(dataset).held_out_items.size == 0


def test_the_validation_split_is_the_test_split_one_step_earlier_with_its_own_pseudo_cold_films(small_dataset):
    """``evaluate-on = validation``: no test item and no real cold film is trained on or held out,
    each user's held-out item is the test split's validation item, and a disjoint pseudo-cold
    set of the same size is held out of training, so new-film settings are chosen on warm films."""
    dataset = load_dataset(small_dataset)
    config = {"cold-start-items": 0.3, "seed": 4}
    test = split_for(dataset, config)
    validation = split_for(dataset, {**config, "evaluate-on": "validation"})
    real_cold = set(test.held_out_items.tolist())
    pseudo = set(validation.held_out_items.tolist()) - real_cold
    assert real_cold <= set(validation.held_out_items.tolist())
    assert len(pseudo) == len(real_cold) and not pseudo & real_cold
    assert pseudo <= set(np.concatenate(test.train_items).tolist())  # warm in the test split
    by_user = dict(zip(test.users, test.validation_item.tolist()))
    assert validation.test_item.tolist() == [by_user[u] for u in validation.users]
    tests_of = dict(zip(test.users, test.test_item.tolist()))
    for user, items, target in zip(validation.users, validation.train_items, validation.test_item):
        trained = set(items.tolist())
        assert not trained & set(validation.held_out_items.tolist()) and int(target) not in trained
        # the test item is not trained on (it may be trained on only if seen earlier too)
        order = dataset.inter_item[dataset.inter_user == user]
        if int((order == tests_of[user]).sum()) == 1:
            assert tests_of[user] not in trained
    assert any(int(t) in pseudo for t in validation.test_item), "pseudo-cold films are validation targets"
    # A simulated device reads the same split from the run config the server sends it.
    from client.local_data import local_data

    device = local_data({"partition-id": 3}, {"data-dir": str(small_dataset), **config, "evaluate-on": "validation"})
    assert device.test_item == int(validation.test_item[3]) and device.train_items.tolist() == validation.train_items[3].tolist()
    assert device.cold_items == frozenset(validation.cold_items.tolist()) != frozenset(test.cold_items.tolist())
    with pytest.raises(ValueError, match="evaluate-on must be one of test, validation, got 'train'"):
        leave_last_out(dataset, 0.3, 4, "train")


def test_held_out_items_are_never_drawn_as_negatives():
    from shared.training import negative_pool

    assert negative_pool(10, np.array([1, 2]), np.array([3, 4])).tolist() == [0, 5, 6, 7, 8, 9]
    assert negative_pool(10, np.array([1, 2])).tolist() == [0, 3, 4, 5, 6, 7, 8, 9]


def test_rank_percentile_runs_from_best_to_worst_candidate():
    from shared.metrics import rank_percentile

    train = np.array([0, 1])  # 10 items, 2 trained on: 8 candidates, ranks 0..7
    assert rank_percentile(0, 10, train, test=5) == 0.0
    assert rank_percentile(7, 10, train, test=5) == 1.0
    assert rank_percentile(3, 10, train, test=5) == 3 / 7


def test_train_central_is_an_alias_of_train_pooled_that_warns(small_dataset, feature_cache, tmp_path, capsys):
    """"Central" means central DP only; the old command still runs the pooled trainer, and says so."""
    sets = ["--set", f"data-dir={small_dataset}", "--set", f"feature-cache={feature_cache}", "--set", f"run-dir={tmp_path}"]
    assert cli(["train-central", *sets, "--set", "run-id=old-name", "--epochs", "1"]) == 0
    assert "train-central is now train-pooled" in capsys.readouterr().err
    assert json.loads((tmp_path / "old-name" / "summary.json").read_text())["kind"] == "pooled, not private"
