"""Continue a run directory after a crash, from the last round its ledger committed."""

from __future__ import annotations

from flwr.app import ArrayRecord

from server.book import ResumePoint, RoundBook
from shared.config import DEFAULTS, RunConfig, resolve
from shared.privacy.ledger import Entry, verify_chain
from shared.run_directory import RunDirectory


def resumed_config(config: RunConfig) -> RunConfig:
    """A resumed run keeps its saved config; only ``num-server-rounds`` may change (a value
    other than the default raises or lowers the total)."""
    try:
        saved = RunDirectory.open(config.run.resume).read_config()
    except FileNotFoundError as exc:
        raise ValueError(f"resume: {exc}: not a run directory") from exc
    rounds = config.federation.num_server_rounds
    if rounds == DEFAULTS["num-server-rounds"]:
        rounds = saved["num-server-rounds"]
    known = {key: value for key, value in saved.items() if key in DEFAULTS}
    return resolve(None, {**known, "num-server-rounds": rounds, "resume": config.run.resume})


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
