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
from shared.privacy.ledger import verify_chain
from shared.run_directory import read_ledger, read_metrics
from simulations.engines.simulate import read_summary, simulate

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
        "num-server-rounds": 4, "fraction-train": 0.5, "privacy": "local", "fraction-evaluate": 0.0,
    }
    # Flower's in-process engine: the server runs in the process group the test kills (on the
    # default superlink engine it is the SuperLink's simulation process, in a session of its own)
    command = [sys.executable, "-m", "simulations.cli", "run", "--engine", "ray"]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    _kill_after_round(command, run_dir / "metrics.jsonl", rounds=2)
    assert not (run_dir / "summary.json").exists()
    done_before = max(e.round for e in read_ledger(run_dir) if e.kind == "server-round")
    assert 2 <= done_before < 4

    # The rest of the run needs no process to kill: the in-process engine (the same server and
    # ClientApp code) continues it from the run directory, which is all a resume reads.
    simulate({"resume": str(run_dir)}, engine="in-process")

    entries = read_ledger(run_dir)
    assert not verify_chain(entries)
    assert [e.round for e in entries if e.kind == "server-round"] == [1, 2, 3, 4]
    assert [e.body["after-round"] for e in entries if e.kind == "resume"] == [done_before]
    assert [row["round"] for row in read_metrics(run_dir)] == [1, 2, 3, 4]
    assert read_summary(run_dir)["rounds"] == 4
    report = audit(run_dir)
    assert report.passed, report.failures  # epsilon kept growing across the restart
    assert report.figures["resumed"] == f"after round {done_before}"


def _run_then_lose_a_device(small_dataset, feature_cache, tmp_path, run_id: str) -> Path:
    run_dir = simulate(
        {
            "data-dir": str(small_dataset), "feature-cache": str(feature_cache), "run-dir": str(tmp_path), "run-id": run_id,
            "privacy": "local", "num-server-rounds": 2, "fraction-train": 1.0,
        },
        engine="in-process",  # what the server and devices compute; the kill above needs processes
    )
    (run_dir / "devices" / "partition-3" / "device-state.json").unlink()  # the device lost its state
    simulate({"resume": str(run_dir), "num-server-rounds": 3}, engine="in-process")
    return run_dir


def test_a_device_that_lost_its_state_cannot_spend_a_fresh_budget(small_dataset, feature_cache, tmp_path):
    run_dir = _run_then_lose_a_device(small_dataset, feature_cache, tmp_path, "lost")
    third = [e.body for e in read_ledger(run_dir) if e.kind == "client-round" and e.round == 3]
    rejected = [b for b in third if b.get("rejected")]
    assert len(rejected) == 1 and rejected[0]["identity"] == "partition-3"
    assert "lost its state and may not train on a fresh budget" in rejected[0]["rejected"]
    assert read_metrics(run_dir)[-1]["clients-trained"] == 11
    report = audit(run_dir)
    assert report.passed, report.failures


def test_a_server_that_lets_it_count_fails_the_audit(small_dataset, feature_cache, tmp_path, monkeypatch):
    from server.book import RoundBook

    monkeypatch.setattr(RoundBook, "state_loss", lambda self, entry: None)
    run_dir = _run_then_lose_a_device(small_dataset, feature_cache, tmp_path, "lenient")
    problems = audit(run_dir).failures["identity-budget"]
    assert any(p.startswith("round 3: partition-3 counted as") and "a fresh budget" in p for p in problems)
    assert "13 clients counted for a population of 12" in problems
