"""Device DP-SGD that lies about its noise is caught from the update norms the server measured.

The lying devices are the real client with its DP-SGD step loop run at another noise (the
``nonoise`` and ``lownoise`` faults of simulations/faults.py) while its reply and the ledger
claim the configured mechanism; on both engines."""

from __future__ import annotations

import pytest

from server.audit import audit, run_audit
from shared.run_directory import read_ledger
from simulations.simulate import simulate


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
