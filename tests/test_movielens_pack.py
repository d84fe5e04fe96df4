"""The team's real MovieLens-100K pack (read from ../shared, never copied here) is in our format."""

from __future__ import annotations

import pytest
from conftest import MOVIELENS

from shared.data import leave_last_out, load_dataset

pytestmark = pytest.mark.skipif(
    not (MOVIELENS / "items.csv").is_file(),
    reason=f"MovieLens pack not found at {MOVIELENS} (team material beside the checkout; not redistributable)",
)


def test_pack_loads_with_the_counts_its_readme_states():
    dataset = load_dataset(MOVIELENS)
    assert (dataset.num_items, dataset.num_users, dataset.num_interactions) == (1682, 943, 100_000)
    assert sum(1 for d in dataset.descriptions if d) == 1455
    assert sum(1 for p in dataset.image_paths if p is not None) == 1665
    split = leave_last_out(dataset)
    assert len(split.users) == 943 and split.skipped_users == []
