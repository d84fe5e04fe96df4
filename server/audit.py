"""``fedmmrec audit RUN_DIR``: check a run's privacy claims from its run directory alone.

Checks (each named in the report; any failure makes the audit fail):
1. ``hash-chain``: the ledger's entries are intact, complete and in order.
2. ``epsilon-recomputed``: every client-round's claimed epsilon is at least the epsilon
   recomputed from its recorded accountant history with Opacus' RDP accountant. The client's
   final epsilon is also recomputed with the PRV accountant, which must not exceed RDP
   (RDP is an upper bound) by more than PRV's stated error.
3. ``epsilon-monotone``: a client's epsilon never decreases across its rounds. An accountant
   reset between rounds, as in Flower's Opacus example, shows here.
4. ``steps-match-history``: the steps in a client's history equal the sum of the steps it
   recorded in every round so far.
5. ``sample-rate``: the recorded rate equals 1/ceil(n / batch size), the rate Opacus' Poisson
   loader uses for n local examples, and the history's latest rate is that rate.
6. ``no-batchnorm-stats``: the released model carries no BatchNorm running statistics.
Clients with sample rate 1 (no amplification by sampling) are flagged, not failed.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shared.ledger import read_entries, verify_chain
from shared.privacy import epsilon_of, make_accountant, total_steps

PRV_EPS_ERROR = 0.01
REL_TOL = 1e-6


@dataclass
class AuditReport:
    run_dir: Path
    failures: dict[str, list[str]] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    figures: dict[str, object] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not any(self.failures.values())

    def fail(self, check: str, problem: str) -> None:
        self.failures.setdefault(check, []).append(problem)

    def ok(self, check: str) -> None:
        self.failures.setdefault(check, [])

    def to_markdown(self) -> str:
        lines = [f"# Privacy audit of `{self.run_dir}`", "", f"**Result: {'PASS' if self.passed else 'FAIL'}**", ""]
        lines += ["| figure | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in self.figures.items()]
        lines += ["", "| check | result |", "| --- | --- |"]
        for check, problems in self.failures.items():
            lines.append(f"| {check} | {'pass' if not problems else 'FAIL: ' + '; '.join(problems[:5])} |")
        if self.flags:
            lines += ["", "Flags:", *[f"- {flag}" for flag in self.flags]]
        return "\n".join(lines) + "\n"


def audit(run_dir: str | Path) -> AuditReport:
    run_dir = Path(run_dir)
    report = AuditReport(run_dir)
    entries = read_entries(run_dir)
    for problem in verify_chain(entries):
        report.fail("hash-chain", problem)
    report.ok("hash-chain")
    headers = [e for e in entries if e.kind == "header"]
    if len(headers) != 1:
        report.fail("hash-chain", f"expected one header entry, found {len(headers)}")
        return report
    header = headers[0].body
    delta = float(header["delta"])
    report.figures.update(
        {"privacy unit": header["privacy-unit"], "neighbouring relation": header["neighbouring-relation"], "delta": delta}
    )

    by_client: dict[int, list] = defaultdict(list)
    for entry in entries:
        if entry.kind == "client-round":
            by_client[int(entry.body["client"])].append(entry)
    final_eps, rdp_gap, prv_ratio = [], 0.0, []
    for client, rows in sorted(by_client.items()):
        rows.sort(key=lambda e: e.round)
        steps_so_far, last_eps = 0, -math.inf
        for entry in rows:
            body = entry.body
            history = [tuple(h) for h in body["history"]]
            steps_so_far += int(body["steps"])
            claimed = float(body["epsilon"])
            if body["noise-multiplier"] > 0:
                recomputed = epsilon_of(history, delta, "rdp")
                rdp_gap = max(rdp_gap, recomputed - claimed)
                if claimed < recomputed * (1 - REL_TOL):
                    report.fail(
                        "epsilon-recomputed",
                        f"client {client} round {entry.round}: claims {claimed:.4f} < recomputed {recomputed:.4f}",
                    )
            if claimed < last_eps:
                report.fail(
                    "epsilon-monotone", f"client {client} round {entry.round}: epsilon fell from {last_eps:.4f} to {claimed:.4f}"
                )
            last_eps = claimed
            if total_steps(history) != steps_so_far:
                report.fail(
                    "steps-match-history",
                    f"client {client} round {entry.round}: history holds {total_steps(history)} steps, rounds recorded {steps_so_far}",
                )
            if body["poisson"]:
                expected_q = 1.0 / math.ceil(body["num-examples"] / body["batch-size"])
                if not math.isclose(body["sample-rate"], expected_q, rel_tol=1e-9) or (
                    history and not math.isclose(history[-1][1], expected_q, rel_tol=1e-9)
                ):
                    report.fail(
                        "sample-rate",
                        f"client {client} round {entry.round}: rate {body['sample-rate']} but n={body['num-examples']}, "
                        f"batch {body['batch-size']} give {expected_q}",
                    )
                if expected_q >= 1.0:
                    report.flags.append(f"client {client}: sample rate 1 (n={body['num-examples']}): no amplification by sampling")
        final = rows[-1].body
        if final["noise-multiplier"] > 0 and final["history"]:
            history = [tuple(h) for h in final["history"]]
            rdp = epsilon_of(history, delta, "rdp")
            prv = _prv_epsilon(history, delta)
            prv_ratio.append(prv / rdp if rdp > 0 else 1.0)
            if prv > rdp + PRV_EPS_ERROR * max(1.0, rdp):
                report.fail("epsilon-recomputed", f"client {client}: PRV {prv:.4f} exceeds RDP upper bound {rdp:.4f}")
        final_eps.append(float(final["epsilon"]))
    for check in ("epsilon-recomputed", "epsilon-monotone", "steps-match-history", "sample-rate"):
        report.ok(check)

    _check_no_batchnorm(run_dir, report)
    if final_eps:
        report.figures.update(
            {
                "clients": len(final_eps),
                "client epsilon min / median / max": f"{min(final_eps):.3f} / {statistics.median(final_eps):.3f} / {max(final_eps):.3f}",
                "RDP recomputed minus claimed (max)": f"{rdp_gap:.2e}",
                "PRV / RDP epsilon (min .. max)": f"{min(prv_ratio):.3f} .. {max(prv_ratio):.3f}" if prv_ratio else "n/a",
            }
        )
    servers = [e for e in entries if e.kind == "server-round"]
    report.figures["server epsilon (user-level)"] = (
        "not applicable: no server-side DP" if not any(e.body.get("server-dp") for e in servers) else "see ledger"
    )
    report.figures["rounds"] = len(servers)
    report.figures["ledger head"] = entries[-1].hash[:16] if entries else "empty"
    return report


def _prv_epsilon(history, delta: float) -> float:
    return float(make_accountant("prv", history).get_epsilon(delta, eps_error=PRV_EPS_ERROR))


def _check_no_batchnorm(run_dir: Path, report: AuditReport) -> None:
    for path in sorted((run_dir / "checkpoints").glob("*.pt")):
        state = torch.load(path, map_location="cpu")["item_tower"]
        leaked = [k for k in state if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
        if leaked:
            report.fail("no-batchnorm-stats", f"{path.name}: BatchNorm statistics released: {', '.join(leaked[:3])}")
    report.ok("no-batchnorm-stats")


def run_audit(run_dir: str | Path) -> int:
    """CLI entry: print the report, write ``audit.md`` into the run directory, exit 0/1."""
    report = audit(run_dir)
    text = report.to_markdown()
    print(text)
    (Path(run_dir) / "audit.md").write_text(text, encoding="utf-8")
    return 0 if report.passed else 1
