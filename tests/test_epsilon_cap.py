"""A per-client epsilon cap binds: clients decline instead of overspending, the run stops
cleanly when nobody can train, and the ledger records the declines and still audits."""

from __future__ import annotations

import torch

from server.audit import audit
from server.run_directory import read_metrics
from shared.config import model_spec, resolve
from shared.ledger import read_entries
from shared.models.recommender import ItemTower
from simulations.simulate import read_summary, simulate


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
        }
    )
    rows = read_metrics(run_dir)
    assert len(rows) == 1  # stopped after the first round: nobody could train
    assert rows[0]["clients-declined"] == 12 and rows[0]["clients-trained"] == 0
    declined = [e for e in read_entries(run_dir) if e.kind == "client-round"]
    assert len(declined) == 12 and all(e.body["declined"] and e.body["steps"] == 0 for e in declined)
    assert all(e.body["epsilon"] == 0.0 for e in declined)
    assert audit(run_dir).passed
    summary = read_summary(run_dir)
    assert summary["privacy"]["epsilon-max"] == 0.0
    torch.manual_seed(0)
    initial = ItemTower(model_spec(resolve())).state_dict()
    final = torch.load(run_dir / "checkpoints" / "final.pt")["item_tower"]
    assert all(torch.equal(final[k], initial[k]) for k in initial)  # nothing was released
