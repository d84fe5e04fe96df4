"""Faults a federation meets, with the fault-injecting ClientApp (``simulations/engines/faults.py``):
broken, crashed, late and poisoned clients. What the server does with a bad reply is a question
of what it computes, so those runs use the in-process engine (the real server and ClientApp, an
exception turned into an error reply as Flower does); the straggler needs a round timeout,
which only Flower's engine has."""

from __future__ import annotations

import pytest
import torch

from server.audit import audit
from shared.run_directory import read_ledger, read_metrics
from simulations.engines.simulate import read_summary, simulate


def _run(small_dataset, feature_cache, tmp_path, run_id: str, engine: str = "in-process", **extra):
    faults = extra.pop("faults", "")  # the simulation's fault hook, not a run-config key
    return simulate(
        {
            "data-dir": str(small_dataset),
            "feature-cache": str(feature_cache),
            "run-dir": str(tmp_path),
            "run-id": run_id,
            "fraction-train": 1.0,
            "privacy": "local",
            **extra,
        },
        engine=engine,
        faults=faults,
    )


def test_broken_and_crashed_clients_are_dropped_and_the_run_goes_on(small_dataset, feature_cache, tmp_path):
    run_dir = _run(
        small_dataset, feature_cache, tmp_path, "faulty",
        **{"num-server-rounds": 2, "faults": "nan:0 shape:1 missing:2 extra:3 crash:4"},
    )
    rows = read_metrics(run_dir)
    assert len(rows) == 2
    for row in rows:
        assert row["clients-trained"] == 7 and row["clients-rejected"] == 4 and row["clients-failed"] == 1
        assert not row["round-skipped"]
    reasons = sorted(e.body["rejected"] for e in read_ledger(run_dir) if e.kind == "client-round" and "rejected" in e.body)
    assert len(reasons) == 8
    assert any("holds NaN or Inf" in r for r in reasons) and any("has shape" in r for r in reasons)
    assert any("missing arrays" in r for r in reasons) and any("unexpected arrays: injected.weight" in r for r in reasons)
    final = torch.load(run_dir / "checkpoints" / "final.pt")["item_tower"]
    assert all(torch.isfinite(v).all() for v in final.values())
    assert read_summary(run_dir)["final"]["clients-evaluated"] >= 7
    assert audit(run_dir).passed  # the rejected clients' spend is in the ledger too


def test_a_straggler_is_dropped_when_the_round_deadline_passes(small_dataset, feature_cache, tmp_path, monkeypatch):
    """On Flower's engine (clients answer concurrently), the server stops waiting at the
    round's deadline, drops the client that has not answered and goes on with the eleven. Both
    sides are events, not clocks: the deadline passes once every client but one has answered
    (it stands in for ``round-timeout`` seconds, which a busy machine could need for the
    eleven), and the straggler answers only after the server has closed the round."""
    from server import replies

    class AfterAllButOneAnswered(replies.RoundDeadline):
        def passed(self, waiting: int) -> bool:
            return waiting <= 1

    monkeypatch.setattr(replies, "RoundDeadline", AfterAllButOneAnswered)
    run_dir = _run(
        small_dataset, feature_cache, tmp_path, "straggler", "ray", **{"num-server-rounds": 1, "faults": "slow:5", "round-timeout": 3600.0}
    )
    row = read_metrics(run_dir)[0]
    assert row["clients-trained"] == 11 and row["clients-failed"] == 1 and not row["round-skipped"]
    assert read_summary(run_dir)["final"]["clients-evaluated"] == 11  # the straggler's late reply was not counted
    report = audit(run_dir)
    assert report.passed


def test_the_round_deadline_is_round_timeout_seconds_after_the_messages_went_out(monkeypatch):
    from server import replies

    now = [100.0]
    monkeypatch.setattr(replies.time, "monotonic", lambda: now[0])
    deadline = replies.RoundDeadline(60.0)
    now[0] = 159.999
    assert not deadline.passed(waiting=3)
    now[0] = 160.0
    assert deadline.passed(waiting=3)


def test_the_server_pulls_soon_then_at_the_grids_interval(monkeypatch):
    # A stage whose devices answer in a second is not held Flower's fixed 3 s; a long round
    # does not pull more often than the grid's interval once the first waits have doubled up.
    from types import SimpleNamespace

    from server import replies

    class Grid:  # the reply comes at the eighth pull
        def __init__(self, **interval):
            self.pulls = 0
            self.__dict__.update(interval)

        def push_messages(self, messages):
            return ["m1"]

        def pull_messages(self, ids):
            self.pulls += 1
            return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id="m1"))] if self.pulls == 8 else []

    waits = []
    monkeypatch.setattr(replies.time, "sleep", waits.append)
    over_grpc = Grid()
    assert len(replies.send_and_collect(over_grpc, ["message"])) == 1
    assert over_grpc.pulls == 8 and waits == [0.1, 0.2, 0.4, 0.8, 1.6, 3.0, 3.0]
    waits.clear()
    replies.send_and_collect(Grid(pull_interval=0.1), ["message"])  # Flower's in-memory grid
    assert waits == [0.1] * 7


def test_a_round_with_too_few_replies_is_skipped_and_the_model_kept(small_dataset, feature_cache, tmp_path):
    run_dir = _run(small_dataset, feature_cache, tmp_path, "skipped", **{"num-server-rounds": 1, "faults": "crash:4", "min-replies": 12})
    row = read_metrics(run_dir)[0]
    assert row["round-skipped"] and row["clients-trained"] == 11 and row["clients-failed"] == 1
    initial = torch.load(run_dir / "checkpoints" / "initial.pt")["item_tower"]
    final = torch.load(run_dir / "checkpoints" / "final.pt")["item_tower"]
    assert all(torch.equal(initial[k], final[k]) for k in initial)


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    """48 users: enough held-out items that NDCG@10 differences of 0.05 are not noise."""
    from shared.data.synth import SynthConfig, generate

    return generate(tmp_path_factory.mktemp("synth48") / "u48", SynthConfig(users=48, items=200, seed=5, mean_interactions=30))


def test_robust_aggregation_resists_sign_flipped_updates(population, feature_cache, tmp_path):
    """Five of 48 clients send their update times -1000 (a boosted, sign-flipped update).
    FedAvg follows them; FedMedian stays near the clean run."""
    # every client trains every round, so which one evaluates during the rounds changes nothing
    # the figures read (the final evaluation asks all 48): one does
    common = {"num-server-rounds": 3, "privacy": "none", "local-epochs": 2, "fraction-evaluate": 0.01}
    final = {}
    for name, extra in (
        ("clean", {}),
        ("fedavg", {"faults": "flip:0,1,2,3,4"}),
        ("fedmedian", {"faults": "flip:0,1,2,3,4", "strategy": "fedmedian"}),
    ):
        run_dir = _run(population, feature_cache, tmp_path, name, **common, **extra)
        final[name] = read_summary(run_dir)["final"]
    ndcg = {name: f["ndcg@10"] for name, f in final.items()}
    rank = {name: f["rank-percentile"] for name, f in final.items()}  # smoother than NDCG over 48 users
    assert ndcg["fedmedian"] > 0.8 * ndcg["clean"] and ndcg["fedavg"] < 0.6 * ndcg["clean"], ndcg
    assert rank["fedmedian"] == pytest.approx(rank["clean"], abs=0.02), rank
    assert rank["fedavg"] > rank["clean"] + 0.04, rank


def test_trimming_the_byzantine_fraction_or_krum_resists_boosted_updates(population, feature_cache, tmp_path):
    """Five of 48 clients boost their honest update 1000 times (``scale``: model replacement).
    One round; the global model's step (final minus initial, all arrays) against the clean
    run's: FedTrimmedAvg with ``byzantine-fraction`` 0 is FedAvg and follows the five (about
    5 x 1000 / 48 times the step); at 0.2 it drops 9 values from each end of every coordinate,
    the five among them; Krum, told f = 0.2 x 48, serves one honest update."""

    def step(name: str, **extra) -> float:
        run = _run(population, feature_cache, tmp_path, name, **{"num-server-rounds": 1, "privacy": "none", "fraction-evaluate": 0.01}, **extra)
        initial = torch.load(run / "checkpoints" / "initial.pt")["item_tower"]
        final = torch.load(run / "checkpoints" / "final.pt")["item_tower"]
        return float(torch.sqrt(sum(((final[k] - initial[k]).double() ** 2).sum() for k in initial)))

    clean = step("clean")
    boosted = {"faults": "scale:0-4"}
    ratio = {
        "trimmed-0": step("trimmed-0", **boosted, strategy="fedtrimmedavg", **{"byzantine-fraction": 0.0}) / clean,
        "trimmed-0.2": step("trimmed-0.2", **boosted, strategy="fedtrimmedavg", **{"byzantine-fraction": 0.2}) / clean,
        "krum-0.2": step("krum-0.2", **boosted, strategy="krum", **{"byzantine-fraction": 0.2}) / clean,
    }
    # measured: 305, 0.83 and 2.5 (one honest update is longer than the mean of 48, in which
    # their disagreements cancel; a boosted one is 1000 times longer)
    assert ratio["trimmed-0"] > 50, ratio
    assert ratio["trimmed-0.2"] < 1.5 and ratio["krum-0.2"] < 10, ratio


def test_a_fault_spec_names_partitions_one_by_one_or_by_range():
    from shared.faults import parse_faults

    assert parse_faults("nan:0,1 dropinput:3-5,9") == {0: "nan", 1: "nan", 3: "dropinput", 4: "dropinput", 5: "dropinput", 9: "dropinput"}
    with pytest.raises(ValueError, match="the range 5-3 is empty"):
        parse_faults("dropinput:5-3")
    with pytest.raises(ValueError, match="integers or ranges"):
        parse_faults("nan:a")
    with pytest.raises(ValueError, match="KIND one of"):
        parse_faults("melt:1")
