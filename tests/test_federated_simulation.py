"""Local-DP simulations of 12 users, 2 rounds: the session's run (in process, tests/conftest.py)
and FedAdam on Flower's Ray backend, DP-SGD on every client."""

from __future__ import annotations

import json
import math

from shared.run_directory import read_metrics
from simulations.engines.simulate import read_summary, simulate

ITEM_TOWER_PREFIXES = ("encoders.", "fusion.")


def test_run_directory_has_metrics_summary_and_checkpoint(federated_run):
    run_dir = federated_run
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
    run_dir = federated_run
    rows = [json.loads(line) for line in (run_dir / "clients.jsonl").read_text().splitlines()]
    by_client: dict[int, list[dict]] = {}
    for row in rows:
        by_client.setdefault(row["client"], []).append(row)
    assert len(by_client) == 12
    for history in by_client.values():
        first, second = sorted(history, key=lambda r: r["round"])
        assert 0 < first["epsilon"] < second["epsilon"]


def test_private_user_embedding_never_leaves_the_device(small_dataset, feature_cache, tmp_path, monkeypatch):
    """Through the real ClientApp (its mods included), two rounds for three users: every array a
    reply carries is an item-tower array, and none equals the user embedding in the node state."""
    import torch
    from flwr.app import ArrayRecord, Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from client.client_app import app
    from client.state import USER_KEY
    from shared.config import resolve
    from shared.models.recommender import model_spec
    from shared.messages import metrics_of, server_messages, update_of
    from shared.models.recommender import ItemTower

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    config = resolve(None, {"data-dir": str(small_dataset), "feature-cache": str(feature_cache), "privacy": "local",
                            "local-epochs": 1, "device-state-dir": str(tmp_path / "devices")})
    torch.manual_seed(0)
    arrays = ArrayRecord(ItemTower(model_spec(config)).state_dict())
    replies = 0
    for partition in range(3):
        context = Context(run_id=1, node_id=100 + partition, node_config={"partition-id": partition}, state=RecordDict(),
                          run_config={})
        monkeypatch.setattr(TaskIdentity, "_node_id", 100 + partition)
        for server_round in (1, 2):
            reply = app(server_messages([100 + partition], arrays, config, server_round)[0], context)
            assert not reply.has_error() and metrics_of(reply)["steps"] > 0
            private = [a.numpy() for a in context.state.array_records[USER_KEY].values()]
            assert private and all(p.size >= config["dim"] for p in private)
            for key, array in update_of(reply).items():
                assert key.startswith(ITEM_TOWER_PREFIXES), key
                assert not any(array.numpy().shape == p.shape and (array.numpy() == p).all() for p in private)
            replies += 1
    assert replies == 6


def test_fedadam_with_item_ids_runs_and_moves_the_global_model(small_dataset, feature_cache, tmp_path):
    import torch

    from shared.config import resolve
    from shared.models.recommender import model_spec
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
