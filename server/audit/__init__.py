"""``fedmmrec audit RUN_DIR``: check a run's privacy claims from its run directory alone.

Checks (each named in the report; any failure makes the audit fail):
1. ``hash-chain``: the ledger's entries are intact, complete and in order; ``ledger-anchored``
   (:mod:`server.audit.anchors`): it agrees with the metrics, summary, config, clients and
   device-state files, so a ledger rewritten whole with its hashes recomputed is caught.
2. ``epsilon-recomputed``: every client-round's claimed epsilon is at least the epsilon
   recomputed from its recorded accountant history by the accountant it names. Each client's
   final history is also recomputed by three accountants: Opacus RDP (an upper bound), Opacus
   PRV and Google's ``dp-accounting`` PLD (both tight). PRV and PLD must agree within their
   discretisation error, neither may exceed RDP, and no claim may be below them.
3. ``epsilon-monotone``: a client's (and the server's) epsilon never decreases across rounds.
   An accountant reset between rounds, as in Flower's Opacus example, shows here.
4. ``steps-match-history``: a client's history holds at least the steps it recorded in every
   round so far (fewer: its accountant forgot rounds). More is flagged, not failed: a round
   whose reply arrived too late is spent on the device but missing from the ledger.
5. ``sample-rate``: the recorded rate equals 1/ceil(n / batch size), the rate Opacus' Poisson
   loader uses for n local examples, the history's latest rate is that rate, and a round's
   steps are local-epochs x ceil(n / batch size).
6. ``no-batchnorm-stats``: the released models carry no BatchNorm running statistics.
Then the run's privacy mechanism (:mod:`server.mechanisms`, found from the ledger header's
run config) runs its own checks:
7. ``server-accounting`` (DP-FedAvg, :mod:`server.audit.dp_fedavg`): every round is in the
   ledger, its mechanism (clip, noise std, rate, denominator) is the configured one, its
   history is the composition of the rounds so far, and its user-level epsilon is not below
   RDP, PRV or PLD.
8. ``release-accounting``, ``release-noise``, ``release-clipping``, ``release-model``
   (Gaussian releases), or the secure sum's checks (Skellam releases):
   :mod:`server.audit.user_level`, :mod:`server.audit.secure_sum`.
9. ``empirical-lower-bound`` (DP-FedAvg runs with canaries): the canary file matches the
   ledger's commitment, and the one-run lower bound (Steinke et al. 2023) does not exceed the
   claimed user-level epsilon.
Clients with sample rate 1 (no amplification by sampling) are flagged, not failed.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

from server.audit.report import AuditReport, to_html, to_markdown
from server.mechanisms import mechanism_of_ledger
from shared.privacy.accounting import (
    dp_accounting_epsilon,
    make_accountant,
    merged,
    opacus_epsilon,
    total_steps,
    trivial_epsilon,
)
from shared.privacy.ledger import Entry, verify_chain
from shared.run_directory import RunDirectory

PRV_EPS_ERROR = 0.01
REL_TOL = 1e-6
CHECKS = (
    "hash-chain", "epsilon-recomputed", "epsilon-monotone", "steps-match-history", "sample-rate", "no-batchnorm-stats",
)


def tight_tolerance(epsilon: float) -> float:
    """How far two tight accountants (PRV, PLD) may differ: their discretisation errors."""
    return 0.01 * max(1.0, epsilon) + 0.02


TIGHT_ACCOUNTANT_LIMIT = 100.0


@lru_cache(maxsize=4096)
def _three_accountants(history: tuple, delta: float) -> tuple[float, float, float] | None:
    """(Opacus RDP, Opacus PRV, dp-accounting PLD) epsilon; cached: clients share histories.

    None when RDP is above ``TIGHT_ACCOUNTANT_LIMIT``: the tight accountants' grids grow with
    epsilon (PRV asks for tens of GB), and such a guarantee is void anyway.
    """
    history_list = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rdp = _recompute(history_list, delta, "rdp")
        if not rdp <= TIGHT_ACCOUNTANT_LIMIT:
            return None
        prv = float(make_accountant("prv", merged(history_list)).get_epsilon(delta, eps_error=PRV_EPS_ERROR))
        pld = dp_accounting_epsilon(history_list, delta)
    return rdp, prv, pld


def _recompute(history, delta: float, accountant: str) -> float:
    """A claim recomputed by a fresh Opacus accountant (not the clients' cached fast path)."""
    history = merged([tuple(h) for h in history])
    trivial = trivial_epsilon(history)
    if trivial is not None:
        return trivial
    return opacus_epsilon(tuple(history), float(delta), accountant)


def _cross_check(report: AuditReport, who: str, history, claimed: float, delta: float, gaps: list[float]) -> None:
    """RDP >= PRV ~ PLD, and the claim is not below any of them."""
    epsilons = _three_accountants(tuple(tuple(h) for h in merged(history)), delta)
    if epsilons is None:
        report.flags.append(f"{who}: epsilon above {TIGHT_ACCOUNTANT_LIMIT:g}: no meaningful guarantee; tight accountants skipped")
        return
    rdp, prv, pld = epsilons
    tolerance = tight_tolerance(pld)
    gaps.append(abs(prv - pld))
    if abs(prv - pld) > tolerance:
        report.fail("epsilon-recomputed", f"{who}: accountants disagree: PRV {prv:.4f}, dp-accounting PLD {pld:.4f}")
    if min(prv, pld) > rdp * (1 + REL_TOL) + tolerance:
        report.fail("epsilon-recomputed", f"{who}: tight accountants ({prv:.4f}, {pld:.4f}) exceed the RDP upper bound {rdp:.4f}")
    if claimed < min(prv, pld) - tolerance:
        report.fail("epsilon-recomputed", f"{who}: claims {claimed:.4f}, below PRV {prv:.4f} / PLD {pld:.4f}")


def audit(run_dir: str | Path, node_keys: str | Path | None = None) -> AuditReport:
    """Check ``run_dir``; ``node_keys``: the folder of the SuperNodes' authorised public keys
    (``fedmmrec deploy certs`` output), to which every signing key of a deployment must belong."""
    run = RunDirectory.open(run_dir)
    report = AuditReport(run.path)
    entries = run.read_ledger()
    for problem in verify_chain(entries):
        report.fail("hash-chain", problem)
    report.ok("hash-chain")
    headers = [e for e in entries if e.kind == "header"]
    if len(headers) != 1:
        report.fail("hash-chain", f"expected one header entry, found {len(headers)}")
        return report
    header = headers[0].body
    delta = float(header["delta"])
    try:
        mechanism = mechanism_of_ledger(header)
    except ValueError as exc:
        report.fail("mechanism-known", f"the ledger header names no known mechanism: {exc}")
        return report
    report.ok("mechanism-known")
    report.figures.update(
        {
            "privacy mode": header.get("privacy-mode", "local"),
            "privacy unit": header["privacy-unit"],
            "neighbouring relation": header["neighbouring-relation"],
            "delta": delta,
        }
    )
    gaps: list[float] = []
    from server.audit.anchors import audit_anchors, audit_identities

    audit_anchors(report, run, header, entries)
    audit_identities(report, header, entries)
    from server.audit.signatures import audit_signatures

    audit_signatures(report, run, entries, node_keys)
    from server.audit.conformance import audit_conformance

    audit_conformance(report, header, entries, run)
    _audit_clients(report, entries, delta, gaps, header.get("config", {}).get("local-epochs"))
    _check_no_batchnorm(run, report)
    servers = [e for e in entries if e.kind == "server-round"]
    mechanism.audit(report, run, header, entries, delta, gaps, node_keys)
    report.figures["accountant agreement"] = (
        f"Opacus PRV vs dp-accounting PLD: max difference {max(gaps):.4f}; Opacus RDP is never below either"
        if gaps else "n/a (no DP histories)"
    )
    report.figures["rounds"] = len(servers) or len([e for e in entries if e.kind == "release"])
    resumes = [e.round for e in entries if e.kind == "resume"]
    if resumes:
        report.figures["resumed"] = "after round " + ", ".join(str(r) for r in resumes)
    releases = [e.body for e in entries if e.kind == "release"]
    if releases:
        report.figures["devices per release"] = ", ".join(f"{b.get('release')} {b.get('contributions')}" for b in releases)
        report.release_names = [str(b.get("release")) for b in releases]
    report.figures["ledger head"] = entries[-1].hash[:16] if entries else "empty"
    report.guarantee = _guarantee(header, report)
    return report


EPSILON_FIGURES = ("user-level epsilon", "server epsilon (user-level)", "client epsilon min / median / max (example-level)")


def _guarantee(header: dict, report: AuditReport) -> dict[str, object]:
    """What the run claims, in the words a privacy officer checks first."""
    mechanism = mechanism_of_ledger(header)
    trust = mechanism.trust if isinstance(mechanism.trust, str) else "(not stated in the ledger header)"
    claimed = [name for name in EPSILON_FIGURES if not str(report.figures.get(name, "not applicable")).startswith("not applicable")]
    epsilon = "; ".join(f"{name}: {report.figures[name]}" for name in claimed)
    return {
        "privacy unit": header["privacy-unit"],
        "epsilon": epsilon or "none claimed",
        "delta": header["delta"],
        "whom you must trust": header.get("trust") or trust,
        "verdict": "every check below passed" if report.passed else "FAIL: at least one check below failed",
    }


def _audit_clients(
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
                recomputed = _recompute(history, delta, body.get("accountant") or "rdp")
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
            _cross_check(report, f"client {client}", final["history"], float(final["epsilon"]), delta, gaps)
            final_eps.append(float(final["epsilon"]))
    if by_client:  # with no client entries (privacy = user) these checks could not fail: not shown
        for check in CHECKS[1:5]:
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


def _check_no_batchnorm(run: RunDirectory, report: AuditReport) -> None:
    for path in sorted(run.checkpoints.glob("*.pt")):
        state = run.load_checkpoint(path)["item_tower"]
        leaked = [k for k in state if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
        if leaked:
            report.fail("no-batchnorm-stats", f"{path.name}: BatchNorm statistics released: {', '.join(leaked[:3])}")
    report.ok("no-batchnorm-stats")


def run_audit(run_dir: str | Path, node_keys: str | Path | None = None) -> int:
    """CLI entry: print the table, write ``audit.md`` and ``audit.html``, exit 0 (pass) or 1.

    Nothing to audit (no such folder, no ledger in it) is a usage error, not a FAIL: a
    ``ValueError`` the command line prints as one line and exits 2 with."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ValueError(f"audit: {path}: no such run directory")
    if not RunDirectory.open(path).ledger_path.is_file():
        raise ValueError(f"audit: {path}: no privacy ledger (ledger.sqlite) in this folder: not a run directory, or its run never started")
    report = audit(run_dir, node_keys)
    text = to_markdown(report)
    print(text)
    run = RunDirectory.open(run_dir)
    run.write_audit(text, to_html(report))
    print(f"fedmmrec: wrote {run.audit_markdown_path} and {run.audit_html_path.name}")
    return 0 if report.passed else 1
