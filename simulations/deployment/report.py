"""``fedmmrec deploy localhost``: run a :class:`~simulations.deployment.localhost.LocalhostDeployment`
end to end and report what a deployment engineer checks: the SuperLink's port and registered
nodes, that an unregistered node is refused, the run's outcome and time, each SuperNode's peak
memory, the payload per client per round, and that no process is left behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.run_directory import RunDirectory
from simulations.deployment.localhost import LocalhostDeployment


def device_consent(run_config: dict[str, Any]) -> dict[str, str]:
    """One operator plays both sides on localhost: a run that has the devices send their
    statistics in the clear (``user-noise = central``) needs each device's own consent in its
    node config, which a real device gives itself (or not)."""
    return {"user-noise": "central"} if str(run_config.get("user-noise", "")) == "central" else {}


def deploy_localhost(work: str | Path, nodes: int, data_dir: str | Path = "", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start everything, show that an unregistered node is refused, run the app, stop
    everything; print and return a report (also written to ``<work>/deployment.json``)."""
    from shared.config import resolve
    from shared.data.prepare import resolve_data_dir

    data = Path(data_dir) if data_dir else resolve_data_dir(resolve())
    run_config = {"num-server-rounds": 2, "fraction-train": 1.0, **(overrides or {})}
    with LocalhostDeployment(work, data, nodes, node_settings=device_consent(run_config)) as dep:
        dep.start()
        print(f"fedmmrec: SuperLink (TLS, node authentication) on 127.0.0.1:{dep.superlink_port}; "
              f"registered SuperNodes {dep.node_ids}", flush=True)
        code, log = dep.try_unregistered_node()
        refused = code != 0 and "Failed to activate SuperNode" in log
        print(f"fedmmrec: unregistered SuperNode {'refused' if refused else 'NOT refused'} (exit code {code})", flush=True)
        result = dep.run(run_config)
        print(result.output, flush=True)
        pids = dep.stop()
        leftover = dep.leftover_pids()
    report = {
        "superlink-port": dep.superlink_port,
        "registered-node-ids": dep.node_ids,
        "unregistered-node-refused": refused,
        "run-returncode": result.returncode,
        "run-seconds": round(result.seconds, 1),
        "supernode-peak-rss-mb": {k: round(v / 2**20) for k, v in result.peak_rss_bytes.items()},
        "supernode-peak-pss-mb": {k: round(v / 2**20) for k, v in result.peak_pss_bytes.items()},
        **_traffic(Path(work) / "runs"),
        "stopped-pids": pids,
        "leftover-pids": leftover,
    }
    (Path(work) / "deployment.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps(report, indent=2))
    return report


def _traffic(runs: Path) -> dict[str, Any]:
    """Payload bytes per client of the newest run, round by round (or release by release) and
    in all (TLS and HTTP framing excluded): a default-mode run sends most in its co-occurrence
    release, not its last."""
    found = [RunDirectory.open(p) for p in runs.iterdir() if p.is_dir()] if runs.is_dir() else []
    found = sorted((run for run in found if run.metrics_path.is_file()), key=lambda run: run.metrics_path.stat().st_mtime)
    if not found:
        return {}
    rows = found[-1].read_metrics()

    def by_round(key: str) -> list[float | None]:
        return [row.get(key) for row in rows]

    sent, received = by_round("bytes-sent-per-client"), by_round("bytes-received-per-client")
    return {
        "run-dir": str(found[-1].path),
        "bytes-sent-per-client-by-round": sent,
        "bytes-sent-per-client-total": sum(v for v in sent if v is not None),
        "bytes-received-per-client-by-round": received,
        "bytes-received-per-client-total": sum(v for v in received if v is not None),
    }
