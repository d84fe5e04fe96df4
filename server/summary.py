"""A run's ``summary.json`` and its last console line: final metrics, privacy spent (with its
unit and delta, as the mechanism states it), communication, dataset, and the ledger head the
summary belongs to."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.mechanisms import NOT_APPLICABLE, Outcome, PrivacyMechanism
from shared.array_values import nbytes
from shared.baselines import most_popular
from shared.run_directory import library_versions

if TYPE_CHECKING:
    from server.run_setup import RunSetup


def run_summary(
    run_id: str, mechanism: PrivacyMechanism, outcome: Outcome, setup: "RunSetup", ledger_head: str, wall_seconds: float
) -> dict[str, Any]:
    config, split, dataset, rows = setup.config, setup.split, setup.dataset, outcome.rows
    tower_bytes = nbytes(outcome.arrays)
    return {
        "run-id": run_id,
        "final": outcome.evaluation,
        "baselines": {"most-popular": most_popular(split)} if split else {},
        "privacy": mechanism.summary_privacy(outcome.book, rows, outcome.user_epsilon),
        "communication": {
            "bytes-sent-per-client-per-round": max(row["bytes-sent-per-client"] for row in rows) if rows else 0,
            "item-tower-bytes": tower_bytes if tower_bytes else NOT_APPLICABLE,  # releases train no tower
        },
        "dataset": {
            "path": str(Path(config.data.data_dir)),
            "users": setup.population,
            "items": dataset.num_items,
            "interactions": dataset.num_interactions if split else None,
            "cold-items": len(split.cold_items) if split else None,
        },
        "ledger-head": ledger_head,
        "rounds": len(rows),
        "wall-seconds": round(wall_seconds, 1),
        "config": config.flat(),
        "versions": library_versions(),
    }


def final_line(summary: dict[str, Any], mechanism: PrivacyMechanism) -> str:
    """The run's last line on the console: quality against most-popular, privacy, traffic."""
    final, pop = summary["final"], summary["baselines"].get("most-popular")
    return (
        f"fedmmrec: final HR@10 {final.get('hr@10', float('nan')):.3f} NDCG@10 "
        f"{final.get('ndcg@10', float('nan')):.3f} over {final.get('clients-evaluated', 0)} clients "
        + (f"(most-popular HR@10 {pop['hr@10']:.3f} NDCG@10 {pop['ndcg@10']:.3f}); " if pop else "; ")
        + f"{mechanism.privacy_line(summary['privacy'])}; "
        f"{summary['communication']['bytes-sent-per-client-per-round'] / 1024:.0f} KiB sent per client per round"
    )
