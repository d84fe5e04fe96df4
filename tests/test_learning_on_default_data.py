"""The main job's configuration learns: on the default synthetic data, under DP, it ranks
held-out items far better than chance.

This runs the main job's configuration (100 users, 30 rounds, Flower simulation, Opacus on
every client), about 2.5 minutes on 2 CPU cores. The rank percentile (0 best, 0.5 for a random ranker, whose
mean over 100 users has std ~0.03) is the low-variance measure; HR@10 over 100 users is too
coarse to test against chance.
"""

from __future__ import annotations

import pytest

from shared.data.synth import SynthConfig, generate
from simulations.simulate import read_summary, simulate


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, feature_cache):
    data = generate(tmp_path_factory.mktemp("default") / "synth", SynthConfig())
    return read_summary(
        simulate(
            {
                "data-dir": str(data),
                "feature-cache": str(feature_cache),
                "run-dir": str(tmp_path_factory.mktemp("runs")),
            }
        )
    )


def test_dp_federated_model_ranks_held_out_items_better_than_random(default_run):
    final = default_run["final"]
    assert final["clients-evaluated"] == 100
    assert final["rank-percentile"] < 0.45


def test_privacy_and_traffic_are_reported(default_run):
    privacy = default_run["privacy"]
    assert privacy["mode"] == "local" and privacy["clients-trained"] == 100
    assert 0 < privacy["epsilon-mean"] <= privacy["epsilon-max"] < 100
    assert default_run["communication"]["bytes-sent-per-client-per-round"] < 1_000_000
