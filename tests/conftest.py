"""Shared fixtures: a small real synthetic dataset and its real backbone features."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.data.synth import SynthConfig, generate

SMALL = SynthConfig(users=12, items=120, seed=3, mean_interactions=30)
MOVIELENS = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-100k-mm"


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "small", SMALL)


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("feature-cache")
