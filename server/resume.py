"""Continue a run directory from the last round its ledger committed: after a crash, or with
more rounds, or with new data.

New data: ``resume`` with a ``data-dir`` other than the run's is a dataset that has grown (new
interactions appended, new items added to the catalog). It must extend the run's: the old
catalog's items first, in the same order, and every user that trained still a user at the same
position, so each simulated device keeps its own state and its privacy spend composes over the
whole timeline. The ledger records the change (a ``data`` entry with the new population), and
later resumes continue from it. New items are embedded from their content by the current item
tower at once (cold start); with ``item-ids`` their id parts start at zero.
"""

from __future__ import annotations

from flwr.app import ArrayRecord

from server.book import ResumePoint, RoundBook
from server.mechanisms import mechanism_class
from shared.config import DEFAULTS, RunConfig, resolve
from shared.privacy.ledger import Entry, verify_chain
from shared.run_directory import RunDirectory


def current_data_dir(run_dir: RunDirectory, saved: dict) -> str:
    """The dataset the run trains on now: its last ``data`` entry's, else its config's."""
    changes = [e for e in run_dir.read_ledger() if e.kind == "data"] if run_dir.ledger_path.is_file() else []
    return str(changes[-1].body["data-dir"]) if changes else str(saved["data-dir"])


def resumed_config(config: RunConfig) -> RunConfig:
    """A resumed run keeps its saved config; ``num-server-rounds`` may change (a value other
    than the default raises or lowers the total), and so may ``data-dir`` (grown data)."""
    try:
        run_dir = RunDirectory.open(config.run.resume)
        saved = run_dir.read_config()
    except FileNotFoundError as exc:
        raise ValueError(f"resume: {exc}: not a run directory") from exc
    rounds = config.federation.num_server_rounds
    if rounds == DEFAULTS["num-server-rounds"]:
        rounds = saved["num-server-rounds"]
    known = {key: value for key, value in saved.items() if key in DEFAULTS}
    data_dir = config.data.data_dir or current_data_dir(run_dir, saved)
    return resolve(None, {**known, "num-server-rounds": rounds, "resume": config.run.resume, "data-dir": data_dir})


def data_change(run_dir: RunDirectory, config: RunConfig, dataset, population: int) -> dict | None:
    """The ledger body of a continue on grown data (None when the data is the run's), after
    checking that the new data extends the old; a clear error otherwise."""
    from pathlib import Path

    from shared.data import load_catalog, load_dataset, split_for

    before = current_data_dir(run_dir, run_dir.read_config())
    if Path(before).resolve() == Path(config.data.data_dir).resolve():
        return None
    if not Path(before).is_dir():
        raise ValueError(f"resume with data-dir {config.data.data_dir}: the run's data {before} is gone; it is needed to "
                         "check that the new data extends it")
    old = load_catalog(before) if config.federation.deployment else load_dataset(before)
    if list(dataset.item_ids[: old.num_items]) != list(old.item_ids):
        raise ValueError(f"{config.data.data_dir}: its catalog does not start with the run's catalog ({before}) in the "
                         "same order: append new items at the end of items.csv")
    if config.data.cold_start_items and dataset.num_items != old.num_items:
        raise ValueError("cold-start-items > 0: the held-out items are drawn over the catalog, so a grown catalog would "
                         "change them; continue with the same catalog or start a new run")
    if config.data.time_cut and dataset.num_interactions != old.num_interactions:
        raise ValueError("time-cut > 0: the cut is a quantile of all the interactions, so grown data would move it and "
                         "change every user's split; continue on the same data or start a new run")
    if config.federation.deployment:  # the server holds the catalog only; devices bring their own data
        return {"data-dir": config.data.data_dir, "previous-data-dir": before, "population": population,
                "items": dataset.num_items, "new-items": dataset.num_items - old.num_items}
    old_users = [old.user_ids[u] for u in split_for(old, config).users]
    new_users = [dataset.user_ids[u] for u in split_for(dataset, config).users]
    if new_users[: len(old_users)] != old_users:
        raise ValueError(f"{config.data.data_dir}: the run's users are not its first users in the same order (a device "
                         "would get another user's state): append new users' interactions after the old ones")
    if mechanism_class(config).central_dp and len(new_users) != len(old_users):
        raise ValueError("central DP: DP-FedAvg's noise is scaled to the population it started with; continue with the "
                         "same users or start a new run")
    return {
        "data-dir": config.data.data_dir, "previous-data-dir": before, "population": population,
        "items": dataset.num_items, "new-items": dataset.num_items - old.num_items,
        "interactions": dataset.num_interactions, "new-interactions": dataset.num_interactions - old.num_interactions,
        "new-users": len(new_users) - len(old_users),
    }


def grown_arrays(arrays: ArrayRecord, num_items: int) -> ArrayRecord:
    """A checkpoint's item tower for a grown catalog: id parts of new items start at zero."""
    import numpy as np
    import torch

    out = {}
    for key, array in arrays.items():
        value = array.numpy()
        if key.startswith(("id_offsets.", "id_biases.")) and value.shape[0] < num_items:
            value = np.concatenate([value, np.zeros((num_items - value.shape[0], *value.shape[1:]), dtype=value.dtype)])
        out[key] = torch.from_numpy(np.ascontiguousarray(value))
    return ArrayRecord(out)


def resume_point(run_dir: RunDirectory) -> ResumePoint:
    """The last round the ledger committed, with its checkpoint; drops later, uncommitted rows."""
    entries: list[Entry] = run_dir.read_ledger()
    problems = verify_chain(entries)
    if problems:
        raise ValueError(f"{run_dir.ledger_path}: cannot resume: the ledger does not verify: {problems[0]}")
    rounds = [e.round for e in entries if e.kind == "server-round"]
    last = rounds[-1] if rounds else 0
    path = run_dir.round_checkpoint(last)
    if not path.is_file():
        raise ValueError(f"{path}: missing: cannot resume after round {last}")
    saved = run_dir.load_checkpoint(path)
    run_dir.rewrite_jsonl(run_dir.metrics_path.name, [r for r in run_dir.read_metrics(lenient_tail=True) if r["round"] <= last])
    run_dir.rewrite_jsonl(run_dir.clients_path.name, [r for r in run_dir.read_clients(lenient_tail=True) if r["round"] <= last])
    rows = run_dir.read_metrics()
    return ResumePoint(
        round=last,
        arrays=ArrayRecord(saved["item_tower"]),
        strategy_state=saved["meta"].get("strategy", {}) if last else {},
        book=RoundBook.from_ledger(entries),
        rows=rows,
    )
