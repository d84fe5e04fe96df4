"""``fedmmrec run`` on Flower's supported path: a SuperLink of its own in simulation mode, then
``flwr run <app> <connection> --stream``, then everything stopped.

Flower 1.41 marks ``flwr.simulation.run_simulation`` deprecated; the supported way to simulate
is ``flwr run`` against a SuperLink started with ``--simulation``. ``flwr run .`` starts a
shared one on fixed ports and leaves it running after the run; this one listens on ports the
OS reports free and keeps its state in a temporary ``FLWR_HOME``, so two runs on one machine
never meet, and :meth:`LocalSimulation.stop` leaves nothing running (the SuperLink, the
simulation process it starts, and Ray's workers), whether the run ended, failed or was
interrupted with Ctrl-C; if ``fedmmrec`` itself is killed (SIGKILL, no handler runs), a guard
process does the same. The run's console output is the ServerApp's own lines (one per round
or release, the run directory at the end); Flower's own log lines are shown with ``verbose``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TextIO

from simulations.deployment.localhost import APP_DIR
from simulations.engines.flower_processes import flower_environment, free_ports, start_guard, stop_processes, toml_run_config, write_connection

CONNECTION = "fedmmrec-simulation"
FLOWER_LOG_LINE = re.compile(r"^((DEBUG|INFO|WARNING)\s*:|\d\d/\d\d/\d{4} [\d:]+:(DEBUG|INFO|WARNING):)")
RAY_ACTOR_PREFIX = re.compile(r"^\(\w+ pid=\d+(, ip=[\d.]+)?\)\s*")  # Ray forwards a ClientApp actor's log lines with it
FLOWER_CLI_LINES = ("Using SuperLink:", "Successfully started run", "Successfully installed", "Starting logstream")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def shown(line: str, verbose: bool) -> bool:
    """Whether a line of ``flwr run --stream`` reaches the console: Flower's own INFO and
    WARNING lines (also as Ray forwards them from a ClientApp actor) and its CLI's notes only
    with ``verbose``; everything else (the ServerApp's
    lines, errors, tracebacks) always."""
    if verbose:
        return True
    plain = RAY_ACTOR_PREFIX.sub("", ANSI.sub("", line))
    return not (FLOWER_LOG_LINE.match(plain) or plain.startswith(FLOWER_CLI_LINES))


class LocalSimulation:
    """``with LocalSimulation() as link: link.start(); link.run(config, num_supernodes)``."""

    def __init__(self, app_dir: str | Path = APP_DIR, verbose: bool = False) -> None:
        self.app_dir = Path(app_dir).resolve()
        self.verbose = verbose
        self.work = Path(tempfile.mkdtemp(prefix="fedmmrec-superlink-"))
        self.home = self.work / "flwr-home"
        self.port, self.control_port, self.fleet_port, self.health_port = free_ports(4)
        self.processes: list[subprocess.Popen] = []
        self.guard: subprocess.Popen | None = None
        self.run_id: int | None = None
        self.env = flower_environment(
            self.home,
            RAY_DEDUP_LOGS="0",
            PYTHONWARNINGS="ignore::FutureWarning",  # Ray's note on accelerator variables, every run
        )

    @property
    def log(self) -> Path:
        return self.work / "superlink.log"

    def start(self, timeout: float = 60.0) -> None:
        """Start the SuperLink and wait until its HTTP API answers; and a guard that stops
        everything and removes the temporary home if this process is killed (SIGKILL leaves it
        no handler)."""
        self.guard = start_guard(self.home, self.work)
        write_connection(self.home, CONNECTION, self.port)
        command = [
            "flower-superlink", "--insecure", "--simulation", "--isolation", "subprocess",
            "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--control-api-address", f"127.0.0.1:{self.control_port}",
            "--fleet-api-address", f"127.0.0.1:{self.fleet_port}",
            "--health-server-address", f"127.0.0.1:{self.health_port}",
        ]
        with self.log.open("wb") as log:
            self.processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.work,
                                                   start_new_session=True))
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self.processes[0].poll() is not None:
                raise RuntimeError(f"the local SuperLink exited with {self.processes[0].returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local SuperLink did not answer within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1.0) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-chars:] if self.log.exists() else ""

    def run(self, run_config: dict[str, Any], num_supernodes: int, out: TextIO | None = None) -> int:
        """``flwr run`` the app with ``run_config`` on ``num_supernodes`` simulated SuperNodes,
        its logs streamed to ``out`` (filtered by :func:`shown`); return its exit code."""
        out = out or sys.stdout
        command = [
            "flwr", "run", str(self.app_dir), CONNECTION, "--run-config", toml_run_config(run_config),
            "--federation-config", f"num-supernodes={int(num_supernodes)}", "--stream",
        ]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env, cwd=self.app_dir,
                                text=True, errors="replace")
        self.processes.append(proc)
        assert proc.stdout is not None
        for line in proc.stdout:
            started = re.search(r"Successfully started run (\d+)", ANSI.sub("", line))
            if started:
                self.run_id = int(started.group(1))
            if shown(line, self.verbose):
                out.write(line)
                out.flush()
        return proc.wait()

    def stop_run(self) -> None:
        """Ask the SuperLink to stop the run (on Ctrl-C), before the processes are stopped."""
        if self.run_id is not None and self.processes and self.processes[0].poll() is None:
            try:
                subprocess.run(["flwr", "stop", str(self.run_id), CONNECTION], env=self.env, cwd=self.app_dir,
                               capture_output=True, timeout=30)
            except subprocess.TimeoutExpired:
                pass  # stop() ends the processes whatever the SuperLink said

    def stop(self) -> list[int]:
        """Stop every process started here and every one they started; remove the temporary home."""
        pids = stop_processes(self.processes, self.home, grace_s=10.0)
        shutil.rmtree(self.work, ignore_errors=True)
        if self.guard is not None:  # nothing left for it to do
            self.guard.kill()
            self.guard.wait()
        return pids

    def __enter__(self) -> "LocalSimulation":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
