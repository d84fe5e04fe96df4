"""The audit's checks of ``user-noise = central`` (the server's Gaussian releases).

Each check reads only the run directory and fails with a line naming the release:

- ``release-accounting``: the ledger holds exactly the planned releases, in order; each one's
  noise std is the one the budget split gives for the configured ``user-epsilon`` and delta;
  the claimed user-level epsilon after each release is not below its recomputation, in closed
  form (mu-GDP) and by ``dp-accounting``'s PLD accountant, which must agree; and the final
  epsilon is within the configured budget. ``summary.json`` must claim the ledger's epsilon.
- ``release-noise``: the server measured the noise it added (released minus the clipped sum).
  Gaussian noise of std s over d values has ``||noise||^2 / s^2`` chi-square with d degrees
  of freedom, which is sharply concentrated: the measured norm must lie inside the two-sided
  chi-square interval at a false-alarm rate of 1e-6 per run (Bonferroni over the releases).
  Noise switched off, or cut by more than the smallest detectable factor the report prints,
  fails.
  The released vector itself (``releases.npz``) must also keep the least norm that noise of
  the claimed std leaves a sum of any contributions drawn apart from it
  (:func:`released_norm_floor`): a server that adds less noise and records the norm of a
  full-size draw fails there when the devices' sum is small beside the noise (the
  co-occurrence release of MovieLens-100K: noise below about half the claimed shows).
- ``release-clipping``: every contribution's norm after the server's clip is at most the
  sensitivity 1; each device (pseudonym) is in each sum at most once; no release has more
  contributions than the population; ``releases.npz`` holds vectors of the recorded norms.

The served model is refitted as for every user-level release mechanism
(:mod:`server.audit.release_model`).

What it cannot see: noise that is Gaussian of the right size but reused or predictable, and
noise cut under a sum much larger than it (the server's measured norm is its word; the
released vector shows the cut only where the sum is small beside the noise: the report gives,
per release, the fraction of the claimed noise that could go unseen). The canary lower bound is
not run for these releases: it is INCONCLUSIVE here, never PASS.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from server.audit.release_model import (
    FALSE_ALARM_PER_RUN,
    audit_release_model,
    check_summary_epsilon,
    chi_square_interval,
    released_norm_floor,
)
from shared.privacy.accounting import dp_accounting_gaussian_epsilon, gaussian_epsilon, split_budget
from shared.privacy.ledger import Entry
from shared.releases import budget_shares
from shared.run_directory import RELEASES_FILE, RunDirectory

EPSILON_TOLERANCE = 1e-6  # relative; the closed form is exact, PLD within its discretisation
PLD_TOLERANCE = 0.01
CHECKS = ("release-accounting", "release-noise", "release-clipping", "release-model")


def _claim(value: float) -> float:
    return math.inf if value < 0 else float(value)


def audit_gaussian_releases(report, run: RunDirectory, header: dict[str, Any], entries: list[Entry], delta: float) -> None:
    """Accounting, noise, clipping and the served model of the server's Gaussian releases."""
    releases = [e for e in entries if e.kind == "release"]
    planned = header.get("user-level-releases", [])
    config = header["config"]
    budget = float(config["user-epsilon"])
    expected_stds = split_budget(budget, delta, budget_shares(config))
    _accounting(report, releases, planned, expected_stds, budget, delta, run)
    _noise(report, releases, run)
    _clipping(report, releases, int(header["population"]), run)
    audit_release_model(report, releases, config, run)
    report.figures["empirical lower bound"] = (
        "INCONCLUSIVE: no canaries are inserted into the user-level releases; the noise and clipping "
        "checks above are this mode's evidence"
    )


def _accounting(report, releases, planned, expected_stds, budget, delta, run: RunDirectory) -> None:
    check = "release-accounting"
    names = [p["release"] for p in planned]
    if [e.body.get("release") for e in releases] != names or [e.round for e in releases] != list(range(1, len(names) + 1)):
        report.fail(check, f"ledger releases {[e.body.get('release') for e in releases]} are not the planned {names}, in order")
    stds: list[float] = []
    last = 0.0
    for entry, expected in zip(releases, expected_stds):
        body, where = entry.body, f"release {entry.round} ({entry.body.get('release')})"
        std = float(body["noise-std"])
        if not math.isclose(std, expected, rel_tol=1e-9, abs_tol=1e-12):
            report.fail(check, f"{where}: noise std {std:.6g} is not the {expected:.6g} that user-epsilon {budget:g} gives")
        if float(body["sensitivity"]) != 1.0:
            report.fail(check, f"{where}: sensitivity {body['sensitivity']} is not 1")
        stds.append(std)
        claimed = _claim(float(body["user-level-epsilon"]))
        recomputed = gaussian_epsilon(stds, delta)
        if claimed < recomputed * (1 - EPSILON_TOLERANCE):
            report.fail(check, f"{where}: claims user-level epsilon {claimed:.4f} < recomputed {recomputed:.4f}")
        if math.isfinite(recomputed):
            pld = dp_accounting_gaussian_epsilon(stds, delta)
            if abs(pld - recomputed) > PLD_TOLERANCE * max(1.0, recomputed):
                report.fail(check, f"{where}: closed form {recomputed:.4f} and dp-accounting PLD {pld:.4f} disagree")
            if claimed < pld - PLD_TOLERANCE * max(1.0, pld):
                report.fail(check, f"{where}: claims {claimed:.4f}, below dp-accounting PLD {pld:.4f}")
        if claimed < last:
            report.fail("epsilon-monotone", f"{where}: user-level epsilon fell from {last:.4f} to {claimed:.4f}")
        last = claimed
        report.server_epsilons.append((entry.round, claimed))
    if stds and gaussian_epsilon(stds, delta) > budget * (1 + EPSILON_TOLERANCE):
        report.fail(check, f"the releases spend {gaussian_epsilon(stds, delta):.4f}, above user-epsilon {budget:g}")
    if releases:
        check_summary_epsilon(report, check, run, last)
    report.ok(check)
    report.figures["user-level epsilon"] = (
        f"{last:.3f} at delta {delta:g} after {len(releases)} releases (noise stds "
        + ", ".join(f"{s:.3f}" for s in stds) + "; closed form and dp-accounting PLD)"
        if math.isfinite(last) else "inf: the releases had no noise (NOT PRIVATE)"
    )


def _noise(report, releases, run: RunDirectory) -> None:
    """The server's measured noise norm against chi-square, and the released vector itself
    against the least norm the claimed noise leaves it (the second needs no trust in the
    server's measurement)."""
    check = "release-noise"
    tail = FALSE_ALARM_PER_RUN / (3 * max(1, len(releases)))  # two-sided measured norm, one-sided vector
    stored = run.load_arrays(RELEASES_FILE) if run.file(RELEASES_FILE).is_file() else {}
    power, reach = [], []
    for entry in releases:
        body, where = entry.body, f"release {entry.round} ({entry.body.get('release')})"
        std, dimension, measured = float(body["noise-std"]), int(body["dimension"]), float(body["noise-norm"])
        if std == 0.0:
            if measured != 0.0 or _claim(float(body["user-level-epsilon"])) != math.inf:
                report.fail(check, f"{where}: no noise claimed, yet noise norm {measured:.4g} or a finite epsilon recorded")
            continue
        low, high = chi_square_interval(dimension, tail)
        statistic = (measured / std) ** 2
        if not low <= statistic <= high:
            report.fail(
                check,
                f"{where}: noise norm {measured:.4g} is {measured / (std * math.sqrt(dimension)):.3f} x the expected "
                f"{std * math.sqrt(dimension):.4g} (std {std:.4g} over {dimension} values); outside "
                f"[{math.sqrt(low / dimension):.3f}, {math.sqrt(high / dimension):.3f}] at false alarm {FALSE_ALARM_PER_RUN:g}",
            )
        power.append(f"{body.get('release')}: noise below {math.sqrt(low / dimension):.3f} x claimed std")
        vector = stored.get(str(body.get("release")))
        if vector is None or vector.size != dimension:
            report.fail(check, f"{where}: releases.npz holds no released vector of {dimension} values to check the noise in")
            continue
        floor, norm = released_norm_floor(std, dimension, tail), float(np.linalg.norm(vector))
        if norm < floor:
            report.fail(
                check,
                f"{where}: the released vector's norm {norm:.4g} is below {floor:.4g}, the least that noise of std "
                f"{std:.4g} over {dimension} values leaves whatever the devices sent: the claimed noise was not added",
            )
        # The fraction of the claimed noise this release could have carried unseen, at the
        # devices' sum estimated from it (||s||^2 ~ ||released||^2 - std^2 d).
        signal = max(0.0, norm * norm - std * std * dimension)
        reach.append(f"{body.get('release')}: {math.sqrt(max(0.0, floor * floor - signal) / (std * std * dimension)):.2f}")
    report.ok(check)
    report.figures["noise check power"] = (
        "; ".join(power) + f" fails (false alarm {FALSE_ALARM_PER_RUN:g} per run)" if power else "no noisy release"
    )
    if reach:
        report.figures["released vectors vs claimed noise"] = (
            "noise cut below this fraction of the claimed std shows in the released vector itself, "
            "whatever the server measured (at the devices' sum estimated from the release; 0.00: the sum hides it): "
            + "; ".join(reach)
        )


def _clipping(report, releases, population: int, run: RunDirectory) -> None:
    check = "release-clipping"
    stored = {}
    path = run.file(RELEASES_FILE)
    if path.is_file():
        stored = run.load_arrays(RELEASES_FILE)
    elif releases:
        report.fail(check, f"{path}: missing: the released statistics are not in the run directory")
    for entry in releases:
        body, where = entry.body, f"release {entry.round} ({entry.body.get('release')})"
        if float(body["contribution-norm-max"]) > float(body["sensitivity"]) * (1 + 1e-6):
            report.fail(
                check,
                f"{where}: a contribution of norm {float(body['contribution-norm-max']):.4g} entered the sum "
                f"(sensitivity {body['sensitivity']}): clipping did not hold",
            )
        contributors = list(body.get("contributors", []))
        if len(set(contributors)) != len(contributors) or len(contributors) != int(body["contributions"]):
            report.fail(check, f"{where}: {int(body['contributions'])} contributions from {len(set(contributors))} distinct devices")
        if int(body["contributions"]) > population:
            report.fail(check, f"{where}: {body['contributions']} contributions from a population of {population}")
        name = str(body.get("release"))
        if name in stored and not math.isclose(float(np.linalg.norm(stored[name])), float(body["released-norm"]), rel_tol=1e-9):
            report.fail(check, f"{where}: releases.npz does not hold the released vector the ledger recorded")
    report.ok(check)
