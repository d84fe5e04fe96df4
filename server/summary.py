"""A run's ``summary.json`` and its last console line: final metrics, privacy spent (with its
unit and delta), communication, dataset, and the ledger head the summary belongs to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from server.book import RoundBook
from server.ledger_header import privacy_unit
from shared.baselines import most_popular
from shared.config import RunConfig
from shared.data import Dataset, LeaveLastOutSplit
from shared.run_directory import library_versions


def run_summary(
    run_id: str,
    config: RunConfig,
    final_eval: dict[str, float],
    rows: list[dict[str, Any]],
    book: RoundBook,
    user_epsilon: float | None,
    dataset: Dataset,
    split: LeaveLastOutSplit | None,
    population: int,
    model_bytes: int,
    ledger_head: str,
    wall_seconds: float,
) -> dict[str, Any]:
    user_level = config.privacy.privacy == "user"
    return {
        "run-id": run_id,
        "final": final_eval,
        "baselines": {"most-popular": most_popular(split)} if split else {},
        "privacy": {
            "mode": config.privacy.privacy,
            "unit": privacy_unit(config),
            "delta": config.privacy.delta,
            "accountant": config.privacy.accountant,
            **book.epsilon_stats(),
            "user-level-epsilon": user_epsilon,
            "clients-trained": rows[-1]["clients-trained"] if user_level else len(book.rounds_trained),
        },
        "communication": {
            "bytes-sent-per-client-per-round": max(row["bytes-sent-per-client"] for row in rows) if rows else 0,
            "item-tower-bytes": model_bytes,
        },
        "dataset": {
            "path": str(Path(config.data.data_dir)),
            "users": population,
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


def final_line(summary: dict[str, Any], config: RunConfig) -> str:
    """The run's last line on the console: quality against most-popular, privacy, traffic."""
    final, pop = summary["final"], summary["baselines"].get("most-popular")
    return (
        f"fedmmrec: final HR@10 {final.get('hr@10', float('nan')):.3f} NDCG@10 "
        f"{final.get('ndcg@10', float('nan')):.3f} over {final.get('clients-evaluated', 0)} clients "
        + (f"(most-popular HR@10 {pop['hr@10']:.3f} NDCG@10 {pop['ndcg@10']:.3f}); " if pop else "; ")
        + f"{privacy_line(summary['privacy'], config)}; "
        f"{summary['communication']['bytes-sent-per-client-per-round'] / 1024:.0f} KiB sent per client per round"
    )


def privacy_line(privacy: dict[str, Any], config: RunConfig) -> str:
    """What the run spent, with its unit and delta ("NOT PRIVATE" when nothing protects it)."""
    parts = []
    if config.privacy.privacy == "user" and privacy["user-level-epsilon"] is not None:
        epsilon = privacy["user-level-epsilon"]
        return ("NOT PRIVATE (user-epsilon = inf)" if epsilon == float("inf") else f"user-level epsilon {epsilon:.2f}") + (
            f" at delta {config.privacy.delta:g}"
        )
    if config.privacy.local_dp:
        parts.append(f"example-level epsilon max {privacy['epsilon-max']:.2f}")
    if config.privacy.central_dp and privacy["user-level-epsilon"] is not None:
        parts.append(f"user-level epsilon {privacy['user-level-epsilon']:.2f}")
    if not parts:
        return "NOT PRIVATE"
    return " and ".join(parts) + f" at delta {config.privacy.delta:g}"
