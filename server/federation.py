"""One federated run from start to summary: set up, train (rounds or releases), evaluate, summarise."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp import Grid

from server.book import RoundBook
from server.recorder import RoundRecorder
from server.rounds import evaluate_nodes, run_rounds
from server.run_setup import RunSetup, set_up
from server.summary import final_line, run_summary
from shared.config import RunConfig
from shared.features import load_or_compute_features


def run_federated(grid: Grid, config: RunConfig) -> dict[str, Any]:
    """Run the configured federation and write ``runs/<run-id>/``; return the summary.

    With ``resume`` set, continue that run directory from the last round its ledger committed.
    """
    started = time.time()
    setup = set_up(grid, config)
    config, run_dir = setup.config, setup.run_dir
    if setup.aggregator is None:  # privacy = user: three releases, no rounds
        final_eval, rows, user_epsilon = _run_user_level(grid, setup)
        book, final_arrays = RoundBook(), setup.initial
    else:
        recorder = RoundRecorder(run_dir, setup.ledger, setup.resume.book if setup.resume else RoundBook(), config)
        final_arrays, book, rows = run_rounds(grid, setup.aggregator, setup.initial, config, recorder, setup.resume)
        user_epsilon = rows[-1].get("user-level-epsilon") if rows and setup.aggregator.spends_user_level else None
    ledger_head = setup.ledger.head()[1]
    setup.ledger.close()
    if setup.aggregator is not None:
        final_eval = evaluate_nodes(grid, book.evaluation_pool(list(grid.get_node_ids())), final_arrays, config.device_settings(), 0)
        run_dir.save_checkpoint("final.pt", final_arrays.to_torch_state_dict(), {"config": config.flat()})
    model_bytes = sum(a.numpy().nbytes for a in final_arrays.values())
    summary = run_summary(
        run_dir.run_id, config, final_eval, rows, book, user_epsilon, setup.dataset, setup.split, setup.population,
        model_bytes, ledger_head, time.time() - started,
    )
    run_dir.write_summary(summary)
    print(final_line(summary, config), flush=True)
    print(f"fedmmrec: run directory {run_dir.path}", flush=True)
    return summary


def _run_user_level(grid: Grid, setup: RunSetup):
    """``privacy = user``: the releases, the model, the evaluation (server.user_level)."""
    from server.user_level import run_user_level

    config, split = setup.config, setup.split
    known = np.ones(setup.dataset.num_items, dtype=bool)
    if split is not None:
        known[split.held_out_items] = False  # items that do not exist yet (cold-start protocol)
    features = load_or_compute_features(setup.dataset, config.data.feature_cache or None, progress=False)
    nodes = sorted(grid.get_node_ids())

    def evaluate(through: Grid, arrays: ArrayRecord, server_round: int) -> dict[str, float]:
        return evaluate_nodes(through, nodes, arrays, config.device_settings(), server_round)

    return run_user_level(grid, config, features, known, setup.run_dir, setup.ledger, evaluate)
