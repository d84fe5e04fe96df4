"""One federated run from start to summary: data, features, strategy, rounds, final evaluation."""

from __future__ import annotations

import time
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, Strategy

from server.rounds import evaluate_nodes, run_rounds
from server.run_directory import RunDirectory, library_versions
from shared.baselines import most_popular
from shared.config import model_spec
from shared.data import leave_last_out, load_dataset
from shared.data.prepare import resolve_data_dir
from shared.features import load_or_compute_features
from shared.ledger import Ledger
from shared.models.recommender import ItemTower


def make_strategy(config: dict[str, Any], num_nodes: int) -> Strategy:
    """FedAvg (default) or FedAdam over the item tower, weighted by local example counts."""
    common = dict(
        fraction_train=config["fraction-train"],
        fraction_evaluate=0.0,  # evaluation is sent by server.rounds to clients that trained
        min_train_nodes=1,
        min_available_nodes=num_nodes,
    )
    if config["strategy"] == "fedadam":
        return FedAdam(**common, eta=config["server-lr"], eta_l=config["lr"])
    return FedAvg(**common)


def ledger_header(config: dict[str, Any], population: int) -> dict[str, Any]:
    """The ledger's header: what is protected, against which neighbour, under which assumptions."""
    return {
        "privacy-unit": "example (one interaction) on each device" if config["dp"] else "none: NOT PRIVATE",
        "neighbouring-relation": "add or remove one interaction of one device's local dataset",
        "delta": config["delta"],
        "delta-rationale": "fixed by the run config; well below 1/n for every device's n",
        "population": population,
        "client-sampling": f"each round a uniform fraction {config['fraction-train']} of clients, without replacement",
        "local-sampling": "Poisson, rate 1/ceil(n / batch-size) (Opacus DPDataLoader)" if config["dp"] else "shuffled batches",
        "accountant": config["accountant"],
        "server-dp": False,
        "epsilon-cap": None,
        "versions": library_versions(),
        "config": config,
    }


def run_federated(grid: Grid, config: dict[str, Any]) -> dict[str, Any]:
    """Run the configured federation and write ``runs/<run-id>/``; return the summary."""
    started = time.time()
    data_dir = resolve_data_dir(config)
    config = {**config, "data-dir": str(data_dir)}
    dataset = load_dataset(data_dir)
    split = leave_last_out(dataset)
    load_or_compute_features(dataset, config["feature-cache"] or None)  # warm the cache once
    num_nodes = len(list(grid.get_node_ids()))
    if num_nodes and num_nodes != len(split.users):
        raise ValueError(
            f"{data_dir}: {len(split.users)} users but {num_nodes} SuperNodes; one client per user: "
            f"run with --federation-config \"num-supernodes={len(split.users)}\""
        )
    run_dir = RunDirectory(config["run-dir"], config["run-id"])
    run_dir.write_json("config.json", config)
    print(f"fedmmrec: run directory {run_dir.path}", flush=True)
    if not config["dp"]:
        print("fedmmrec: WARNING: dp = false: this run is NOT differentially private", flush=True)

    ledger = Ledger(run_dir.path)
    ledger.append([("header", 0, ledger_header(config, len(split.users)))])
    torch.manual_seed(config["seed"])
    tower = ItemTower(model_spec(config))
    initial = ArrayRecord(tower.state_dict())
    strategy = make_strategy(config, len(split.users))
    final_arrays, book, rows = run_rounds(grid, strategy, initial, config, run_dir, ledger)
    ledger_head = ledger.head()[1]
    ledger.close()

    final_eval = evaluate_nodes(grid, sorted(book.rounds_trained), final_arrays, ConfigRecord(dict(config)), 0)
    model_bytes = sum(a.numpy().nbytes for a in final_arrays.values())
    summary = {
        "run-id": run_dir.run_id,
        "final": final_eval,
        "baselines": {"most-popular": most_popular(split)},
        "privacy": {
            "dp": config["dp"],
            "unit": "example-level (one interaction) on each device",
            "delta": config["delta"],
            "accountant": config["accountant"],
            **book.epsilon_stats(),
            "clients-trained": len(book.rounds_trained),
        },
        "communication": {
            "bytes-sent-per-client-per-round": rows[-1]["bytes-sent-per-client"] if rows else 0,
            "item-tower-bytes": model_bytes,
        },
        "dataset": {
            "path": str(data_dir),
            "users": len(split.users),
            "items": dataset.num_items,
            "interactions": dataset.num_interactions,
            "cold-items": len(split.cold_items),
        },
        "ledger-head": ledger_head,
        "rounds": len(rows),
        "wall-seconds": round(time.time() - started, 1),
        "config": config,
        "versions": library_versions(),
    }
    run_dir.save_checkpoint("final.pt", final_arrays.to_torch_state_dict(), {"config": config})
    run_dir.write_json("summary.json", summary)
    pop = summary["baselines"]["most-popular"]
    print(
        f"fedmmrec: final HR@10 {final_eval.get('hr@10', float('nan')):.3f} NDCG@10 "
        f"{final_eval.get('ndcg@10', float('nan')):.3f} over {final_eval.get('clients-evaluated', 0)} clients "
        f"(most-popular HR@10 {pop['hr@10']:.3f} NDCG@10 {pop['ndcg@10']:.3f}); "
        f"epsilon max {summary['privacy']['epsilon-max']:.2f} at delta {config['delta']:g}; "
        f"{summary['communication']['bytes-sent-per-client-per-round'] / 1024:.0f} KiB sent per client per round",
        flush=True,
    )
    print(f"fedmmrec: run directory {run_dir.path}", flush=True)
    return summary
