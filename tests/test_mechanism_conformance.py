"""Device DP-SGD that lies about its noise is caught from the update norms the server measured.

The lying devices are the real client with its DP-SGD step loop run at another noise (the
``nonoise`` and ``lownoise`` faults of simulations/engines/faults.py) while its reply and the ledger
claim the configured mechanism; on both engines."""

from __future__ import annotations

import pytest

from server.audit import audit, run_audit
from shared.run_directory import read_ledger
from simulations.engines.simulate import simulate


def _local(small_dataset, feature_cache, tmp_path, run_id: str, faults: str = "", **extra):
    return simulate(
        {
            "data-dir": str(small_dataset), "feature-cache": str(feature_cache), "run-dir": str(tmp_path), "run-id": run_id,
            "privacy": "local", "num-server-rounds": 1, "fraction-train": 1.0, **extra,
        },
        faults=faults,
    )


@pytest.mark.parametrize("engine", ["fast", "opacus"])
def test_devices_without_or_with_a_tenth_of_the_noise_fail_the_audit(small_dataset, feature_cache, tmp_path, engine):
    run_dir = _local(small_dataset, feature_cache, tmp_path, f"lying-{engine}", faults="nonoise:1 lownoise:2", **{"dp-engine": engine})
    entries = [e.body for e in read_ledger(run_dir) if e.kind == "client-round"]
    assert len(entries) == 12 and {e["noise-multiplier"] for e in entries} == {0.8}  # every claim the same
    report = audit(run_dir)
    problems = report.failures["noise-conformance"]
    assert len(problems) == 2 and all("round 1: update norm" in p for p in problems)
    assert not report.failures["epsilon-recomputed"]  # the accounting itself is consistent
    assert run_audit(run_dir) == 1


def test_honest_devices_pass_and_the_report_states_the_checks_power(small_dataset, feature_cache, tmp_path):
    report = audit(_local(small_dataset, feature_cache, tmp_path, "honest"))
    assert report.passed, report.failures
    assert report.figures["noise conformance"].startswith("device DP-SGD (12 updates): an update fails when its noise is below")


def test_a_server_that_rescales_and_re_signs_the_devices_norms_is_caught_by_its_own_checkpoints(
    small_dataset, feature_cache, tmp_path, rewritten_ledger
):
    """Every device adds a tenth of the noise it claims; the server (holding the simulated
    devices' keys) rewrites each signed update norm to the size the claim gives and re-signs it,
    so every per-update check passes. The checkpoints are the evidence the rewrite cannot
    reach: FedAvg's final model moved far less than the devices' claimed noise implies."""
    import math

    import numpy as np

    from server.audit.conformance import device_bounds
    from server.mechanisms.dp_fedavg.noise import flatten
    from shared.privacy.spend_signature import KEY_FILE, load_or_create_key, sign
    from shared.run_directory import RunDirectory

    run_dir = simulate(
        {"data-dir": str(small_dataset), "feature-cache": str(feature_cache), "run-dir": str(tmp_path), "run-id": "quiet",
         "privacy": "local", "num-server-rounds": 2, "fraction-train": 1.0},
        faults="lownoise:0-11", engine="in-process",
    )
    config = next(e.body for e in read_ledger(run_dir) if e.kind == "header")["config"]
    assert len(audit(run_dir).failures["noise-conformance"]) >= 20  # the updates themselves, before the rewrite

    def rescaled(kind, round_, body):
        if kind == "client-round":
            claimed = device_bounds(body, config, 1e-6)[0] * math.sqrt(int(body["update-dimension"]))
            body["update-norm"] = body["measured-update-norm"] = claimed
            key = load_or_create_key(run_dir / "devices" / body["identity"] / KEY_FILE)
            body["signature"] = sign(key, {**body, "round": round_})
        return body

    copy = rewritten_ledger(run_dir, rescaled)
    report = audit(copy)
    run = RunDirectory.open(copy)
    moved = float(np.linalg.norm(flatten(run.load_checkpoint(run.final_checkpoint())["item_tower"]).astype(np.float64)
                                 - flatten(run.load_checkpoint(run.round_checkpoint(0))["item_tower"]).astype(np.float64)))
    [problem] = report.failures["noise-conformance"]
    assert problem.startswith(f"final minus initial model (2 FedAvg rounds of device DP-SGD): norm {moved:.4g} outside [")
    assert problem.split(" for ")[1].startswith("the devices' claimed noise, averaged (noise alone ")
    assert report.failures["spend-signed"] == [] and report.failures["epsilon-recomputed"] == []
