"""A per-client epsilon cap binds: clients decline instead of overspending, the run stops
cleanly when nobody can train, and the ledger records the declines and still audits."""

from __future__ import annotations

import torch

from server.audit import audit
from shared.config import resolve
from shared.models.recommender import model_spec
from shared.models.recommender import ItemTower
from shared.run_directory import read_ledger, read_metrics
from simulations.engines.simulate import read_summary, simulate


def test_clients_at_their_cap_decline_and_the_run_stops_cleanly(small_dataset, feature_cache, tmp_path):
    run_dir = simulate(
        {
            "data-dir": str(small_dataset),
            "feature-cache": str(feature_cache),
            "run-dir": str(tmp_path),
            "run-id": "capped",
            "num-server-rounds": 3,
            "fraction-train": 1.0,
            "epsilon-cap": 1.0,  # below what a single local round costs
            "privacy": "local",
        },
        engine="in-process",
    )
    rows = read_metrics(run_dir)
    assert len(rows) == 1  # stopped after the first round: nobody could train
    assert rows[0]["clients-declined"] == 12 and rows[0]["clients-trained"] == 0
    declined = [e for e in read_ledger(run_dir) if e.kind == "client-round"]
    assert len(declined) == 12 and all(e.body["declined"] and e.body["steps"] == 0 for e in declined)
    assert all(e.body["epsilon"] == 0.0 for e in declined)
    assert audit(run_dir).passed
    summary = read_summary(run_dir)
    assert summary["privacy"]["epsilon-max"] == 0.0
    torch.manual_seed(0)
    initial = ItemTower(model_spec(resolve())).state_dict()
    final = torch.load(run_dir / "checkpoints" / "final.pt")["item_tower"]
    assert all(torch.equal(final[k], initial[k]) for k in initial)  # nothing was released


def test_clients_at_their_cap_are_replaced_by_others(small_dataset, feature_cache, tmp_path):
    """With half the clients sampled and a cap only some can afford, each decline is replaced
    by a client not yet asked, so the round trains as many as it asked for (or every client
    that can afford a round, when fewer can)."""
    from shared.training import train_config
    from shared.data import leave_last_out, load_dataset
    from shared.training import projected_epsilon

    config = resolve(None, {"local-epochs": 2, "privacy": "local"})
    split = leave_last_out(load_dataset(small_dataset))
    costs = sorted(projected_epsilon([], len(items), train_config(config)) for items in split.train_items)
    cap = (costs[0] + min(c for c in costs if c > costs[0])) / 2  # only the cheapest can afford a round
    affordable = sum(c <= cap for c in costs)
    assert affordable < 6
    run_dir = simulate(
        {
            "data-dir": str(small_dataset),
            "feature-cache": str(feature_cache),
            "run-dir": str(tmp_path),
            "run-id": "replaced",
            "num-server-rounds": 1,
            "fraction-train": 0.5,
            "epsilon-cap": cap,
            "privacy": "local",
        },
        engine="in-process",
    )
    row = read_metrics(run_dir)[0]
    # Every affordable client trained, wherever the sampler started: declines were replaced
    # until the pool ran out.
    assert row["clients-trained"] == affordable
    assert row["clients-sampled"] == row["clients-trained"] + row["clients-declined"] == 12
    assert audit(run_dir).passed
