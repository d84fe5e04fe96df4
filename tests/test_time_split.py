"""The global time split (issue 43, `time-cut`): what came before one moment trains, each user's
first interaction after it is the test item, and validation is the same cut one step earlier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.config import resolve
from shared.data import load_dataset, split_for
from shared.data.split import NO_TEST_ITEM, held_out_items, time_cut

# (user, item, timestamp). Sorted times: 10 15 20 30 40 45 50 60 65 70 80 90; at quantile 0.55
# the cut is the 7th (50).
INTERACTIONS = [
    ("u1", 1, 10), ("u1", 2, 20), ("u1", 3, 60), ("u1", 4, 70),
    ("u2", 2, 15), ("u2", 5, 65),
    ("u3", 1, 30), ("u3", 3, 40),  # nothing after the cut: trains, is not ranked
    ("u4", 6, 80),  # nothing before the cut: not a device
    ("u5", 4, 45), ("u5", 1, 90), ("u5", 6, 50),  # the film at the cut itself is the first after it
]


def _dataset(root: Path) -> Path:
    root.mkdir(parents=True)
    items = ["item_id,title,year,genres,description,image"] + [f"{i},Film {i},1990,Drama,About film {i}," for i in range(1, 7)]
    (root / "items.csv").write_text("\n".join(items) + "\n")
    rows = ["user_id,item_id,rating,timestamp"] + [f"{u},{i},4,{t}" for u, i, t in INTERACTIONS]
    (root / "interactions.csv").write_text("\n".join(rows) + "\n")
    return root


def _named(dataset, split) -> dict[str, tuple[list[int], int, int]]:
    """user id -> (training item ids, test item id or -1, validation item id)."""
    ids = [int(i) for i in dataset.item_ids]
    return {
        str(dataset.user_ids[u]): (
            sorted(ids[i] for i in split.train_items[k]),
            ids[split.test_item[k]] if split.test_item[k] != NO_TEST_ITEM else -1,
            ids[split.validation_item[k]],
        )
        for k, u in enumerate(split.users)
    }


def test_the_cut_trains_on_the_past_and_tests_each_users_next_film(tmp_path):
    dataset = load_dataset(_dataset(tmp_path / "d"), check_images=False, need_images=False)
    split = time_cut(dataset, 0.55)
    assert _named(dataset, split) == {
        "u1": ([1, 2], 3, 2),
        "u2": ([2], 5, 2),
        "u3": ([1, 3], -1, 3),
        "u5": ([4], 6, 4),
    }
    assert sorted(int(dataset.item_ids[i]) for i in split.cold_items) == [5, 6]  # first seen after the cut: new films
    assert sorted(int(dataset.item_ids[i]) for i in split.held_out_items) == [5, 6]  # unknown at release time, never negatives
    assert [str(dataset.user_ids[u]) for u in split.skipped_users] == ["u4"]
    assert split_for(dataset, {"time-cut": 0.55}).test_item.tolist() == split.test_item.tolist()  # the run config's path


def test_validation_is_the_same_cut_over_what_came_before_the_test_cut(tmp_path):
    dataset = load_dataset(_dataset(tmp_path / "d"), check_images=False, need_images=False)
    # Before 50: 10 15 20 30 40 45; the same quantile cuts them at 20.
    split = time_cut(dataset, 0.55, evaluate_on="validation")
    assert _named(dataset, split) == {"u1": ([1], 2, 1), "u2": ([2], -1, 2)}
    assert sorted(int(dataset.item_ids[i]) for i in split.held_out_items) == [3, 4, 5, 6]  # nobody chose them before 20


def test_held_out_films_never_train_and_the_cut_is_refused_outside_its_range(tmp_path):
    dataset = load_dataset(_dataset(tmp_path / "d"), check_images=False, need_images=False)
    split = time_cut(dataset, 0.55, cold_fraction=0.34, seed=0)
    drawn = set(held_out_items(dataset, 0.34, 0).tolist())
    assert len(drawn) == 2 and drawn | {4, 5} == set(split.held_out_items.tolist())  # the drawn share and the new films (ids 5, 6)
    assert not set(split.held_out_items.tolist()) & set(np.concatenate(split.train_items).tolist())
    with pytest.raises(ValueError, match=r"time-cut must be in \(0, 1\)"):
        time_cut(dataset, 1.0)
    with pytest.raises(ValueError, match="time-cut 1.5: a quantile in"):
        resolve(None, {"time-cut": 1.5})
    with pytest.raises(ValueError, match="no user has interactions on both sides"):
        time_cut(dataset, 0.01)


def test_a_run_on_the_time_split_ranks_only_the_devices_with_a_film_after_the_cut(small_dataset, feature_cache, tmp_path):
    from server.audit import audit
    from shared.run_directory import RunDirectory
    from simulations.engines.simulate import simulate

    run = simulate({"data-dir": str(small_dataset), "feature-cache": str(feature_cache), "cooccurrence-items": 60,
                    "time-cut": 0.8, "run-dir": str(tmp_path), "run-id": "time"}, engine="in-process")
    split = split_for(load_dataset(small_dataset), {"time-cut": 0.8})
    ranked = int(np.count_nonzero(split.test_item != NO_TEST_ITEM))
    assert 0 < ranked < len(split.users)  # some devices contribute without a test item
    summary = RunDirectory.open(run).read_summary()
    assert summary["final"]["clients-evaluated"] == ranked
    assert summary["baselines"]["most-popular"]["users"] == ranked
    assert RunDirectory.open(run).read_config()["time-cut"] == 0.8
    assert audit(run).passed
