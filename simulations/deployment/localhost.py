"""A real deployment on one machine: a TLS SuperLink with node authentication and N SuperNodes.

Every part is a real process started the way the README's "Deploy on devices" tells a person
to start it on separate machines: ``flower-superlink`` with TLS and ``--enable-supernode-auth``,
``flwr supernode register`` for each device's public key, ``flower-supernode`` with
``--root-certificates``, ``--auth-supernode-private-key`` and ``--node-config`` naming the
device's own data folder and state folder, then ``flwr run . <connection>``. Used by
``fedmmrec deploy localhost`` (its report: ``simulations/deployment/report.py``) and by the
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
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.certificates import write_deployment_keys
from shared.secure_sum.identity import provision
from shared.data import load_catalog
from shared.data.devices import write_device_folders
from shared.features import load_or_compute_features
from simulations.engines.flower_processes import (
    flower_environment,
    free_ports,
    processes_in_home,
    send_signal,
    stop_processes,
    toml_run_config,
    write_connection,
)
from simulations.bench.memory import PeakMemory, process_tree

APP_DIR = Path(__file__).resolve().parents[2]
CONNECTION = "fedmmrec-localhost"


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

    def __init__(
        self, work: str | Path, data_dir: str | Path, nodes: int = 3, app_dir: str | Path = APP_DIR, node_settings: dict[str, str] | None = None,
    ) -> None:
        self.node_settings = dict(node_settings or {})  # more node config for every SuperNode (the devices' own choices)
        self.work = Path(work).resolve()
        self.data_dir = Path(data_dir).resolve()
        self.nodes = nodes
        self.app_dir = Path(app_dir).resolve()
        self.superlink_port, *self.node_ports = free_ports(1 + nodes + 1)
        self.processes: dict[str, subprocess.Popen] = {}
        self.node_ids: list[int] = []
        self.env = flower_environment(self.work / "flwr-home")

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
        # Each device makes its own identity key in its own state folder; the roster of their
        # public halves is the operator's (kept with the deployment's keys, never the SuperLink's).
        provision([self.state_dir(k) for k in range(self.nodes)], self.keys / "roster.json")  # the registered devices
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
        write_connection(self.work / "flwr-home", CONNECTION, self.superlink_port, root_certificates=self.keys / "ca.crt")
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
            f'auth-key="{self.keys / f"supernode-{k}" / "node.key"}" '
            f'identity-key="{self.state_dir(k) / "identity-key.pem"}" roster="{self.keys / "roster.json"}"'
            + "".join(f' {key}="{value}"' for key, value in self.node_settings.items())
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
                  "feature-cache": str(self.work / "catalog-features"), "min-nodes": self.nodes,
                  "secure-roster": str(self.keys / "roster.json"), **run_config}
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
        send_signal(proc.pid, signal.SIGKILL if hard else signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        for pid in tree:
            send_signal(pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + timeout
        while self.node_status(k) == "online":
            if time.time() > deadline:
                raise RuntimeError(f"supernode-{k} still online at the SuperLink {timeout:.0f} s after it stopped")
            time.sleep(1.0)
        self._spawn(f"supernode-{k}", self.supernode_command(k))

    def start_unregistered_node(self) -> subprocess.Popen:
        """Start a SuperNode whose key was never registered (the SuperLink must refuse it); it
        gives up after two retries. Other work can go on meanwhile."""
        k = self.nodes
        return self._spawn(f"supernode-{k}-unregistered", self.supernode_command(k, ["--max-retries", "2", "--max-wait-time", "20"]))

    def unregistered_node_outcome(self, proc: subprocess.Popen, timeout: float = 60.0) -> tuple[int, str]:
        """The unregistered SuperNode's exit code (-1: still running after ``timeout``) and log."""
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        return proc.poll() if proc.poll() is not None else -1, self.log_text(f"supernode-{self.nodes}-unregistered")

    def try_unregistered_node(self, timeout: float = 60.0) -> tuple[int, str]:
        """Start a SuperNode whose key was never registered; return its exit code and log."""
        return self.unregistered_node_outcome(self.start_unregistered_node(), timeout)

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
