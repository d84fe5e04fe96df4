"""Shared fixtures: a small real synthetic dataset and its real backbone features."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.data.synth import SynthConfig, generate

SMALL = SynthConfig(users=12, items=120, seed=3, mean_interactions=30)
MOVIELENS = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens-100k-mm"


@pytest.fixture(scope="session", autouse=True)
def one_ray_cluster_per_session():
    """Flower's Ray backend starts a Ray cluster for every simulation and shuts it down after
    (about 4 s of a small test run's 11 on two cores); the suite runs some 70 simulations.
    Within a test session the cluster starts once and stays: each simulation still creates its
    own actors (fresh worker processes) and terminates them, so nothing passes from one run to
    the next but the idle cluster. ``fedmmrec run`` keeps Flower's own lifecycle."""
    from flwr.server.superlink.fleet.vce.backend import raybackend

    original = raybackend.RayBackend.terminate

    def terminate_actors_only(self) -> None:
        if self.pool:
            self.pool.terminate_all_actors()

    raybackend.RayBackend.terminate = terminate_actors_only
    yield
    raybackend.RayBackend.terminate = original
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "small", SMALL)


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory) -> Path:
    """The backbone features' cache, one for the whole test run: the pytest-xdist workers share
    it (the default catalog's 500 items take about 30 s to encode). Entries are keyed by the
    content's hash and written atomically, so two workers that encode one catalog at once
    both write the same bytes."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = tmp_path_factory.getbasetemp().parent / "feature-cache"  # this run's folder, above each worker's
        shared.mkdir(exist_ok=True)
        return shared
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture(scope="session")
def federated_run(small_dataset, feature_cache, tmp_path_factory):
    """A real 2-round local-DP run of the 12-user dataset, all clients training each round. Its
    tests read the finished run (exports, explanations, the audit against a lying server), so
    it runs on the in-process engine, the same server and ClientApp code as on Flower's: 7 s
    against about 17 s on Ray, and each pytest-xdist worker that reads it computes it. Flower's
    Ray engine runs DP-SGD in tests/test_federated_simulation.py (FedAdam) and the robustness,
    straggler, load and resume tests."""
    from simulations.engines.simulate import simulate

    return simulate(
        {
            "data-dir": str(small_dataset),
            "feature-cache": str(feature_cache),
            "run-dir": str(tmp_path_factory.mktemp("runs")),
            "run-id": "test-run",
            "privacy": "local",
            "num-server-rounds": 2,
            "fraction-train": 1.0,
            "local-epochs": 3,
        },
        engine="in-process",
    )


@pytest.fixture
def rewritten_ledger(tmp_path):
    """``rewrite(run_dir, edit) -> copy``: a copy of the run whose ledger is written anew, each
    entry's body through ``edit(kind, round, body) -> body`` with a valid hash chain: what a
    server that rewrites its ledger can do. The copies go under this test's ``tmp_path``."""
    import shutil

    from shared.run_directory import RunDirectory, read_ledger

    made = []

    def rewrite(run_dir: Path, edit) -> Path:
        copy = tmp_path / f"rewritten-{len(made)}"
        shutil.copytree(run_dir, copy)
        RunDirectory.open(copy).ledger_path.unlink()
        ledger = RunDirectory.open(copy).open_ledger()
        for entry in read_ledger(run_dir):
            ledger.append([(entry.kind, entry.round, edit(entry.kind, entry.round, dict(entry.body)))])
        ledger.close()
        made.append(copy)
        return copy

    return rewrite


@pytest.fixture(scope="session")
def user_run(small_dataset, feature_cache, tmp_path_factory):
    """A real default-mode run (privacy = user, the secure sum) of the 12-user dataset, over the
    60 most popular items: what the explanation, export and online tests read. They read the
    finished run only, so it runs on the in-process engine (the same server and ClientApp code,
    no Ray processes)."""
    from simulations.engines.simulate import simulate

    return simulate({"data-dir": str(small_dataset), "feature-cache": str(feature_cache), "cooccurrence-items": 60,
                     "run-dir": str(tmp_path_factory.mktemp("user")), "run-id": "explained"}, engine="in-process")
