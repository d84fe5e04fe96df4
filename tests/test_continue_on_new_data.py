"""A run continues on data that has grown: new interactions, new items, a new user. Each
device's privacy spend composes over the whole timeline, new items are served from their
content at once, the ledger records the change and the audit passes over all of it."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from server.audit import audit
from server.export import export_run
from server.resume import data_change
from shared.config import resolve
from shared.data import load_dataset
from shared.run_directory import RunDirectory, read_ledger
from simulations.engines.simulate import read_summary, simulate


def _grow(source, target, new_items: int = 2):
    """``source`` plus ``new_items`` items (appended), two more interactions for every user
    (the last one with a new item for some), and one new user with three interactions."""
    shutil.copytree(source, target)
    items = list(csv.DictReader((source / "items.csv").open(encoding="utf-8")))
    added = []
    for k in range(new_items):
        row = dict(items[k], item_id=f"new{k}", title=f"A New Film {k}")
        added.append(row)
    with (target / "items.csv").open("a", encoding="utf-8", newline="") as handle:
        csv.DictWriter(handle, fieldnames=list(items[0])).writerows(added)
    rows = list(csv.DictReader((source / "interactions.csv").open(encoding="utf-8")))
    last = max(int(r["timestamp"]) for r in rows)
    users = sorted({r["user_id"] for r in rows}, key=[r["user_id"] for r in rows].index)
    more = []
    for n, user in enumerate(users):
        more.append({"user_id": user, "item_id": items[(n * 7) % len(items)]["item_id"], "rating": "4", "timestamp": str(last + 10 + n)})
        more.append({"user_id": user, "item_id": f"new{n % new_items}", "rating": "5", "timestamp": str(last + 100 + n)})
    more += [{"user_id": "newcomer", "item_id": items[k]["item_id"], "rating": "3", "timestamp": str(last + 200 + k)} for k in range(3)]
    with (target / "interactions.csv").open("a", encoding="utf-8", newline="") as handle:
        csv.DictWriter(handle, fieldnames=list(rows[0])).writerows(more)
    return target


def test_a_run_continues_on_grown_data_and_its_spend_composes(small_dataset, feature_cache, tmp_path):
    runs = tmp_path / "runs"
    base = {"feature-cache": str(feature_cache), "privacy": "local", "fraction-train": 1.0, "local-epochs": 1}
    run_dir = simulate({**base, "data-dir": str(small_dataset), "num-server-rounds": 2, "run-dir": str(runs), "run-id": "grow"}, engine="in-process")
    grown = _grow(small_dataset, tmp_path / "grown")
    simulate({"resume": str(run_dir), "data-dir": str(grown), "num-server-rounds": 4}, engine="in-process")

    entries = read_ledger(run_dir)
    change = [e.body for e in entries if e.kind == "data"]
    assert len(change) == 1 and change[0]["new-items"] == 2 and change[0]["new-users"] == 1
    assert change[0]["population"] == 13 and change[0]["new-interactions"] == 2 * 12 + 3
    spent: dict[str, dict[int, float]] = {}
    for e in entries:
        if e.kind == "client-round":
            spent.setdefault(e.body["client"], {})[e.round] = float(e.body["epsilon"])
    old = [c for c, rounds in spent.items() if 1 in rounds]
    assert len(old) == 12 and len(spent) == 13  # the newcomer trained in rounds 3 and 4
    for client in old:
        assert spent[client][1] < spent[client][2] < spent[client][3] < spent[client][4]  # one history, growing
    summary = read_summary(run_dir)
    assert summary["rounds"] == 4 and summary["dataset"]["items"] == 122 and summary["dataset"]["users"] == 13
    report = audit(run_dir)
    assert report.passed, report.failures
    # The new population comes from the ledger's data entry: a ledger that claims the old one
    # (its chain recomputed) has more clients counted than its population.
    lied = tmp_path / "lied"
    shutil.copytree(run_dir, lied)
    RunDirectory.open(lied).ledger_path.unlink()
    rewritten = RunDirectory.open(lied).open_ledger()
    for entry in entries:
        rewritten.append([(entry.kind, entry.round, {**entry.body, "population": 12} if entry.kind == "data" else entry.body)])
    rewritten.close()
    assert audit(lied).failures["identity-budget"] == ["13 clients counted for a population of 12"]
    out = export_run(run_dir, tmp_path / "export")
    assert np.load(out / "item_embeddings.npy").shape[0] == 122  # the new items, embedded from their content

    # A resume after the continue stays on the grown data (the ledger's data entry, not config.json).
    simulate({"resume": str(run_dir), "num-server-rounds": 5}, engine="in-process")
    assert read_summary(run_dir)["dataset"]["items"] == 122 and audit(run_dir).passed


def test_data_that_does_not_extend_the_runs_is_refused_with_the_reason(small_dataset, feature_cache, tmp_path):
    runs = tmp_path / "runs"
    run_dir = simulate({"feature-cache": str(feature_cache), "privacy": "local", "data-dir": str(small_dataset),
                        "num-server-rounds": 1, "run-dir": str(runs), "run-id": "strict", "local-epochs": 1}, engine="in-process")
    reordered = tmp_path / "reordered"
    shutil.copytree(small_dataset, reordered)
    lines = (reordered / "items.csv").read_text(encoding="utf-8").splitlines()
    (reordered / "items.csv").write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n", encoding="utf-8")
    config = resolve(None, {"privacy": "local", "data-dir": str(reordered)})
    with pytest.raises(ValueError, match="its catalog does not start with the run's catalog"):
        data_change(RunDirectory.open(run_dir), config, load_dataset(reordered), 12)
    grown = _grow(small_dataset, tmp_path / "grown")
    with pytest.raises(ValueError, match="cold-start-items > 0: the held-out items are drawn over the catalog"):
        data_change(RunDirectory.open(run_dir), resolve(None, {"data-dir": str(grown), "cold-start-items": 0.1}),
                    load_dataset(grown), 13)
    with pytest.raises(ValueError, match="time-cut > 0: the cut is a quantile of all the interactions"):
        data_change(RunDirectory.open(run_dir), resolve(None, {"data-dir": str(grown), "time-cut": 0.5}), load_dataset(grown), 13)
    with pytest.raises(ValueError, match="central DP: DP-FedAvg's noise is scaled to the population it started with"):
        data_change(RunDirectory.open(run_dir), resolve(None, {"data-dir": str(grown), "privacy": "central"}),
                    load_dataset(grown), 13)
    same = resolve(None, {"privacy": "local", "data-dir": str(small_dataset)})
    assert data_change(RunDirectory.open(run_dir), same, load_dataset(small_dataset), 12) is None
