"""One federated run from start to summary: set up, let the privacy mechanism drive it (rounds
or releases), summarise."""

from __future__ import annotations

import time
from typing import Any

from flwr.serverapp import Grid

from server.run_setup import set_up
from server.summary import final_line, run_summary
from shared.config import RunConfig


def run_federated(grid: Grid, config: RunConfig) -> dict[str, Any]:
    """Run the configured federation and write ``runs/<run-id>/``; return the summary.

    With ``resume`` set, continue that run directory from the last round its ledger committed.
    """
    started = time.time()
    setup = set_up(grid, config)
    config, run_dir, mechanism = setup.config, setup.run_dir, setup.mechanism
    try:
        outcome = mechanism.run(grid, setup)
        ledger_head = setup.ledger.head()[1]
    finally:
        setup.ledger.close()  # committed entries stay whatever stopped the run
    summary = run_summary(run_dir.run_id, mechanism, outcome, setup, ledger_head, time.time() - started)
    run_dir.write_summary(summary)
    print(final_line(summary, mechanism), flush=True)
    print(f"fedmmrec: run directory {run_dir.path}", flush=True)
    return summary
