"""The audit's ``ledger-anchored`` check: the ledger agrees with everything else the run wrote.

A hash chain stops quiet edits of single entries, but a ledger rewritten whole (lower noise
claimed in every entry, epsilons and hashes recomputed) still verifies. Such a rewrite has to
agree with every other record of the run, written at the time, to go unnoticed:

- ``metrics.jsonl``: each round's row holds the ledger head after that round committed; the
  hash must be that of the round's last entry in the ledger;
- ``summary.json``: its ``ledger-head`` is the ledger's last hash;
- ``config.json``: the ledger header's copy of the run config equals it;
- ``clients.jsonl``: each (round, device) row's epsilon and steps equal the ledger's entry;
- simulated device state files (``devices/partition-*/device-state.json``): a device's own
  record of its epsilon is not above the ledger's last claim for its pseudonym.

A second check, ``identity-budget``, reads the ledger alone: each device's authenticated identity
(its simulated partition, or its node) keeps one pseudonym and a history that never shrinks
among the replies that counted, and no more pseudonyms counted than the population. A device
that lost its state and came back under a fresh budget is rejected by the server; a ledger in
which one counted anyway fails here.

Each file can be forged too, by someone who rewrites them all consistently: so publish the head
(the run prints it) where the server cannot change it. Rows written before the anchors existed
are flagged, not failed.
"""

from __future__ import annotations

import json
import math
from typing import Any

from shared.privacy.ledger import Entry
from shared.run_directory import DEVICE_STATE_FILE, RunDirectory

CHECK = "ledger-anchored"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, str) or isinstance(b, float) and isinstance(a, str):
        try:
            return float(a) == float(b)
        except ValueError:
            return False
    return a == b


def _epsilon(value) -> float:
    """A recorded epsilon; -1 is how ledgers and state files write infinity (no noise)."""
    value = float(value)
    return math.inf if value < 0 else value


def audit_anchors(report, run: RunDirectory, header: dict[str, Any], entries: list[Entry]) -> None:
    last_of_round: dict[int, str] = {}
    for entry in entries:
        last_of_round[entry.round] = entry.hash
    hashes = {entry.hash: entry for entry in entries}
    unanchored = 0
    for row in run.read_metrics(lenient_tail=True):
        head = row.get("ledger-head")
        if head is None:
            unanchored += 1
            continue
        if head not in hashes:
            report.fail(CHECK, f"metrics.jsonl round {row['round']}: ledger head {head[:16]} is not in the ledger (rewritten?)")
        elif last_of_round.get(int(row["round"])) != head and hashes[head].round != int(row["round"]):
            report.fail(CHECK, f"metrics.jsonl round {row['round']}: ledger head {head[:16]} belongs to round {hashes[head].round}")
    if unanchored:
        report.flags.append(f"{unanchored} metrics rows carry no ledger head (written before anchoring existed)")
    if run.has_summary() and entries:
        said = run.read_summary().get("ledger-head")
        if said != entries[-1].hash:
            report.fail(CHECK, f"summary.json: ledger-head {str(said)[:16]} is not the ledger's last hash {entries[-1].hash[:16]}")
    if run.config_path.is_file():
        saved = run.read_config()
        recorded = header.get("config", {})
        changed = [key for key, value in saved.items() if key in recorded and not _same(recorded[key], value)]
        if changed:
            report.fail(CHECK, f"ledger header's config differs from config.json on {', '.join(sorted(changed))}")
    _clients(report, run, entries)
    _device_states(report, run, entries)
    report.ok(CHECK)


def audit_identities(report, header: dict[str, Any], entries: list[Entry]) -> None:
    check = "identity-budget"
    counted = [e for e in entries if e.kind == "client-round" and not e.body.get("rejected") and not e.body.get("declined")]
    if not counted:
        return
    seen: dict[str, tuple[str, int, int]] = {}
    for entry in counted:
        body = entry.body
        identity = str(body.get("identity", ""))
        if not identity:
            continue
        steps = sum(int(h[2]) for h in body["history"])
        if identity in seen:
            name, before, round_ = seen[identity]
            if name != str(body["client"]) or steps < before:
                report.fail(
                    check,
                    f"round {entry.round}: {identity} counted as {body['client']} with {steps} DP steps after "
                    f"{name} with {before} (round {round_}): a fresh budget",
                )
        seen[identity] = (str(body["client"]), steps, entry.round)
    names = {str(e.body["client"]) for e in counted}
    # A run continued on grown data records its new population in a ``data`` entry.
    population = max([int(header.get("population", 0))] + [int(e.body["population"]) for e in entries if e.kind == "data"])
    if population and len(names) > population:
        report.fail(check, f"{len(names)} clients counted for a population of {population}")
    report.ok(check)


def _clients(report, run: RunDirectory, entries: list[Entry]) -> None:
    spent = {(e.round, str(e.body["client"])): e.body for e in entries if e.kind == "client-round"}
    for row in run.read_clients(lenient_tail=True):
        body = spent.get((int(row["round"]), str(row["client"])))
        where = f"clients.jsonl round {row['round']} client {row['client']}"
        if body is None:
            report.fail(CHECK, f"{where}: no client-round entry in the ledger")
        elif not math.isclose(float(body["epsilon"]), float(row["epsilon"]), rel_tol=1e-9) or int(body["steps"]) != int(row["steps"]):
            report.fail(
                CHECK,
                f"{where}: epsilon {row['epsilon']} / steps {row['steps']} but the ledger records "
                f"{body['epsilon']} / {body['steps']}",
            )


def _is_prefix(ledger: list, device: list) -> bool:
    """Whether the ledger's (merged) history is the start of the device's: the same noise and rate
    segment by segment, the device perhaps with more steps after (rounds the server never got)."""
    from shared.privacy.accounting import merged

    ledger = merged([tuple(h) for h in ledger])
    device = merged([tuple(h) for h in device])
    if len(ledger) > len(device):
        return False
    for k, (sigma, rate, steps) in enumerate(ledger):
        d_sigma, d_rate, d_steps = device[k]
        last = k == len(ledger) - 1
        if (sigma, rate) != (d_sigma, d_rate) or (steps != d_steps and not (last and steps < d_steps)):
            return False
    return True


def _device_states(report, run: RunDirectory, entries: list[Entry]) -> None:
    claims: dict[str, tuple[float, list]] = {}
    for entry in entries:
        if entry.kind == "client-round":
            claims[str(entry.body["client"])] = (_epsilon(entry.body["epsilon"]), entry.body["history"])
    for path in [folder / DEVICE_STATE_FILE for folder in run.device_folders().values()]:
        if not path.is_file():
            continue
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            name, epsilon, history = str(state["pseudonym"]), _epsilon(state["epsilon"]), list(state["history"])
        except (OSError, ValueError, KeyError) as exc:
            report.fail(CHECK, f"{path}: unreadable device state ({exc})")
            continue
        if name not in claims:
            report.flags.append(f"{path.parent.name}: device {name} spent epsilon {epsilon:.3f} that the ledger never received")
            continue
        claim, ledger_history = claims[name]
        if not _is_prefix(ledger_history, history):
            report.fail(
                CHECK,
                f"{path.parent.name}: device {name}'s own history {history} is not what the ledger records "
                f"({ledger_history}); it recorded epsilon {epsilon:.4f}, the ledger claims {claim:.4f}",
            )
        elif epsilon > claim * (1 + 1e-9) + 1e-12 and not (math.isinf(epsilon) and math.isinf(claim)):
            report.flags.append(
                f"{path.parent.name}: device {name} spent epsilon {epsilon:.3f}, the ledger received {claim:.3f} "
                "(rounds whose replies never reached it: late, lost or cut by a crash)"
            )
