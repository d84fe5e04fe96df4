"""A real Flower simulation (Ray backend, Opacus DP-SGD on every client) of 12 users, 2 rounds."""

from __future__ import annotations

import json
import math

from server.run_directory import read_metrics
from simulations.simulate import read_summary, simulate

ITEM_TOWER_PREFIXES = ("encoders.", "fusion.")


def test_run_directory_has_metrics_summary_and_checkpoint(federated_run):
    run_dir, _ = federated_run
    rows = read_metrics(run_dir)
    assert [row["round"] for row in rows] == [1, 2]
    for row in rows:
        assert row["clients-trained"] == 12
        for key in ("train-loss", "hr@10", "ndcg@10", "recall@20", "epsilon-max", "epsilon-mean", "bytes-sent-per-client"):
            assert math.isfinite(row[key]), key
    summary = read_summary(run_dir)
    assert summary["rounds"] == 2 and summary["privacy"]["mode"] == "local"
    # The sampled protocol (99 negatives), beside the same figure for most-popular.
    for key in ("hr@10-sampled", "ndcg@10-sampled"):
        assert 0.0 <= summary["final"][key] <= 1.0 and 0.0 <= summary["baselines"]["most-popular"][key] <= 1.0
    assert summary["final"]["hr@10-sampled"] >= summary["final"]["hr@10"]  # 99 negatives, not the catalog
    assert (run_dir / "checkpoints" / "final.pt").is_file()
    assert 0 < summary["communication"]["bytes-sent-per-client-per-round"] < 1_000_000


def test_epsilon_grows_for_a_client_that_trained_twice(federated_run):
    run_dir, _ = federated_run
    rows = [json.loads(line) for line in (run_dir / "clients.jsonl").read_text().splitlines()]
    by_client: dict[int, list[dict]] = {}
    for row in rows:
        by_client.setdefault(row["client"], []).append(row)
    assert len(by_client) == 12
    for history in by_client.values():
        first, second = sorted(history, key=lambda r: r["round"])
        assert 0 < first["epsilon"] < second["epsilon"]


def test_private_user_embedding_never_reaches_the_server(federated_run):
    _, trace = federated_run
    received = [json.loads(line) for line in (trace / "server-received.jsonl").read_text().splitlines()]
    private = set()
    for path in trace.glob("client-*.jsonl"):
        for line in path.read_text().splitlines():
            private.update(json.loads(line)["private"])
    assert len(received) == 24 and len(private) >= 12
    for reply in received:
        keys = [key.split("/", 1)[1] for key in reply["arrays"]]
        assert all(key.startswith(ITEM_TOWER_PREFIXES) for key in keys)
        assert not private & set(reply["arrays"].values())


def test_fedadam_with_item_ids_runs_and_moves_the_global_model(small_dataset, feature_cache, tmp_path):
    import torch

    from shared.config import model_spec, resolve
    from shared.models.recommender import ItemTower

    run_dir = simulate(
        {
            "data-dir": str(small_dataset),
            "feature-cache": str(feature_cache),
            "run-dir": str(tmp_path),
            "run-id": "fedadam",
            "privacy": "local",
            "strategy": "fedadam",
            "num-server-rounds": 2,
            "fraction-train": 0.5,
            "fusion": "gated",
            "item-ids": True,
            "server-tau": 1e-6,
            "eval-refit-steps": 20,
        }
    )
    rows = read_metrics(run_dir)
    assert rows[0]["clients-trained"] == 6 and math.isfinite(rows[0]["hr@10"])
    # FedAdam computes in float64; the global model must stay float32 or round 2's replies fail validation.
    assert rows[1]["clients-trained"] == 6 and rows[1]["clients-rejected"] == 0
    final = torch.load(run_dir / "checkpoints" / "final.pt")["item_tower"]
    assert {t.dtype for t in final.values()} == {torch.float32}
    torch.manual_seed(0)  # the server's initial weights (seed 0)
    initial = ItemTower(model_spec(resolve(None, {"fusion": "gated", "item-ids": True}), 120)).state_dict()
    assert set(final) == set(initial) and "id_biases.weight" in final
    assert any(not torch.equal(final[k], initial[k]) for k in initial)
    assert final["id_biases.weight"].abs().sum() > 0  # the per-item parts are federated too
