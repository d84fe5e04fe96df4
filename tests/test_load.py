"""Load: a simulation of 1,000 clients (one SuperNode per user) runs to completion within the
memory it is documented to take (docs/performance.md); the peak of the whole process tree is printed."""

from __future__ import annotations

from shared.data.synth import SynthConfig, generate
from simulations.bench.memory import PeakMemory
from simulations.engines.simulate import read_summary, simulate

GIB = 2**30


def test_a_thousand_clients_run_to_completion(feature_cache, tmp_path):
    data = generate(tmp_path / "u1000", SynthConfig(users=1000, items=200, seed=7, mean_interactions=12))
    with PeakMemory() as peak:
        run_dir = simulate(
            {
                "data-dir": str(data),
                "feature-cache": str(feature_cache),
                "run-dir": str(tmp_path / "runs"),
                "run-id": "load",
                "num-server-rounds": 2,
                "fraction-train": 0.03,
                "fraction-evaluate": 0.5,
                "privacy": "local",
            }
        )
    summary = read_summary(run_dir)
    print(f"1,000 clients, 2 rounds of 30: peak memory {peak.bytes / GIB:.2f} GiB, {summary['wall-seconds']} s")
    assert summary["dataset"]["users"] == 1000 and summary["rounds"] == 2
    assert summary["final"]["clients-evaluated"] >= 30
    # docs/performance.md measures 3.88 GiB for this run on the 2-core machine (two Ray workers);
    # half as much again is a regression, whatever the machine's 24 GB allow.
    assert 0 < peak.bytes < 1.5 * 3.88 * GIB
