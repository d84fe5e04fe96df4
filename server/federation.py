"""One federated run from start to summary: data, features, strategy, rounds, final evaluation."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian, FedTrimmedAvg, Krum, Strategy

from server.canaries import CanarySet, read_canaries
from server.central_dp import CentralDP, ServerDP, flatten
from server.book import ResumePoint, RoundBook
from server.rounds import evaluate_nodes, run_rounds
from server.run_directory import RunDirectory, library_versions, read_jsonl
from shared.baselines import most_popular
from shared.config import DEFAULTS, central_dp, local_dp, model_spec
from shared.data import Dataset, LeaveLastOutSplit, load_catalog, load_dataset, split_for
from shared.data.prepare import resolve_data_dir
from shared.features import load_or_compute_features
from shared.ledger import LEDGER_NAME, Ledger, read_entries, verify_chain
from shared.models.recommender import ItemTower


def make_strategy(config: dict[str, Any], num_nodes: int) -> Strategy:
    """Flower's FedAvg (default), FedAdam, or a robust rule (FedMedian, FedTrimmedAvg, Krum)."""
    common = dict(
        fraction_train=config["fraction-train"],
        fraction_evaluate=0.0,  # evaluation is sent by server.rounds to clients that trained
        min_train_nodes=1,
        min_available_nodes=num_nodes,
    )
    expected = max(1, int(config["fraction-train"] * num_nodes))
    if config["strategy"] == "fedadam":
        return FedAdam(**common, eta=config["server-lr"], eta_l=config["lr"], tau=config["server-tau"])
    if config["strategy"] == "fedmedian":
        return FedMedian(**common)
    if config["strategy"] == "fedtrimmedavg":
        return FedTrimmedAvg(**common, beta=config["byzantine-fraction"])
    if config["strategy"] == "krum":
        return Krum(**common, num_malicious_nodes=int(config["byzantine-fraction"] * expected))
    return FedAvg(**common)


PRIVACY_UNITS = {
    "user": "user (all of one device's interactions), at the server",
    "local": "example (one interaction) on each device",
    "central": "user (all of one device's interactions), at the server",
    "both": "example (one interaction) on each device, and user (all of a device's interactions) at the server",
    "none": "none: NOT PRIVATE",
}


NEIGHBOURS = {
    "user": "add or remove one user (a device and all its data) from the population",
    "local": "add or remove one interaction of one device's local dataset",
    "central": "add or remove one user (a device and all its data) from the population",
    "both": "local DP: add or remove one interaction of one device; central DP: add or remove one user",
    "none": "none",
}


def ledger_header(config: dict[str, Any], population: int, canary_commitment: str | None) -> dict[str, Any]:
    """The ledger's header: what is protected, against which neighbour, under which assumptions."""
    header = {
        "privacy-mode": config["privacy"],
        "privacy-unit": PRIVACY_UNITS[config["privacy"]],
        "neighbouring-relation": NEIGHBOURS[config["privacy"]],
        "delta": config["delta"],
        "delta-rationale": f"fixed by the run config; below 1/population (1/{population}) and below 1/n for every device's n",
        "population": population,
        "client-sampling": (
            f"Poisson: each client independently with probability {config['fraction-train']} each round (OS entropy)"
            if central_dp(config)
            else f"each round a uniform fraction {config['fraction-train']} of clients, without replacement; "
            "clients at their cap are replaced by others not yet asked"
        ),
        "local-sampling": "Poisson, rate 1/ceil(n / batch-size) (Opacus DPDataLoader)" if local_dp(config) else "shuffled batches",
        "accountant": config["accountant"],
        "epsilon-cap": config["epsilon-cap"] or None,
        "server-dp": central_dp(config),
        "versions": library_versions(),
        "config": {k: (str(v) if isinstance(v, float) and not np.isfinite(v) else v) for k, v in config.items()},
    }
    if config["privacy"] == "user":
        from server.user_level import noise_stds, planned_releases

        header.update(
            {
                "client-sampling": "every device, once per release (full participation)",
                "local-sampling": "none: each device sends one statistic of all its interactions per release",
                "user-level-mechanism": "Gaussian releases of sensitivity 1: (1) the sum of unit-norm interaction "
                "vectors, (2) the sum of unit-Frobenius co-occurrence matrices over the cooccurrence-items most "
                "popular items of release 1, (3) with selection-budget-share > 0, the sum of unit-norm vectors of "
                "reciprocal ranks of each device's most recent interaction under candidate weightings; each "
                "contribution clipped to L2 norm 1 by the server",
                "user-level-releases": [
                    {"release": n, "noise-std": std} for n, std in zip(planned_releases(config), noise_stds(config))
                ],
                "user-level-accounting": "composition of Gaussian mechanisms, exact in mu-GDP (mu^2 = sum 1/std^2), "
                "cross-checked by dp-accounting PLD",
                "user-epsilon": config["user-epsilon"] if config["user-epsilon"] != float("inf") else -1.0,
                "trust": "the server adds the noise and sees each contribution (central DP); contributions are "
                "fixed-size vectors that secure aggregation could sum",
            }
        )
    if central_dp(config):
        header.update(
            {
                "server-mechanism": "DP-FedAvg: clip each update to server-clip-norm, equal weights, Gaussian noise "
                "std server-noise-multiplier * server-clip-norm on the sum, divided by the expected count "
                "fraction-train * population",
                "server-accounting": "sampled Gaussian mechanism (Poisson rate fraction-train, noise multiplier "
                "server-noise-multiplier) composed over the rounds run",
                "server-epsilon-cap": config["server-epsilon-cap"] or None,
                "canaries": config["canaries"],
                "canary-commitment": canary_commitment,
            }
        )
    return header


def make_server_dp(
    config: dict[str, Any], population: int, initial: ArrayRecord, canaries: CanarySet | None = None
) -> ServerDP | None:
    """The server-side mechanism when ``privacy`` is ``central`` or ``both``, else None."""
    if not central_dp(config):
        return None
    mechanism = CentralDP(
        clip_norm=config["server-clip-norm"],
        noise_multiplier=config["server-noise-multiplier"],
        sample_rate=config["fraction-train"],
        population=population,
    )
    if canaries is None and config["canaries"]:
        canaries = CanarySet.draw(config["canaries"], flatten(initial).size)
    return ServerDP(mechanism, config["delta"], config["accountant"], config["server-epsilon-cap"], canaries)


def resumed_config(config: dict[str, Any]) -> dict[str, Any]:
    """A resumed run keeps its saved config; only ``num-server-rounds`` may change (a value
    other than the default raises or lowers the total)."""
    path = Path(config["resume"]).resolve() / "config.json"
    if not path.is_file():
        raise ValueError(f"resume: {path} not found: not a run directory")
    saved = json.loads(path.read_text(encoding="utf-8"))
    rounds = config["num-server-rounds"]
    if rounds == DEFAULTS["num-server-rounds"]:
        rounds = saved["num-server-rounds"]
    return {**saved, "num-server-rounds": rounds, "resume": config["resume"]}


def resume_point(run_dir: RunDirectory, entries: list) -> ResumePoint:
    """The last round the ledger committed, with its checkpoint; drops later, uncommitted rows."""
    problems = verify_chain(entries)
    if problems:
        raise ValueError(f"{run_dir.path / LEDGER_NAME}: cannot resume: the ledger does not verify: {problems[0]}")
    rounds = [e.round for e in entries if e.kind == "server-round"]
    last = rounds[-1] if rounds else 0
    name = f"round-{last:04d}.pt" if last else "initial.pt"
    path = run_dir.path / "checkpoints" / name
    if not path.is_file():
        raise ValueError(f"{path}: missing: cannot resume after round {last}")
    saved = torch.load(path, map_location="cpu")
    for jsonl in ("metrics.jsonl", "clients.jsonl"):
        kept = [row for row in read_jsonl(run_dir.path / jsonl, lenient_tail=True) if row["round"] <= last]
        run_dir.rewrite_jsonl(jsonl, kept)
    rows = read_jsonl(run_dir.path / "metrics.jsonl")
    return ResumePoint(
        round=last,
        arrays=ArrayRecord(saved["item_tower"]),
        strategy_state=saved["meta"].get("strategy", {}) if last else {},
        book=RoundBook.from_ledger(entries),
        rows=rows,
    )


NODE_WAIT_S = 600.0


def _population(grid: Grid, config: dict[str, Any], data_dir: Path) -> tuple[Dataset, LeaveLastOutSplit | None, int]:
    """The catalog, the split (simulation only) and the number of clients.

    Simulation: the server's dataset holds every user, one SuperNode each. Deployment: the
    server holds only the public catalog; the clients are the SuperNodes connected when the
    run starts (at least ``min-nodes``), and what they hold never reaches the server.
    """
    if config["deployment"]:
        dataset = load_catalog(data_dir)
        deadline = time.time() + NODE_WAIT_S
        while (num_nodes := len(list(grid.get_node_ids()))) < config["min-nodes"]:
            if time.time() > deadline:
                raise RuntimeError(f"only {num_nodes} SuperNode(s) connected after {NODE_WAIT_S:.0f} s; min-nodes = {config['min-nodes']}")
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


def run_federated(grid: Grid, config: dict[str, Any]) -> dict[str, Any]:
    """Run the configured federation and write ``runs/<run-id>/``; return the summary.

    With ``resume`` set, continue that run directory from the last round its ledger committed.
    """
    started = time.time()
    if config["resume"]:
        config = resumed_config(config)
    data_dir = resolve_data_dir(config)
    config = {**config, "data-dir": str(data_dir)}
    dataset, split, num_clients = _population(grid, config, data_dir)
    load_or_compute_features(dataset, config["feature-cache"] or None)  # warm the cache once
    if config["resume"]:
        resume_dir = Path(config["resume"]).resolve()
        run_dir = RunDirectory(resume_dir.parent, resume_dir.name, resume=True)
        config = {**config, "run-dir": str(resume_dir.parent), "run-id": resume_dir.name}
    else:
        run_dir = RunDirectory(config["run-dir"], config["run-id"])
    # Simulated devices keep their state (accountant history, embedding) on disk, so a resumed
    # run continues every client's spend; a real device uses its node config's state-dir.
    config["device-state-dir"] = config["device-state-dir"] or str(run_dir.path / "devices")
    if not config["resume"]:
        run_dir.write_json("config.json", config)
    print(f"fedmmrec: run directory {run_dir.path}", flush=True)
    if config["privacy"] == "none":
        print("fedmmrec: WARNING: privacy = none: this run is NOT differentially private", flush=True)

    torch.manual_seed(config["seed"])
    initial = ArrayRecord(ItemTower(model_spec(config, dataset.num_items)).state_dict())
    resume = None
    if config["resume"]:
        resume = resume_point(run_dir, read_entries(run_dir.path))
        initial = resume.arrays
        canaries = read_canaries(run_dir.path)[0] if config["canaries"] else None
        server_dp = make_server_dp(config, num_clients, initial, canaries)
        ledger = Ledger(run_dir.path)
        ledger.append([("resume", resume.round, {"after-round": resume.round, "rounds-total": config["num-server-rounds"]})])
        print(f"fedmmrec: resuming after round {resume.round} of {config['num-server-rounds']}", flush=True)
    else:
        if config["privacy"] != "user":
            run_dir.save_checkpoint("initial.pt", initial.to_torch_state_dict(), {"round": 0})
        server_dp = make_server_dp(config, num_clients, initial)
        commitment = server_dp.canaries.write(run_dir.path) if server_dp and server_dp.canaries else None
        ledger = Ledger(run_dir.path)
        ledger.append([("header", 0, ledger_header(config, num_clients, commitment))])
    if config["privacy"] == "user":
        final_eval, rows, user_epsilon = _run_user_level(grid, config, dataset, split, run_dir, ledger)
        book, final_arrays = RoundBook(), initial
    else:
        strategy = make_strategy(config, num_clients)
        final_arrays, book, rows = run_rounds(grid, strategy, initial, config, run_dir, ledger, server_dp, resume=resume)
        user_epsilon = rows[-1].get("user-level-epsilon") if rows and server_dp else None
    ledger_head = ledger.head()[1]
    ledger.close()

    if config["privacy"] != "user":
        final_eval = evaluate_nodes(grid, book.evaluation_pool(list(grid.get_node_ids())), final_arrays, ConfigRecord(dict(config)), 0)
    model_bytes = sum(a.numpy().nbytes for a in final_arrays.values())
    summary = {
        "run-id": run_dir.run_id,
        "final": final_eval,
        "baselines": {"most-popular": most_popular(split)} if split else {},
        "privacy": {
            "mode": config["privacy"],
            "unit": PRIVACY_UNITS[config["privacy"]],
            "delta": config["delta"],
            "accountant": config["accountant"],
            **book.epsilon_stats(),
            "user-level-epsilon": user_epsilon,
            "clients-trained": len(book.rounds_trained) if config["privacy"] != "user" else rows[-1]["clients-trained"],
        },
        "communication": {
            "bytes-sent-per-client-per-round": max(row["bytes-sent-per-client"] for row in rows) if rows else 0,
            "item-tower-bytes": model_bytes,
        },
        "dataset": {
            "path": str(data_dir),
            "users": num_clients,
            "items": dataset.num_items,
            "interactions": dataset.num_interactions if split else None,
            "cold-items": len(split.cold_items) if split else None,
        },
        "ledger-head": ledger_head,
        "rounds": len(rows),
        "wall-seconds": round(time.time() - started, 1),
        "config": config,
        "versions": library_versions(),
    }
    if config["privacy"] != "user":  # a user-level run serves model.npz; it trains no item tower
        run_dir.save_checkpoint("final.pt", final_arrays.to_torch_state_dict(), {"config": config})
    run_dir.write_json("summary.json", summary)
    pop = summary["baselines"].get("most-popular")
    print(
        f"fedmmrec: final HR@10 {final_eval.get('hr@10', float('nan')):.3f} NDCG@10 "
        f"{final_eval.get('ndcg@10', float('nan')):.3f} over {final_eval.get('clients-evaluated', 0)} clients "
        + (f"(most-popular HR@10 {pop['hr@10']:.3f} NDCG@10 {pop['ndcg@10']:.3f}); " if pop else "; ")
        + 
        f"{_privacy_line(summary['privacy'], config)}; "
        f"{summary['communication']['bytes-sent-per-client-per-round'] / 1024:.0f} KiB sent per client per round",
        flush=True,
    )
    print(f"fedmmrec: run directory {run_dir.path}", flush=True)
    return summary


def _run_user_level(grid: Grid, config: dict[str, Any], dataset: Dataset, split, run_dir: RunDirectory, ledger: Ledger):
    """``privacy = user``: the two releases, the model, the evaluation (server.user_level)."""
    from server.user_level import run_user_level

    if config["resume"]:
        raise ValueError("privacy = user: a run of two releases is not resumed; start a new run (it spends a new budget)")
    known = np.ones(dataset.num_items, dtype=bool)
    if split is not None:
        known[split.held_out_items] = False  # items that do not exist yet (cold-start protocol)
    features = load_or_compute_features(dataset, config["feature-cache"] or None, progress=False)
    nodes = sorted(grid.get_node_ids())

    def evaluate(arrays: ArrayRecord, server_round: int) -> dict[str, float]:
        return evaluate_nodes(grid, nodes, arrays, ConfigRecord(dict(config)), server_round)

    return run_user_level(grid, config, features, known, run_dir, ledger, evaluate)


def _privacy_line(privacy: dict[str, Any], config: dict[str, Any]) -> str:
    parts = []
    if config["privacy"] == "user" and privacy["user-level-epsilon"] is not None:
        epsilon = privacy["user-level-epsilon"]
        return ("NOT PRIVATE (user-epsilon = inf)" if epsilon == float("inf") else f"user-level epsilon {epsilon:.2f}") + (
            f" at delta {config['delta']:g}"
        )
    if local_dp(config):
        parts.append(f"example-level epsilon max {privacy['epsilon-max']:.2f}")
    if central_dp(config) and privacy["user-level-epsilon"] is not None:
        parts.append(f"user-level epsilon {privacy['user-level-epsilon']:.2f}")
    if not parts:
        return "NOT PRIVATE"
    return " and ".join(parts) + f" at delta {config['delta']:g}"
