"""``fedmmrec audit RUN_DIR``: check a run's privacy claims from its run directory alone.

Checks (each named in the report; any failure makes the audit fail):
0. ``mechanism-known``: the ledger header's run config names a registered privacy mechanism,
   the header states its mode, unit, neighbouring relation, server-side DP and trust, and the
   ledger holds no entries of another mechanism's kind.
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
7. ``server-accounting`` (DP-FedAvg, :mod:`server.mechanisms.dp_fedavg.audit`): every round is in the
   ledger, its mechanism (clip, noise std, rate, denominator) is the configured one, its
   history is the composition of the rounds so far, and its user-level epsilon is not below
   RDP, PRV or PLD.
8. ``release-accounting``, ``release-noise``, ``release-clipping``, ``release-model``
   (Gaussian releases), or the secure sum's checks (Skellam releases):
   :mod:`server.mechanisms.gaussian_releases.audit`, :mod:`shared.secure_sum.audit`, and the
   served model refitted alike for both (:mod:`server.audit.release_model`).
9. ``empirical-lower-bound`` (DP-FedAvg runs with canaries): the canary file matches the
   ledger's commitment, and the one-run lower bound (Steinke et al. 2023) does not exceed the
   claimed user-level epsilon.
Clients with sample rate 1 (no amplification by sampling) are flagged, not failed.
"""

from __future__ import annotations

from pathlib import Path

from server.audit.clients import audit_clients
from server.audit.report import AuditReport, to_html, to_markdown
from server.mechanisms import mechanism_of_ledger
from shared.config import from_saved
from shared.privacy.ledger import verify_chain
from shared.run_directory import RunDirectory


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
    _check_mechanism_words(report, mechanism, header, entries)
    report.ok("mechanism-known")
    report.limits.update(mechanism.check_limits)
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

    _malformed_fails(report, "noise-conformance", audit_conformance, report, header, entries, run)
    _malformed_fails(report, "epsilon-recomputed", audit_clients, report, entries, delta, gaps, header.get("config", {}).get("local-epochs"))
    _check_no_batchnorm(run, report)
    servers = [e for e in entries if e.kind == "server-round"]
    _malformed_fails(report, "mechanism-known", mechanism.audit, report, run, header, entries, delta, gaps, node_keys)
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


def _malformed_fails(report: AuditReport, check: str, run_checks, *args) -> None:
    """Run a family of checks; a ledger entry without a field they read (a server that wrote
    its ledger by hand) fails ``check`` with the field's name instead of stopping the audit."""
    try:
        run_checks(*args)
    except (KeyError, TypeError, ValueError) as exc:
        report.fail(check, f"a ledger entry lacks or garbles a field these checks read ({type(exc).__name__}: {exc})")


def _check_mechanism_words(report: AuditReport, mechanism, header: dict, entries: list) -> None:
    """The header's own words and the ledger's entries must be the mechanism's: a header that
    names one mode in its config and states another's unit, server-side DP or trust would have
    the report lead with a claim nobody checked; entries of another mechanism's kind would go
    unchecked."""
    check = "mechanism-known"
    expected = {"privacy-mode": mechanism.mode, "privacy-unit": mechanism.unit, "neighbouring-relation": mechanism.neighbours,
                "server-dp": mechanism.central_dp}
    for key, value in expected.items():
        if key in header and header[key] != value:
            report.fail(check, f"ledger header's {key} {header[key]!r} is not {mechanism.name}'s {value!r}")
    if "trust" in header:
        try:
            trust = mechanism.trust if isinstance(mechanism.trust, str) else mechanism(from_saved(header.get("config", {}))).trust
        except ValueError as exc:
            report.fail(check, f"ledger header's config is not one {mechanism.name} runs under: {exc}")
        else:
            if header["trust"] != trust:
                report.fail(check, f"ledger header's trust {header['trust']!r} is not {mechanism.name}'s {trust!r}")
    foreign = sorted({e.kind for e in entries if e.kind in mechanism.foreign_entries})
    noised = [e.round for e in entries if e.kind == "server-round" and e.body.get("server-dp")]
    if foreign:
        report.fail(check, f"the ledger holds {', '.join(foreign)} entries, which {mechanism.name} never writes")
    if noised and not mechanism.central_dp:
        report.fail(check, f"server rounds {noised[:5]} claim server-side DP, which {mechanism.name} does not run")


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
