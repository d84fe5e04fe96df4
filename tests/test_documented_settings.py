"""Run-config values the README documents, each held to what it says: ``privacy = both`` and
``none``, ``accountant = prv``, ``server-lr``. They ask what the server and the devices compute,
so they run on the in-process engine (the real server and ClientApp code in this process)."""

from __future__ import annotations

import json

import pytest
import torch

from server.audit import audit
from shared.run_directory import read_ledger
from simulations.engines.simulate import read_summary, simulate


def _run(small_dataset, feature_cache, tmp_path, run_id: str, **extra):
    return simulate(
        {
            "data-dir": str(small_dataset), "feature-cache": str(feature_cache), "run-dir": str(tmp_path), "run-id": run_id,
            "num-server-rounds": 1, "fraction-train": 1.0, **extra,
        },
        engine="in-process",
    )


def test_privacy_both_spends_in_both_units_and_says_so(small_dataset, feature_cache, tmp_path, capsys):
    run = _run(small_dataset, feature_cache, tmp_path, "both", privacy="both",
               **{"server-noise-multiplier": 5.0, "server-clip-norm": 0.05})
    header = read_ledger(run)[0].body
    assert header["privacy-mode"] == "both" and header["server-dp"] is True
    assert header["privacy-unit"] == "example (one interaction) on each device, and user (all of a device's interactions) at the server"
    (server_round,) = [e.body for e in read_ledger(run) if e.kind == "server-round"]
    assert server_round["server-noise-std"] == pytest.approx(5.0 * 0.05)
    clients = [e.body for e in read_ledger(run) if e.kind == "client-round"]
    assert len(clients) == 12 and all(body["steps"] > 0 for body in clients)  # DP-SGD on every device too
    privacy = read_summary(run)["privacy"]
    assert privacy["mode"] == "both" and privacy["epsilon-max"] > 0
    assert privacy["user-level-epsilon"] == pytest.approx(server_round["user-level-epsilon"], rel=1e-12)
    final_line = [line for line in capsys.readouterr().out.splitlines() if line.startswith("fedmmrec: final")][0]
    assert f"example-level epsilon max {privacy['epsilon-max']:.2f} and user-level epsilon {privacy['user-level-epsilon']:.2f} at delta 1e-05" in final_line
    assert audit(run).passed


def test_privacy_none_is_marked_not_private_everywhere(small_dataset, feature_cache, tmp_path, capsys):
    run = _run(small_dataset, feature_cache, tmp_path, "none", privacy="none")
    out = capsys.readouterr().out
    round_line = [line for line in out.splitlines() if line.startswith("[round 1/1]")][0]
    final_line = [line for line in out.splitlines() if line.startswith("fedmmrec: final")][0]
    assert "NOT PRIVATE" in round_line and "; NOT PRIVATE;" in final_line
    header = read_ledger(run)[0].body
    assert header["privacy-unit"] == "none: NOT PRIVATE" and header["neighbouring-relation"] == "none"
    report = audit(run)
    assert report.guarantee["whom you must trust"] == "NOT PRIVATE: nothing is protected"
    assert report.guarantee["epsilon"] == "none claimed"


def test_accountant_prv_is_what_every_device_claims(small_dataset, feature_cache, tmp_path):
    """Each device's epsilon is Opacus' PRV accountant's for the DP-SGD steps in its state file
    (a fresh accountant here, not the project's helper), and below RDP's bound for the same steps."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    run = _run(small_dataset, feature_cache, tmp_path, "prv", privacy="local", accountant="prv", **{"num-server-rounds": 2})
    assert read_ledger(run)[0].body["accountant"] == "prv"
    claims = []
    for state_file in sorted((run / "devices").glob("partition-*/device-state.json")):
        state = json.loads(state_file.read_text())
        history = [tuple(step) for step in state["history"]]
        prv, rdp = PRVAccountant(), RDPAccountant()
        prv.history, rdp.history = list(history), list(history)
        assert state["epsilon"] == pytest.approx(prv.get_epsilon(delta=1e-5), rel=1e-6), state_file
        assert state["epsilon"] < rdp.get_epsilon(delta=1e-5)
        claims.append(state["epsilon"])
    assert len(claims) == 12
    assert read_summary(run)["privacy"]["epsilon-max"] == pytest.approx(max(claims), rel=1e-9)
    assert audit(run).passed


def test_server_lr_scales_fedadams_step(small_dataset, feature_cache, tmp_path):
    """FedAdam moves the global model by ``server-lr`` times its normalised step: at 0 it stays
    at the initial model exactly; at 0.01 it moves every trained array."""
    moved = {}
    for lr in (0.0, 0.01):
        run = _run(small_dataset, feature_cache, tmp_path, f"adam-{lr}", privacy="none", strategy="fedadam", **{"server-lr": lr})
        initial = torch.load(run / "checkpoints" / "initial.pt")["item_tower"]
        final = torch.load(run / "checkpoints" / "final.pt")["item_tower"]
        moved[lr] = sorted(k for k in initial if not torch.equal(initial[k], final[k]))
    assert moved[0.0] == []
    assert moved[0.01] == sorted(torch.load(run / "checkpoints" / "initial.pt")["item_tower"])
