"""Flower processes this project starts on one machine (a local simulation's SuperLink, a
localhost deployment's SuperLink and SuperNodes): their environment, the CLI's connection to
them, their ports, their run config, and stopping every one of them.

Every such process carries its own ``FLWR_HOME``, and so does every process it starts (also
those that detach into sessions of their own), which is how :func:`stop_processes` finds them
all: nothing is left running after a run, a failed test or a Ctrl-C.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from simulations.bench.memory import process_tree


def flower_environment(flwr_home: str | Path, **extra: str) -> dict[str, str]:
    """This process's environment for a Flower process with its own ``flwr_home``: this
    interpreter's scripts first on ``PATH`` (``flwr``, ``flower-superlink``), no runtime
    installation of the app's dependencies (they are installed already; installing would reach
    the network), no model hub, unbuffered output (its logs are read while it runs)."""
    return {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def write_connection(flwr_home: str | Path, name: str, port: int, root_certificates: str | Path | None = None) -> None:
    """The Flower CLI's connection ``name`` (its default) to a SuperLink on localhost ``port``:
    over TLS with ``root_certificates``, else insecure."""
    home = Path(flwr_home)
    home.mkdir(parents=True, exist_ok=True)
    security = f'root-certificates = "{root_certificates}"' if root_certificates is not None else "insecure = true"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "127.0.0.1:{port}"\n{security}\n',
        encoding="utf-8",
    )


def free_ports(count: int) -> list[int]:
    """Ports the OS reports free now (bound to port 0 together, so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def send_signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def toml_value(value: Any) -> str:
    """``value`` as TOML writes it: JSON's strings, numbers and booleans, except the
    non-finite floats (``user-epsilon = inf`` is a documented setting), which JSON cannot say."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return json.dumps(value)


def toml_run_config(config: dict[str, Any]) -> str:
    """``--run-config`` text: ``key=value`` pairs with TOML values."""
    return " ".join(f"{key}={toml_value(value)}" for key, value in config.items())


def processes_in_home(flwr_home: str | Path) -> list[int]:
    """Live processes started with ``FLWR_HOME=flwr_home`` (every process a SuperLink or
    SuperNode of ours starts inherits it, also those that detach into sessions of their own)."""
    marker = b"\0" + f"FLWR_HOME={flwr_home}".encode() + b"\0"  # the whole variable, not a suffix of another's
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker in b"\0" + (proc / "environ").read_bytes() and alive(int(proc.name)):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def stop_processes(started: list[subprocess.Popen], flwr_home: str | Path, grace_s: float = 10.0) -> list[int]:
    """Stop ``started`` and every process they started or that carries ``flwr_home``: SIGTERM,
    ``grace_s`` to exit, then SIGKILL; return their ids. Each signal goes to processes found
    at that moment (a process id seen earlier may belong to another program by then)."""

    def ours() -> list[int]:
        found = [pid for proc in started if proc.poll() is None for pid in process_tree(proc.pid)]
        return found + [pid for pid in processes_in_home(flwr_home) if pid not in found]

    pids = ours()
    for pid in pids:
        send_signal(pid, signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline and ours():
        time.sleep(0.1)
    for pid in ours():
        send_signal(pid, signal.SIGKILL)
    for proc in started:
        proc.wait()
    deadline = time.time() + 5.0
    while time.time() < deadline and processes_in_home(flwr_home):
        time.sleep(0.1)
    return pids


def start_guard(flwr_home: str | Path, work: str | Path) -> subprocess.Popen:
    """A guard process that, once this process has ended however it ended (SIGKILL included,
    which leaves this process no handler), stops every process carrying ``flwr_home`` and removes
    ``work``. A SuperLink that merely ends with its parent is not enough: the simulation process
    it starts (and that process's Ray cluster) lives on after it. Stop the guard with
    ``kill()`` once everything is stopped the ordinary way."""
    command = [sys.executable, "-m", "simulations.engines.flower_processes", "guard", str(os.getpid()), str(flwr_home), str(work)]
    env = {key: value for key, value in os.environ.items() if key != "FLWR_HOME"}  # not one of the processes it stops
    app_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [app_root, env.get("PYTHONPATH")]))
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)


def _guard(parent: int, flwr_home: Path, work: Path) -> None:
    """The guard's body: once ``parent`` has ended (this process is handed to another parent,
    looked at once a second), clean up after it."""
    while os.getppid() == parent:
        time.sleep(1.0)
    stop_processes([], flwr_home, grace_s=10.0)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "guard":
    _guard(int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
