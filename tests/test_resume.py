"""A server killed mid-run resumes from the last round its ledger committed: same final round
count, every round once, a ledger that still verifies, and clients whose privacy spend
continued (their state is on disk) so the audit passes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from server.audit import audit
from server.run_directory import read_metrics
from shared.ledger import read_entries, verify_chain
from simulations.simulate import read_summary, simulate

ROOT = Path(__file__).resolve().parents[1]


def _kill_after_round(command: list[str], metrics: Path, rounds: int, timeout: float = 600) -> None:
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and process.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= rounds:
                break
            time.sleep(0.2)
        assert process.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the server and every process it started
        process.wait()


def test_a_killed_run_resumes_to_the_same_final_round(small_dataset, feature_cache, tmp_path):
    run_dir = tmp_path / "crashy"
    settings = {
        "data-dir": small_dataset, "feature-cache": feature_cache, "run-dir": tmp_path, "run-id": "crashy",
        "num-server-rounds": 4, "fraction-train": 0.5, "privacy": "local",
    }
    command = [sys.executable, "-m", "simulations.cli", "run"]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    _kill_after_round(command, run_dir / "metrics.jsonl", rounds=2)
    assert not (run_dir / "summary.json").exists()
    done_before = max(e.round for e in read_entries(run_dir) if e.kind == "server-round")
    assert 2 <= done_before < 4

    simulate({"resume": str(run_dir)})

    entries = read_entries(run_dir)
    assert not verify_chain(entries)
    assert [e.round for e in entries if e.kind == "server-round"] == [1, 2, 3, 4]
    assert [e.body["after-round"] for e in entries if e.kind == "resume"] == [done_before]
    assert [row["round"] for row in read_metrics(run_dir)] == [1, 2, 3, 4]
    assert read_summary(run_dir)["rounds"] == 4
    report = audit(run_dir)
    assert report.passed, report.failures  # epsilon kept growing across the restart
    assert report.figures["resumed"] == f"after round {done_before}"
