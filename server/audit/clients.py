"""The audit's checks of the devices' example-level spend (DP-SGD): each client-round's claim
against its recorded accountant history (``epsilon-recomputed``), never falling
(``epsilon-monotone``), the history against the rounds recorded (``steps-match-history``) and
the Poisson sample rate against the device's example count (``sample-rate``)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

from server.audit.accountants import REL_TOL, cross_check, recompute
from server.audit.report import AuditReport
from shared.privacy.accounting import total_steps
from shared.privacy.ledger import Entry

DEVICE_CHECKS = (
    "hash-chain", "epsilon-recomputed", "epsilon-monotone", "steps-match-history", "sample-rate", "no-batchnorm-stats",
)


def audit_clients(
    report: AuditReport, entries: list[Entry], delta: float, gaps: list[float], local_epochs: int | None = None
) -> None:
    by_client: dict[str, list[Entry]] = defaultdict(list)
    for entry in entries:
        if entry.kind == "client-round":
            by_client[str(entry.body["client"])].append(entry)
    final_eps, rdp_gap = [], 0.0
    for client, rows in sorted(by_client.items()):
        rows.sort(key=lambda e: e.round)
        steps_so_far, last_eps = 0, -math.inf
        for entry in rows:
            body = entry.body
            history = [tuple(h) for h in body["history"]]
            steps_so_far += int(body["steps"])
            claimed = float(body["epsilon"])
            if body["noise-multiplier"] > 0:
                recomputed = recompute(history, delta, body.get("accountant") or "rdp")
                rdp_gap = max(rdp_gap, recomputed - claimed)
                if claimed < recomputed * (1 - REL_TOL):
                    report.fail(
                        "epsilon-recomputed",
                        f"client {client} round {entry.round}: claims {claimed:.4f} < recomputed {recomputed:.4f}",
                    )
                report.client_epsilons.setdefault(client, []).append((entry.round, claimed))
            if claimed < last_eps:
                report.fail(
                    "epsilon-monotone", f"client {client} round {entry.round}: epsilon fell from {last_eps:.4f} to {claimed:.4f}"
                )
            last_eps = claimed
            if body["noise-multiplier"] > 0 and total_steps(history) < steps_so_far:
                report.fail(
                    "steps-match-history",
                    f"client {client} round {entry.round}: history holds {total_steps(history)} steps, rounds recorded {steps_so_far}",
                )
            elif body["noise-multiplier"] > 0 and total_steps(history) > steps_so_far:
                # A round whose reply came too late (or was lost) is spent on the device and
                # in its history, but not in the ledger: the claim still covers it.
                report.flags.append(
                    f"client {client} round {entry.round}: history holds {total_steps(history) - steps_so_far} steps "
                    "from rounds the server did not receive (late or lost replies); its epsilon includes them"
                )
                steps_so_far = total_steps(history)
            if body["poisson"]:
                _check_sample_rate(report, client, entry, history, local_epochs)
        final = rows[-1].body
        if final["noise-multiplier"] > 0 and final["history"]:
            cross_check(report, f"client {client}", final["history"], float(final["epsilon"]), delta, gaps)
            final_eps.append(float(final["epsilon"]))
    if by_client:  # with no client entries (privacy = user) these checks could not fail: not shown
        for check in DEVICE_CHECKS[1:5]:
            report.ok(check)
    if by_client:
        report.figures["clients (with a signed example-level spend)"] = len(by_client)
    if final_eps:
        report.figures["client epsilon min / median / max (example-level)"] = (
            f"{min(final_eps):.3f} / {statistics.median(final_eps):.3f} / {max(final_eps):.3f}"
        )
        report.figures["largest recomputed minus claimed epsilon"] = f"{rdp_gap:.1e} (a claim below its recomputation fails)"
    else:
        report.figures["client epsilon min / median / max (example-level)"] = "not applicable: no local DP"


def _check_sample_rate(report: AuditReport, client: str, entry: Entry, history, local_epochs: int | None = None) -> None:
    body = entry.body
    expected_q = 1.0 / math.ceil(body["num-examples"] / body["batch-size"])
    planned = local_epochs * math.ceil(body["num-examples"] / min(body["batch-size"], body["num-examples"])) if local_epochs else None
    if planned is not None and not body.get("declined") and int(body["steps"]) not in (0, planned):
        report.fail(
            "sample-rate",
            f"client {client} round {entry.round}: {body['steps']} steps, but local-epochs {local_epochs} x "
            f"ceil(n={body['num-examples']} / batch {body['batch-size']}) is {planned}",
        )
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
