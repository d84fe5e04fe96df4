"""``fedmmrec run`` on Flower's supported path (``flwr run`` against a SuperLink of its own):
the same console lines and the same figures as Flower's deprecated ``run_simulation`` engine on
the same seed, no DEPRECATED line, nothing left running after it returns, and Ctrl-C stopping
the run and every process it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulations.engines.flower_processes import processes_in_home, stop_processes, toml_run_config, toml_value
from simulations.engines.local_superlink import shown
from simulations.engines.simulate import read_summary, simulate

ROOT = Path(__file__).resolve().parents[1]


def test_run_config_values_are_written_as_toml():
    assert [toml_value(v) for v in (8.0, float("inf"), float("-inf"), 3, True, 'a "b"')] == ["8.0", "inf", "-inf", "3", "true", '"a \\"b\\""']
    assert toml_run_config({"user-epsilon": float("inf"), "run-id": "x"}) == 'user-epsilon=inf run-id="x"'


def test_flowers_own_log_lines_are_shown_only_when_verbose():
    flower = ["\x1b[92mINFO \x1b[0m:      Starting Flower Simulation\n", "\x1b[93mWARNING \x1b[0m:   Since flwr 1.32, ...\n",
              "Successfully started run 7307951444070098347\n", "Using SuperLink: fedmmrec-simulation (127.0.0.1:1)\n",
              "\x1b[36m(ClientAppActor pid=22511)\x1b[0m \x1b[93mWARNING \x1b[0m:   Manually terminating ClientAppActor\n",
              "\x1b[36m(ClientAppActor pid=19193)\x1b[0m 12/04/2026 04:52:57:WARNING:Manually terminating ClientAppActor\n"]
    ours = ["[round 1/3] popularity release: 12 devices, ...\n", "fedmmrec: run directory runs/x\n",
            "\x1b[91mERROR \x1b[0m:     ServerApp raised an exception\n", "Traceback (most recent call last):\n",
            "\x1b[36m(ClientAppActor pid=7)\x1b[0m \x1b[91mERROR \x1b[0m:     ClientApp raised an exception\n"]
    assert [shown(line, verbose=False) for line in flower + ours] == [False] * 6 + [True] * 5
    assert all(shown(line, verbose=True) for line in flower)


def _as_from_a_terminal() -> None:
    """SIGINT at its default, as a shell gives a foreground command: a pytest-xdist worker
    ignores it, and a child inherits an ignored signal (Python then never raises
    KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli_run(small_dataset, feature_cache, tmp_path, run_id: str, **extra) -> subprocess.Popen:
    """``fedmmrec run`` (noiseless: the same figures on every engine) as a user starts it, its
    temporary SuperLink home under ``tmp_path`` so that the test can look for what is left."""
    settings = {"data-dir": small_dataset, "feature-cache": feature_cache, "run-dir": tmp_path / "runs", "run-id": run_id,
                "cooccurrence-items": 60, "user-epsilon": "inf", **extra}
    command = [sys.executable, "-m", "simulations.cli", "run"]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    env = {**os.environ, "TMPDIR": str(tmp_path), "RAY_TMPDIR": "/tmp"}  # Ray's socket paths must stay short
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_as_from_a_terminal)


def _simulating(tmp_path: Path) -> bool:
    """Whether a run's SuperLink has started its simulation process (the run was submitted)."""
    for home in _homes(tmp_path):
        for pid in processes_in_home(home):
            try:
                if b"flwr-simulation" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return True
            except OSError:
                continue
    return False


def _homes(tmp_path: Path) -> list[Path]:
    return [p / "flwr-home" for p in tmp_path.glob("fedmmrec-superlink-*")]


def test_fedmmrec_run_goes_through_flwr_run_and_leaves_nothing_running(small_dataset, feature_cache, tmp_path):
    proc = _cli_run(small_dataset, feature_cache, tmp_path, "supported")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("[round")] == [
        "[round 1/3] popularity release", "[round 2/3] cooccurrence release", "[round 3/3] selection release"]
    # the run's own last line is its directory (a line Ray forwards late may follow it)
    assert [line for line in lines if line.startswith("fedmmrec:")][-1] == f"fedmmrec: run directory {tmp_path / 'runs' / 'supported'}"
    assert "DEPRECATED" not in out + err and "Starting Flower Simulation" not in out
    assert _homes(tmp_path) == []  # the temporary SuperLink home is gone
    # the same seed on Flower's deprecated in-process entry point gives the same figures
    reference = simulate({"data-dir": str(small_dataset), "feature-cache": str(feature_cache), "run-dir": str(tmp_path / "runs"),
                          "run-id": "reference", "cooccurrence-items": 60, "user-epsilon": float("inf")}, engine="ray")
    supported = read_summary(tmp_path / "runs" / "supported")["final"]
    # (means over devices summed in the order replies arrive: equal to the last bits)
    assert supported == pytest.approx(read_summary(reference)["final"], rel=1e-12, abs=1e-15)
    assert supported["clients-evaluated"] == 12


def test_ctrl_c_stops_the_run_and_every_process_it_started(small_dataset, feature_cache, tmp_path):
    # The run cannot end by itself: as a deployment it waits for 13 SuperNodes and the simulation
    # has 12. So Ctrl-C comes while it runs, however slow the machine (no race with its end).
    proc = _cli_run(small_dataset, feature_cache, tmp_path, "interrupted", deployment="true", **{"min-nodes": 13})
    try:
        deadline = time.monotonic() + 600  # a guard against a hang, not the event waited for
        while not _simulating(tmp_path):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its simulation started"
            time.sleep(0.2)
        homes = _homes(tmp_path)
        assert len(homes) == 1 and processes_in_home(homes[0])  # the SuperLink and its simulation run
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the foreground process group
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, out[-3000:] + err[-3000:]
        assert "fedmmrec: interrupted; the run and every process it started are stopped" in err
        assert processes_in_home(homes[0]) == [] and not homes[0].exists()
    finally:  # whatever failed above, leave nothing running
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for home in _homes(tmp_path):
            stop_processes([], home, grace_s=0.0)


def test_the_superlink_engine_refuses_faults_which_need_a_clientapp_in_this_process(small_dataset, capsys):
    from simulations.cli import main

    assert main(["run", "--engine", "superlink", "--faults", "crash:1", "--set", f"data-dir={small_dataset}"]) == 2
    assert "faults or another ClientApp need engine ray" in capsys.readouterr().err


def test_a_killed_fedmmrec_leaves_neither_its_superlink_nor_its_home(tmp_path):
    # SIGKILL leaves fedmmrec no handler to stop anything: its guard process does it.
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from simulations.engines.local_superlink import LocalSimulation\n"
         "link = LocalSimulation()\n"
         "link.start()\n"
         "print(link.home, flush=True)\n"
         "time.sleep(600)\n"],
        cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp_path)}, stdout=subprocess.PIPE, text=True, start_new_session=True)
    home = None
    try:
        home = Path(parent.stdout.readline().strip())  # printed once the SuperLink answers
        assert home.name == "flwr-home" and processes_in_home(home)  # the SuperLink and its SuperExec
        parent.kill()  # this process only, not its group: as `kill -9 <pid>` does
        parent.wait()
        deadline = time.monotonic() + 60  # a guard against a hang, not the event waited for
        while processes_in_home(home) or home.parent.exists():
            assert time.monotonic() < deadline, "the SuperLink or its home outlived the process that started it"
            time.sleep(0.1)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if home is not None:
            stop_processes([], home, grace_s=0.0)
