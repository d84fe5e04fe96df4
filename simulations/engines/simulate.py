"""Run the Flower app as a simulation (one SuperNode per user), on one of three engines.

- ``superlink`` (what ``fedmmrec run`` uses): Flower's supported path, ``flwr run`` against a
  SuperLink of its own in simulation mode (:mod:`simulations.engines.local_superlink`), stopped after.
- ``ray``: Flower's simulation engine through ``flwr.simulation.run_simulation`` (deprecated in
  Flower 1.41) in this process. What the tests and studies use where they need to reach into
  the run: another ClientApp (benchmarks, the fault-injecting one), a patched server clock,
  and one Ray cluster for a whole test session.
- ``in-process``: :mod:`simulations.engines.in_process`, the same server and ClientApp code with the
  devices called one after another, for questions of what is computed.

All three know the number of users before they start the SuperNodes and take run-config
overrides as typed values.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from shared.config import resolve
from shared.data import load_dataset, split_for
from shared.data.prepare import resolve_data_dir
from shared.run_directory import RunDirectory


ENGINES = ("superlink", "ray", "in-process")


def ray_init_args() -> dict[str, Any]:
    """How the simulation starts Ray: a cluster of this machine's cores, or, with ``RAY_ADDRESS``
    set (``ray start`` prints it), the running Ray cluster there, whose nodes all host
    ClientApp actors (docs/ray-cluster.md)."""
    if os.environ.get("RAY_ADDRESS"):
        return {"address": os.environ["RAY_ADDRESS"]}
    return {"num_cpus": os.cpu_count() or 1}


def simulate(
    overrides: dict[str, Any] | None = None, quiet: bool = True, client_app=None, engine: str = "ray", faults: str = ""
) -> Path:
    """Run one federated simulation; return its run directory (``client_app``: another
    ClientApp, for benchmarks). ``engine``: Flower's simulation engine (``ray``, what
    the tests use), ``superlink`` (``flwr run`` against a SuperLink of its own: what ``fedmmrec
    run`` uses; the app's own ClientApp only) or ``in-process`` (:mod:`simulations.engines.in_process`:
    the same server and ClientApp code in this process, devices one after another, no round
    timeouts). ``faults``:
    partitions that misbehave (:mod:`simulations.engines.faults`; test machinery, never in the run
    config or a message)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from client.client_app import app as real_client_app

    if engine == "superlink" and (faults or client_app is not None):
        raise ValueError("the superlink engine runs the app's own ClientApp (pyproject.toml); faults or another ClientApp need engine ray")

    client_app = client_app or real_client_app
    from server.server_app import build_server_app

    config = resolve(None, overrides)
    if faults:
        from shared.faults import parse_faults

        parse_faults(faults)  # a bad spec fails here, before Flower starts
    from server.mechanisms import mechanism_for

    mechanism_for(config)  # the privacy settings fail here, before Flower starts
    if config.run.resume:  # continue a run directory: its saved config names the data and the id
        resume_dir = Path(config.run.resume).resolve()
        saved = RunDirectory.open(resume_dir).read_config()
        from server.resume import current_data_dir

        config = config.replace(  # the data the run trains on now, unless new data is given
            data_dir=config.data.data_dir or current_data_dir(RunDirectory.open(resume_dir), saved),
            run_dir=str(resume_dir.parent), run_id=resume_dir.name,
            **{key.replace("-", "_"): saved[key] for key in ("cold-start-items", "evaluate-on", "time-cut", "seed") if key in saved},
        )
    data_dir = resolve_data_dir(config)
    users = len(split_for(load_dataset(data_dir), config).users)
    config = config.replace(
        run_id=config.run.run_id or time.strftime("%Y%m%d-%H%M%S"),
        data_dir=str(data_dir),
        run_dir=str(Path(config.run.run_dir).resolve()),
    )
    if quiet:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    if faults:
        from simulations.engines.faults import fault_app

        client_app = fault_app(faults, Path(config.run.run_dir) / config.run.run_id, float(config.federation.round_timeout))
    if engine == "in-process":
        from server.federation import run_federated
        from simulations.engines.in_process import InProcessGrid

        run_federated(InProcessGrid(client_app, users), resolve(None, config.flat()))
    elif engine == "superlink":
        from simulations.engines.local_superlink import LocalSimulation

        with LocalSimulation(verbose=not quiet) as link:
            link.start()
            try:
                code = link.run(config.flat(), users)
            except KeyboardInterrupt:
                link.stop_run()
                raise
            if code != 0:
                print(f"fedmmrec: flwr run exited with {code}; the local SuperLink's log ends:\n{link.log_tail()}", flush=True)
    else:
        from flwr.simulation import run_simulation

        run_simulation(
            server_app=build_server_app(config.flat()),
            client_app=client_app,
            num_supernodes=users,
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": ray_init_args()},
        )
    run_dir = Path(config.run.run_dir) / config.run.run_id
    if not run_dir.is_dir() or not RunDirectory.open(run_dir).has_summary():
        raise RuntimeError(f"{run_dir}: the simulation ended without a summary; see the log above")
    return run_dir


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    return RunDirectory.open(run_dir).read_summary()
