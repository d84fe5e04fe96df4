"""A real deployment on one machine: a TLS SuperLink with node authentication and N SuperNodes.

Every part is a real process started the way the README's "Deploy on devices" tells a person
to start it on separate machines: ``flower-superlink`` with TLS and ``--enable-supernode-auth``,
``flwr supernode register`` for each device's public key, ``flower-supernode`` with
``--root-certificates``, ``--auth-supernode-private-key`` and ``--node-config`` naming the
device's own data folder and state folder, then ``flwr run . <connection>``. Used by
``fedmmrec deploy localhost`` (its report: ``simulations/deployment_report.py``) and by the
integration test.

Layout under the work folder::

    keys/            CA, SuperLink certificate, supernode-K/node.{key,pub} (K = N is never registered)
    devices/device-K the device's dataset: the catalog and only its user's interactions
    state/device-K   the device's state: device-state.json, features/ (precomputed catalog features)
    flwr-home/       FLWR_HOME of every process: the CLI's SuperLink connection, installed apps
    logs/            one log per process
    runs/            the run directories the ServerApp writes

Every process is started in its own session and stopped by its process group id, so a failed
test leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.certificates import write_deployment_keys
from shared.data import load_catalog
from shared.data.devices import write_device_folders
from shared.features import load_or_compute_features
from simulations.memory import PeakMemory, process_tree

APP_DIR = Path(__file__).resolve().parents[1]
CONNECTION = "fedmmrec-localhost"


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


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
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
    marker = f"FLWR_HOME={flwr_home}".encode() + b"\0"
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker in (proc / "environ").read_bytes() and _alive(int(proc.name)):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def stop_processes(started: list[subprocess.Popen], flwr_home: str | Path, grace_s: float = 10.0) -> list[int]:
    """Stop ``started`` and every process they started or that carries ``flwr_home``: SIGTERM,
    ``grace_s`` to exit, then SIGKILL; return their ids."""
    pids = []
    for proc in started:
        if proc.poll() is None:
            pids += process_tree(proc.pid)
    pids += [pid for pid in processes_in_home(flwr_home) if pid not in pids]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids + processes_in_home(flwr_home):
        _signal(pid, signal.SIGKILL)
    for proc in started:
        proc.wait()
    deadline = time.time() + 5.0
    while time.time() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    return pids


@dataclass
class RunResult:
    """What ``flwr run`` did, and what the SuperNodes used while it ran."""

    returncode: int
    output: str
    seconds: float
    peak_rss_bytes: dict[int, int] = field(default_factory=dict)  # device index -> bytes (shared pages once per process)
    peak_pss_bytes: dict[int, int] = field(default_factory=dict)  # device index -> bytes (shared pages split)


class LocalhostDeployment:
    """``with LocalhostDeployment(work, data_dir, nodes) as dep: dep.start(); dep.run({...})``."""

    def __init__(self, work: str | Path, data_dir: str | Path, nodes: int = 3, app_dir: str | Path = APP_DIR) -> None:
        self.work = Path(work).resolve()
        self.data_dir = Path(data_dir).resolve()
        self.nodes = nodes
        self.app_dir = Path(app_dir).resolve()
        self.superlink_port, *self.node_ports = free_ports(1 + nodes + 1)
        self.processes: dict[str, subprocess.Popen] = {}
        self.node_ids: list[int] = []
        self.env = {
            **os.environ,
            "FLWR_HOME": str(self.work / "flwr-home"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }

    # -- set-up ---------------------------------------------------------------------------
    @property
    def keys(self) -> Path:
        return self.work / "keys"

    def device_dir(self, k: int) -> Path:
        return self.work / "devices" / f"device-{k}"

    def state_dir(self, k: int) -> Path:
        return self.work / "state" / f"device-{k}"

    def prepare(self) -> None:
        """Keys (one more than the nodes: the last is never registered), device folders, the
        precomputed catalog features on each device, and the CLI's SuperLink connection."""
        if not (self.keys / "ca.crt").exists():
            write_deployment_keys(self.keys, ["localhost", "127.0.0.1"], self.nodes + 1)
        if not self.device_dir(0).exists():
            write_device_folders(self.data_dir, self.work / "devices", self.nodes)
        catalog_cache = self.work / "catalog-features"
        load_or_compute_features(load_catalog(self.data_dir), catalog_cache, progress=False)
        for k in range(self.nodes):
            features = self.state_dir(k) / "features"
            features.mkdir(parents=True, exist_ok=True)
            for npz in catalog_cache.glob("*.npz"):
                if not (features / npz.name).exists():
                    shutil.copyfile(npz, features / npz.name)
        home = self.work / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.superlink_port}"\nroot-certificates = "{self.keys / "ca.crt"}"\n',
            encoding="utf-8",
        )
        (self.work / "logs").mkdir(parents=True, exist_ok=True)

    def _spawn(self, name: str, command: list[str], cwd: Path | None = None) -> subprocess.Popen:
        log = (self.work / "logs" / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=cwd or self.work, start_new_session=True
        )
        log.close()
        self.processes[name] = proc
        return proc

    def log_text(self, name: str) -> str:
        path = self.work / "logs" / f"{name}.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def superlink_command(self) -> list[str]:
        return [
            "flower-superlink",
            "--ssl-ca-certfile", str(self.keys / "ca.crt"),
            "--ssl-certfile", str(self.keys / "superlink.crt"),
            "--ssl-keyfile", str(self.keys / "superlink.key"),
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            "--port", str(self.superlink_port),
            "--database", str(self.work / "superlink.db"),
        ]

    def supernode_command(self, k: int, extra: list[str] | None = None) -> list[str]:
        node_config = (
            f'data-dir="{self.device_dir(min(k, self.nodes - 1))}" state-dir="{self.state_dir(k)}" '
            f'auth-key="{self.keys / f"supernode-{k}" / "node.key"}"'
        )
        return [
            "flower-supernode",
            "--superlink", f"127.0.0.1:{self.superlink_port}",
            "--root-certificates", str(self.keys / "ca.crt"),
            "--auth-supernode-private-key", str(self.keys / f"supernode-{k}" / "node.key"),
            "--port", str(self.node_ports[k]),
            "--node-config", node_config,
            *(extra or []),
        ]

    def _flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run(["flwr", *args], env=self.env, cwd=self.app_dir, capture_output=True, text=True, timeout=timeout)

    def register(self, k: int) -> tuple[int | None, str]:
        """``flwr supernode register`` device K's public key: (node id or None, CLI message)."""
        reply = self._flwr("supernode", "register", str(self.keys / f"supernode-{k}" / "node.pub"), CONNECTION, "--format", "json")
        text = reply.stdout + reply.stderr
        try:
            answer = json.loads(reply.stdout[reply.stdout.index("{"):])
        except ValueError:
            return None, text
        return (int(answer["node-id"]), text) if answer.get("success") else (None, str(answer.get("error-message", text)))

    def start(self, timeout: float = 60.0) -> None:
        """Prepare, start the SuperLink, register the first ``nodes`` keys, start the SuperNodes."""
        self.prepare()
        self._spawn("superlink", self.superlink_command())
        deadline = time.time() + timeout
        while True:  # the Control API answers once the SuperLink is up
            self._check_alive("superlink")
            node_id, message = self.register(0)
            if node_id is not None:
                self.node_ids.append(node_id)
                break
            if time.time() > deadline:
                raise RuntimeError(f"SuperLink did not accept registrations within {timeout:.0f} s: {message}\n{self.log_text('superlink')[-3000:]}")
            time.sleep(0.5)
        for k in range(1, self.nodes):
            node_id, message = self.register(k)
            if node_id is None:
                raise RuntimeError(f"registering supernode-{k} failed: {message}")
            self.node_ids.append(node_id)
        for k in range(self.nodes):
            self._spawn(f"supernode-{k}", self.supernode_command(k))

    def _check_alive(self, name: str) -> None:
        if self.processes[name].poll() is not None:
            raise RuntimeError(f"{name} exited with {self.processes[name].returncode}:\n{self.log_text(name)[-3000:]}")

    # -- use ------------------------------------------------------------------------------
    def run(self, run_config: dict[str, Any], timeout: float = 600.0) -> RunResult:
        """``flwr run <app> <connection> --stream`` with ``deployment = true``; measures each
        SuperNode's peak resident memory (its ClientApp processes included) meanwhile."""
        config = {"deployment": True, "data-dir": str(self.data_dir), "run-dir": str(self.work / "runs"),
                  "feature-cache": str(self.work / "catalog-features"), "min-nodes": self.nodes, **run_config}
        roots = {k: self.processes[f"supernode-{k}"].pid for k in range(self.nodes)}
        peaks = {k: (PeakMemory(0.2, root), PeakMemory(0.2, root, proportional=True)) for k, root in roots.items()}
        started = time.time()
        with contextlib.ExitStack() as sampling:
            for pair in peaks.values():
                for peak in pair:
                    sampling.enter_context(peak)
            reply = self._flwr("run", str(self.app_dir), CONNECTION, "--run-config", toml_run_config(config), "--stream", timeout=timeout)
        return RunResult(reply.returncode, reply.stdout + reply.stderr, time.time() - started,
                         {k: rss.bytes for k, (rss, _) in peaks.items()}, {k: pss.bytes for k, (_, pss) in peaks.items()})

    def node_status(self, k: int) -> str:
        """Device K's status at the SuperLink (``online``, ``offline``, ``registered``)."""
        reply = self._flwr("supernode", "list", CONNECTION, "--format", "json")
        nodes = json.loads(reply.stdout[reply.stdout.index("{"):]).get("nodes", [])
        return next((n["status"] for n in nodes if int(n["node-id"]) == self.node_ids[k]), "unknown")

    def restart_supernode(self, k: int, hard: bool = False, timeout: float = 120.0) -> None:
        """Stop SuperNode K (SIGTERM: it signs off; ``hard``: SIGKILL, as a power cut, after which
        the SuperLink keeps it online until two heartbeats are missed, up to a minute), wait
        until the SuperLink sees it offline, and start it again with the same key and folders."""
        proc = self.processes[f"supernode-{k}"]
        tree = process_tree(proc.pid)
        _signal(proc.pid, signal.SIGKILL if hard else signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        for pid in tree:
            _signal(pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + timeout
        while self.node_status(k) == "online":
            if time.time() > deadline:
                raise RuntimeError(f"supernode-{k} still online at the SuperLink {timeout:.0f} s after it stopped")
            time.sleep(1.0)
        self._spawn(f"supernode-{k}", self.supernode_command(k))

    def try_unregistered_node(self, timeout: float = 60.0) -> tuple[int, str]:
        """Start a SuperNode whose key was never registered; return its exit code and log."""
        k = self.nodes
        proc = self._spawn(f"supernode-{k}-unregistered", self.supernode_command(k, ["--max-retries", "2", "--max-wait-time", "20"]))
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        return proc.poll() if proc.poll() is not None else -1, self.log_text(f"supernode-{k}-unregistered")

    # -- tear-down ------------------------------------------------------------------------
    def leftover_pids(self) -> list[int]:
        """Live processes that inherited this deployment's ``FLWR_HOME`` (all of ours do)."""
        return processes_in_home(self.env["FLWR_HOME"])

    def stop(self, grace_s: float = 10.0) -> list[int]:
        """Stop every process started here, and every process those started (SuperExec and
        ClientApp processes detach into sessions of their own), by process id; return them."""
        return stop_processes(list(self.processes.values()), self.env["FLWR_HOME"], grace_s)

    def __enter__(self) -> "LocalhostDeployment":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
