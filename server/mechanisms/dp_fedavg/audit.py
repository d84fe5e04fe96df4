"""The audit's checks of DP-FedAvg at the server (``privacy = central`` or ``both``):
``server-accounting`` (every round's mechanism and its composition) and, with canaries,
``empirical-lower-bound`` (Steinke, Nasr, Jagielski 2023: one-run auditing)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from server.audit.accountants import REL_TOL, cross_check, recompute
from server.audit.report import AuditReport
from shared.privacy.canaries import read_canaries
from server.mechanisms.dp_fedavg.noise import flatten
from shared.privacy.empirical import one_run_audit, one_run_rejects
from shared.privacy.ledger import Entry
from shared.run_directory import RunDirectory


def audit_server(report: AuditReport, header: dict[str, Any], servers: list[Entry], delta: float, gaps: list[float]) -> None:
    check = "server-accounting"
    config = header["config"]
    z, clip, q = float(config["server-noise-multiplier"]), float(config["server-clip-norm"]), float(config["fraction-train"])
    denominator = q * int(header["population"])
    last = -math.inf
    for expected_round, entry in enumerate(servers, start=1):
        body, where = entry.body, f"server round {entry.round}"
        if entry.round != expected_round or not body.get("server-dp"):
            report.fail(check, f"{where}: expected DP round {expected_round} (a round is missing or not noised)")
            continue
        if [list(h) for h in body["user-level-history"]] != [[z, q, expected_round]]:
            report.fail(check, f"{where}: history {body['user-level-history']} is not {expected_round} rounds of (z={z}, q={q})")
        if not math.isclose(body["server-noise-std"], z * clip, rel_tol=1e-9) or not math.isclose(
            body["denominator"], denominator, rel_tol=1e-9
        ):
            report.fail(check, f"{where}: noise std {body['server-noise-std']} / denominator {body['denominator']} "
                        f"are not z*C = {z * clip} / q*N = {denominator}")
        claimed = float(body["user-level-epsilon"])
        claimed = math.inf if claimed < 0 else claimed
        recomputed = recompute([(z, q, expected_round)], delta, header["accountant"])
        if claimed < recomputed * (1 - REL_TOL):
            report.fail(check, f"{where}: claims user-level epsilon {claimed:.4f} < recomputed {recomputed:.4f}")
        if claimed < last:
            report.fail("epsilon-monotone", f"{where}: user-level epsilon fell from {last:.4f} to {claimed:.4f}")
        last = claimed
        report.server_epsilons.append((entry.round, claimed))
    report.ok(check)
    if servers and math.isfinite(last) and last > 0:
        cross_check(report, "server", [(z, q, len(servers))], last, delta, gaps)
    report.figures["server epsilon (user-level)"] = (
        f"{last:.3f} after {len(servers)} rounds (z={z:g}, q={q:g}, C={clip:g})" if servers else "no rounds"
    )


def audit_canaries(report: AuditReport, run: RunDirectory, header: dict[str, Any], servers: list[Entry], delta: float) -> None:
    check = "empirical-lower-bound"
    if not header.get("canaries"):
        report.figures["empirical lower bound"] = "not run: the run had no canaries (run config `canaries`)"
        return
    canaries, digest = read_canaries(run.canaries_path)
    if digest != header.get("canary-commitment"):
        report.fail(check, "canaries.json does not match the ledger header's commitment (changed after the run started)")
        return
    initial = run.load_checkpoint(run.round_checkpoint(0))["item_tower"]
    final = run.load_checkpoint(run.final_checkpoint())["item_tower"]
    scores = canaries.scores(flatten(final) - flatten(initial))
    included = np.array(canaries.included)
    result = one_run_audit(scores, included, delta)
    report.canary_scores = {"included": scores[included].tolist(), "excluded": scores[~included].tolist()}
    claimed = report.server_epsilons[-1][1] if report.server_epsilons else 0.0
    # The bound's ceiling: every guess right. A ceiling at or below the claim can never fail.
    ceiling = one_run_audit(included.astype(float), included, delta).epsilon_lower_bound
    report.figures["empirical lower bound ceiling"] = (
        f"{ceiling:.3f} with {len(included)} canaries (every guess right) vs claimed {claimed:.3f}"
    )
    if ceiling <= claimed:
        needed = canaries_for_ceiling(claimed, delta)
        report.inconclusive[check] = (
            f"INCONCLUSIVE: with {len(included)} canaries the bound cannot exceed {ceiling:.3f}, below the claimed "
            f"{claimed:.3f}; it could not have failed. Conclusive with {needed} canaries or more, or at a claim below {ceiling:.3f}"
        )
        report.figures["empirical lower bound"] = (
            f"{result.epsilon_lower_bound:.3f} ({result.correct}/{result.guesses} guesses right): "
            + report.inconclusive[check]
        )
        return
    report.figures["empirical lower bound"] = (
        f"{result.epsilon_lower_bound:.3f} at {result.confidence:.0%} confidence ({result.correct}/{result.guesses} "
        f"guesses right, {result.canaries} canaries) vs claimed {claimed:.3f}"
    )
    if result.epsilon_lower_bound > claimed:
        report.fail(
            check,
            f"empirical lower bound {result.epsilon_lower_bound:.3f} exceeds the claimed user-level epsilon {claimed:.3f}: "
            "the run leaks more than it claims",
        )
    report.ok(check)


def canaries_for_ceiling(claimed: float, delta: float, limit: int = 1_000_000) -> int | str:
    """The fewest canaries (doubling from 100) whose all-correct bound exceeds ``claimed``."""
    m = 100
    while m <= limit:
        included = np.arange(m) % 2 == 0
        if one_run_rejects(included.astype(float), included, claimed, delta):
            return m
        m *= 2
    return f"more than {limit:,}"
