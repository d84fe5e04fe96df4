"""Everything a run decides before its first round: the config (a resumed run's saved one),
the data and population, the run directory, the ledger and its header, the initial model,
and the aggregation mechanism, chosen once."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ArrayRecord
from flwr.serverapp import Grid

from server.aggregation import Aggregator
from server.book import ResumePoint
from server.mechanisms import PrivacyMechanism, mechanism_for
from server.resume import data_change, grown_arrays, resume_point, resumed_config
from shared.config import RunConfig
from shared.data import (
    Dataset,
    LeaveLastOutSplit,
    load_catalog,
    load_dataset,
    split_for,
)
from shared.data.prepare import resolve_data_dir
from shared.features import load_or_compute_features
from shared.models.recommender import ItemTower, model_spec
from shared.privacy.canaries import read_canaries
from shared.privacy.ledger import Ledger
from shared.run_directory import RunDirectory

NODE_WAIT_S = 600.0


@dataclass
class RunSetup:
    config: RunConfig
    dataset: Dataset
    split: LeaveLastOutSplit | None  # None in a deployment: the server holds no interactions
    population: int
    run_dir: RunDirectory
    ledger: Ledger
    initial: ArrayRecord
    mechanism: PrivacyMechanism
    aggregator: Aggregator | None  # None for a mechanism of releases, not rounds
    resume: ResumePoint | None


def population(grid: Grid, config: RunConfig, data_dir: Path) -> tuple[Dataset, LeaveLastOutSplit | None, int]:
    """The catalog, the split (simulation only) and the number of clients.

    Simulation: the server's dataset holds every user, one SuperNode each. Deployment: the
    server holds only the public catalog; the clients are the SuperNodes connected when the
    run starts (at least ``min-nodes``), and what they hold never reaches the server.
    """
    if config.federation.deployment:
        dataset = load_catalog(data_dir)
        deadline = time.time() + NODE_WAIT_S
        while (num_nodes := len(list(grid.get_node_ids()))) < config.federation.min_nodes:
            if time.time() > deadline:
                raise RuntimeError(f"only {num_nodes} SuperNode(s) connected after {NODE_WAIT_S:.0f} s; min-nodes = {config.federation.min_nodes}")
            time.sleep(1.0)
        print(f"fedmmrec: deployment: {num_nodes} SuperNodes connected", flush=True)
        return dataset, None, num_nodes
    dataset = load_dataset(data_dir)
    split = split_for(dataset, config)
    num_nodes = len(list(grid.get_node_ids()))
    if num_nodes and num_nodes != len(split.users):
        raise ValueError(
            f"{data_dir}: {len(split.users)} users but {num_nodes} SuperNodes; one client per user: "
            f"run with --federation-config \"num-supernodes={len(split.users)}\" (or deployment = true)"
        )
    return dataset, split, len(split.users)


def open_run_directory(config: RunConfig) -> tuple[RunDirectory, RunConfig]:
    """A new run directory, or the one ``resume`` names; the config with its location."""
    if not config.run.resume:
        return RunDirectory(config.run.run_dir, config.run.run_id), config
    resume_dir = Path(config.run.resume).resolve()
    run_dir = RunDirectory(resume_dir.parent, resume_dir.name, resume=True)
    return run_dir, config.replace(run_dir=str(resume_dir.parent), run_id=resume_dir.name)


def set_up(grid: Grid, config: RunConfig) -> RunSetup:
    if config.run.resume:
        config = resumed_config(config)
    mechanism = mechanism_for(config)  # the settings it reads are checked before anything is written
    if config.run.resume and not mechanism.resumable:
        raise ValueError(f"privacy = {config.privacy.privacy}: a run of releases is not resumed; start a new run (it spends a new budget)")
    data_dir = resolve_data_dir(config)
    config = config.replace(data_dir=str(data_dir))
    dataset, split, num_clients = population(grid, config, data_dir)
    load_or_compute_features(dataset, config.data.feature_cache or None)  # warm the cache once
    run_dir, config = open_run_directory(config)
    # Simulated devices keep their state (accountant history, embedding) on disk, so a resumed
    # run continues every client's spend; a real device uses its node config's state-dir.
    config = config.replace(device_state_dir=config.run.device_state_dir or str(run_dir.devices))
    if not config.run.resume:
        run_dir.write_config(config.flat())
    print(f"fedmmrec: run directory {run_dir.path}", flush=True)
    if mechanism.warning:
        print(f"fedmmrec: WARNING: {mechanism.warning}", flush=True)
    torch.manual_seed(config.run.seed)
    initial = ArrayRecord(ItemTower(model_spec(config, dataset.num_items)).state_dict())
    ledger, resume, aggregator = run_dir.open_ledger(), None, None
    if config.run.resume:
        resume = resume_point(run_dir)
        change = data_change(run_dir, config, dataset, num_clients)
        initial = grown_arrays(resume.arrays, dataset.num_items) if change else resume.arrays
        canaries = read_canaries(run_dir.canaries_path)[0] if config.privacy.canaries else None
        entries = [("resume", resume.round, {"after-round": resume.round, "rounds-total": config.federation.num_server_rounds})]
        ledger.append(entries + ([("data", resume.round, change)] if change else []))
        if change:
            print(f"fedmmrec: continuing on {config.data.data_dir}: {change['new-items']} new items, "
                  f"{change['new-interactions']} new interactions, {change['new-users']} new users", flush=True)
        print(f"fedmmrec: resuming after round {resume.round} of {config.federation.num_server_rounds}", flush=True)
    mechanism = mechanism_for(config)  # with the run directory's settings (data-dir, device-state-dir)
    aggregator = mechanism.aggregator(num_clients, initial, canaries if resume else None)
    if resume and aggregator:
        aggregator.restore(resume.strategy_state)
    if not resume:
        if aggregator:
            run_dir.save_checkpoint("initial.pt", initial.to_torch_state_dict(), {"round": 0})
        canaries = getattr(aggregator, "canaries", None)
        commitment = canaries.write(run_dir.canaries_path) if canaries else None
        ledger.append([("header", 0, mechanism.header(num_clients, commitment))])
    return RunSetup(config, dataset, split, num_clients, run_dir, ledger, initial, mechanism, aggregator, resume)
