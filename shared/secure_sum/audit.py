"""The audit's checks for ``user-noise = distributed`` runs: the evidence rests on the devices.

The server never measures the noise here (it cannot: it never sees a contribution), so the
claim is rebuilt from what each device signed it added:

- ``secure-plan``: each release ran under the plan the config gives (scale, rounding bound,
  share variance, threshold, minimum, colluders), recomputed here as every device recomputed it.
- ``secure-shares``: every counted contribution carries a valid signature of its device over
  its record (release, noise variance added, scale, bound, field, dimension, participants, the
  SHA-256 of the plan it followed, the masked vector's SHA-256); one contribution per
  device; no release below the minimum; every share at least the planned variance and every
  device on the config's plan (a device that added no share, or less, or was sent a weaker
  plan, fails by name). The epsilon is recomputed (Skellam RDP) from the signed shares less the
  ``colluders`` largest and one more (the removed user's own), and the ledger's claim must not
  be below it, nor the budget.
- ``secure-noise``: the unmasked sum carries the noise the devices signed. Its norm must keep the
  least norm that Skellam noise of the honest variance leaves a sum of any contributions drawn
  apart from it (Anderson's bound, as for ``user-noise = central``: a run whose devices add no
  noise and sign the full share fails here); and, since the ``N`` counted contributions have
  rounded norm at most the rounding bound ``b`` each, the realised noise norm lies within
  ``N b`` of the sum's norm (the triangle inequality), which must meet the chi-square interval
  of the sum of all the signed variances: less noise than signed, or more (a device that adds
  what it did not sign, a sum out of range), fails where ``N b`` is small beside the noise. The
  report prints both powers per release.
- ``secure-sum``: the recorded masked sum (kept as integers) is the sum of the survivors' masked
  vectors. The server committed to its SHA-256 at the consistency round, every signer signed that
  digest with the survivor set, and only then did each device sketch its masked vector with the
  random matrix the digest seeds (4 rows over Z_{2^64}) and sign the sketch; a device that sent
  no valid sketch has its whole masked vector recorded, held to the digest it signed with its
  input. The sketch of the recorded sum must be the sum of those sketches: any change to the sum
  that moves the release passes with probability at most 2^-132 per sum the server tries
  (SHA-256 and ChaCha20 taken as random functions), since it fixed the sum before the matrix
  existed. The honest devices' sketches are what bind: a colluding device can sign any sketch
  for itself, as it can mask any input. The survivors' neighbour graph is in one
  piece (else each piece's sum could have been unmasked apart); the keys recorded for dropped
  devices are the ones they advertised; unmasking the recorded sum with the recorded seeds and
  keys gives the recorded integer sum, and ``releases.npz`` holds that sum over the scale.

The consistency round's evidence is checked with ``secure-sum``: every device's public keys (the
release mask keys and the channel key in ``secure-sum.npz``) carry its identity key's signature,
every identity key is one of the devices' (a simulation's device folders, or the ``roster.json``
of a deployment's ``--node-keys`` folder), and each unmasked survivor set is signed by at least the
plan's minimum of distinct devices, as each device demanded before it revealed a share.

What it cannot see: a few devices that sign a share they did not add, where ``secure-noise``'s
window is wider than their missing noise (no zero-knowledge proof); and devices that lie about their
input inside the plausibility window (a promotion). These are the threat model's stated limits.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from shared.privacy.ledger import Entry
from shared.privacy.spend_signature import verify_record
from shared.run_directory import RELEASES_FILE, SECURE_FILE, RunDirectory
from shared.secure_sum import identity, masks
from shared.secure_sum.evidence import GROUP_OF_KEY, KeyEvidence, ReleaseEvidence, evidence_prefix
from shared.secure_sum.session import sketch_seed
from shared.releases import group_plan, group_sizes, planned_releases, secure_plan
from shared.releases.base import setting
from shared.secure_sum.groups import combine_trim, group_rosters, trimmed_total
from shared.secure_sum.plan import graph_parts, participant_graph
from shared.secure_sum.plausible import FALSE_ALARM_PER_RUN, noise_window, window_tail
from shared.secure_sum.quantise import from_field
from shared.secure_sum.unmask import unmasked_sum

CHECKS = ("secure-plan", "secure-shares", "secure-noise", "secure-sum")
SIGNED_KEYS = ("release", "index", "noise-variance", "scale", "bound", "field-bits", "dimension", "participants",
               "plan-sha256", "masked-sha256", "client", "identity")


def _number(value: Any) -> float:
    return math.inf if value in ("inf", None) else float(value)


def _where(entry: Entry) -> str:
    """How a report line names a release (and, with groups, the group's sum of it)."""
    group = f" group {entry.body['group']}" if "group" in entry.body else ""
    return f"release {entry.round} ({entry.body.get('release')}){group}"


def _evidence_name(body: dict[str, Any]) -> str:
    """The prefix of a release's arrays in secure-sum.npz: its name, or a group's own."""
    return str(body.get("evidence", body.get("release")))


def audit_secure(report, run: RunDirectory, header: dict[str, Any], releases: list[Entry], delta: float, node_keys=None) -> None:
    config = header["config"]
    names = [str(e.body.get("release")) for e in releases]
    if not releases:
        report.fail("secure-plan", "no release in the ledger")
        return
    budget = _number(config["user-epsilon"])
    planned = [r.name for r in planned_releases(config)]
    if names != planned[: len(names)]:
        report.fail("secure-plan", f"ledger releases {names} are not the planned {planned}, in order")
        return
    if int(setting(config, "secure-groups", 1)) > 1:
        _audit_groups(report, run, header, releases, delta, node_keys, budget)
        return
    try:
        plan = secure_plan(config, int(releases[0].body["devices"]), [int(e.body["dimension"]) for e in releases])
    except (KeyError, ValueError) as exc:
        report.fail("secure-plan", f"the plan cannot be recomputed from config and ledger: {exc}")
        return
    _plan(report, plan, releases)
    _shares(report, plan, releases, int(header["population"]), budget, delta, run, node_keys)
    _noise(report, plan, run, releases)
    _sums(report, run, releases)
    _identities(report, plan, run, releases, node_keys)


def _audit_groups(report, run: RunDirectory, header: dict[str, Any], releases: list[Entry], delta: float, node_keys,
                  budget: float) -> None:
    """``secure-groups`` above 1: each group's sums audited as a run of their own (its plan for
    its size, its signed shares and epsilon, its noise, its sums, sketches and signatures), the
    devices held to the groups the roster's order gives, and each release to the combination
    of its group sums; the claim must cover the costliest group's epsilon."""
    config = header["config"]
    count = int(setting(config, "secure-groups"))
    population = int(releases[0].body.get("devices", 0))
    dimensions = [int(e.body["dimension"]) for e in releases]
    recorded = [list(e.body.get("group-releases", [])) for e in releases]
    wrong = [e.round for e, groups in zip(releases, recorded) if len(groups) != count]
    if wrong:
        report.fail("secure-plan", f"releases {wrong} record {[len(g) for g in recorded]} group sums: secure-groups is {count}")
        return
    try:
        plans = [group_plan(config, population, size, dimensions) for size in group_sizes(population, count)]
    except (KeyError, ValueError) as exc:
        report.fail("secure-plan", f"the groups' plans cannot be recomputed from config and ledger: {exc}")
        return
    members = _group_members(report, run, node_keys, count)
    epsilons: list[list[float]] = []
    for g, plan in enumerate(plans):
        entries = [dataclasses.replace(e, body=groups[g]) for e, groups in zip(releases, recorded)]
        if any(int(e.body.get("group", -1)) != g or e.body.get("release") != top.body.get("release")
               or e.body.get("evidence") != evidence_prefix(str(top.body.get("release")), g) for e, top in zip(entries, releases)):
            report.fail("secure-plan", f"group {g}'s entries do not name group {g}, their release and its evidence")
            return
        _plan(report, plan, entries)
        epsilons.append(_shares(report, plan, entries, plan.devices, budget, delta, run, node_keys, top=False))
        _noise(report, plan, run, entries)
        _sums(report, run, entries, combined=True)
        _identities(report, plan, run, entries, node_keys, group=g, members=None if members is None else members[g])
    _combination(report, run, releases, recorded, count, str(setting(config, "secure-combine")))
    last = 0.0
    for k, entry in enumerate(releases):
        claimed = _number(entry.body["user-level-epsilon"]) if float(entry.body["user-level-epsilon"]) >= 0 else math.inf
        costliest = max(group[k] for group in epsilons)
        if claimed < costliest * (1 - 1e-9):
            report.fail("secure-shares", f"{_where(entry)}: claims user-level epsilon {claimed:.4f}, its costliest group's signed shares give {costliest:.4f}")
        last = _monotone(report, _where(entry), last, claimed)
        report.server_epsilons.append((entry.round, claimed))
    _epsilon_figures(report, run, last, delta, len(releases), f"in each of the {count} groups its colluders' shares")
    report.figures["secure plan"] = (
        f"{population} devices in {count} groups of {', '.join(str(p.devices) for p in plans)}, each its own secure sum "
        f"(a release needs {', '.join(str(p.min_survivors) for p in plans)}; {', '.join(str(p.colluders) for p in plans)} may "
        f"collude), released as their {setting(config, 'secure-combine')}; field 2^32"
    )


def _group_members(report, run: RunDirectory, node_keys, count: int) -> list[frozenset[str]] | None:
    """Each group's identity keys, from the roster and its seed as the devices drew them; each
    device recorded in the group its key falls in. None without a roster to hold them to."""
    check = "secure-sum"
    known = _known_identities(run, node_keys)
    if not run.file(SECURE_FILE).is_file():
        return None  # _sums fails it
    evidence = run.load_arrays(SECURE_FILE)
    names = (GROUP_OF_KEY, KeyEvidence.key("identity_keys"), KeyEvidence.key("run_id"))
    if any(name not in evidence for name in names) or evidence[GROUP_OF_KEY].shape != (evidence[names[1]].shape[0],) or not (
            (evidence[GROUP_OF_KEY] >= -1) & (evidence[GROUP_OF_KEY] < count)).all():
        report.fail(check, f"{SECURE_FILE} records no group of each device: the groups cannot be held to the roster")
        return None
    if known is None:
        report.figures["groups"] = "not held to a roster (none in the run directory or --node-keys): each device's group is the server's word"
        return None
    report.figures["groups"] = f"each device in the group of {count} that the roster's order gives it"
    arcs = group_rosters(sorted(known.keys), known.graph_seed(str(evidence[names[2]])), count)
    group_of = {key: g for g, arc in enumerate(arcs) for key in arc}
    for i, (row, recorded) in enumerate(zip(evidence["identity-keys"], evidence[GROUP_OF_KEY])):
        if row.any() and group_of.get(bytes(row).hex(), -1) != int(recorded):
            report.fail(check, f"device {i}: recorded in group {int(recorded)}, the roster's order puts it in group "
                               f"{group_of.get(bytes(row).hex(), -1)}: the server chose who sums with whom")
    return arcs


def _combination(report, run: RunDirectory, releases: list[Entry], recorded: list[list[dict[str, Any]]], count: int, combine: str) -> None:
    """Each release in ``releases.npz`` is the combination (median or sum) of its groups'
    unmasked sums, each over its own scale."""
    check = "secure-sum"
    if not run.file(SECURE_FILE).is_file() or not run.file(RELEASES_FILE).is_file():
        return  # _sums fails it
    evidence, released = run.load_arrays(SECURE_FILE), run.load_arrays(RELEASES_FILE)
    for entry, groups in zip(releases, recorded):
        name = str(entry.body["release"])
        keys = [ReleaseEvidence.key("unmasked", _evidence_name(body)) for body in groups]
        if any(key not in evidence for key in keys):
            continue  # _sums names the missing array
        sums = [np.asarray(evidence[key], dtype=np.float64) / float(body["scale"]) for key, body in zip(keys, groups)]
        shapes = {s.shape for s in sums} | ({released[name].shape} if name in released else set())
        expected = trimmed_total(np.stack(sums), combine_trim(combine, count)) if len(shapes) == 1 else None
        if name not in released or expected is None or not np.allclose(released[name], expected, rtol=0, atol=1e-9):
            report.fail(check, f"{_where(entry)}: releases.npz does not hold the {combine} of the {count} group sums")


def _plan(report, plan, releases) -> None:
    check = "secure-plan"
    for entry in releases:
        body, where = entry.body, _where(entry)
        wanted = plan.release(str(body["release"]))
        pairs = {
            "scale": (float(body["scale"]), wanted.scale), "rounding-bound": (float(body["rounding-bound"]), wanted.bound),
            "share-variance": (float(body["share-variance"]), wanted.share_variance),
            "min-survivors": (int(body["min-survivors"]), plan.min_survivors), "threshold": (int(body["threshold"]), plan.threshold),
            "colluders": (int(body["colluders"]), plan.colluders), "devices": (int(body["devices"]), plan.devices),
        }
        for key, (recorded, expected) in pairs.items():
            if not math.isclose(recorded, expected, rel_tol=1e-9, abs_tol=1e-12):
                report.fail(check, f"{where}: {key} {recorded:.6g} is not the plan's {expected:.6g}")
    report.ok(check)
    report.figures["secure plan"] = (
        f"{plan.devices} devices, {plan.neighbours} neighbours each, threshold {plan.threshold}, a release needs "
        f"{plan.min_survivors}, {plan.colluders} may collude; field 2^32"
    )


def _shares(report, plan, releases, population: int, budget: float, delta: float, run: RunDirectory, node_keys=None,
            top: bool = True) -> list[float]:
    """The signed records and the epsilon they give, per release (returned). ``top``: these are
    the run's releases (not one group's sums of them): the summary and the figure follow them."""
    from server.audit.signatures import _device_keys, authorised_keys

    own_keys = _device_keys(run)  # a simulated device's key, from its state folder
    authorised = authorised_keys(node_keys) if node_keys else None  # a deployment's SuperNodes'
    first_key: dict[str, str] = {}
    check = "secure-shares"
    honest: list[float] = []
    last = 0.0
    recomputed_of: list[float] = []
    for entry in releases:
        body, where = entry.body, _where(entry)
        wanted = plan.release(str(body["release"]))
        signed = list(body.get("signed", []))
        contributors = [str(r.get("client")) for r in signed]
        if len(signed) != int(body["contributions"]) or contributors != list(body.get("contributors", [])):
            report.fail(check, f"{where}: {int(body['contributions'])} contributions counted, {len(signed)} signed records")
        if len(set(contributors)) != len(contributors) or len({r.get("index") for r in signed}) != len(signed):
            report.fail(check, f"{where}: a device is counted twice ({len(signed)} records, {len(set(contributors))} devices)")
        if len(signed) < plan.min_survivors:
            report.fail(check, f"{where}: {len(signed)} devices contributed, below the minimum {plan.min_survivors}: this release should have been aborted")
        if len(signed) > population:
            report.fail(check, f"{where}: {len(signed)} contributions from a population of {population}")
        for record in signed:
            fields = {k: record.get(k) for k in SIGNED_KEYS}
            who = f"{where}: device {record.get('client')}"
            key, identity = str(record.get("public-key", "")), str(record.get("identity", ""))
            if not record.get("signature") or not verify_record(key, fields, str(record["signature"])):
                report.fail(check, f"{who}: its record is not signed by its key")
            if first_key.setdefault(identity, key) != key:
                report.fail(check, f"{who}: device {identity} signed with another key than in its first release")
            if identity in own_keys and own_keys[identity] != key:
                report.fail(check, f"{who}: signed with a key that is not simulated device {identity}'s own")
            if authorised is not None and key not in authorised:
                report.fail(check, f"{who}: signed with a key that is not one of the authorised SuperNodes' in {node_keys}")
            if (record.get("release") != body["release"] or int(record.get("dimension", -1)) != wanted.dimension
                    or not math.isclose(float(record.get("scale", 0)), wanted.scale) or not math.isclose(float(record.get("bound", 0)), wanted.bound)
                    or int(record.get("field-bits", 0)) != 32):
                report.fail(check, f"{who}: signed release, dimension, scale, bound or field differ from the plan")
            if record.get("plan-sha256") != plan.digest():
                report.fail(check, f"{who}: signed a plan other than the one the run's config gives (its noise share, threshold or minimum)")
            if float(record.get("noise-variance", 0.0)) < wanted.share_variance * (1 - 1e-9):
                report.fail(
                    check,
                    f"{who}: signed a noise share of variance {float(record.get('noise-variance', 0.0)):.6g}, below the "
                    f"planned {wanted.share_variance:.6g}",
                )
        variances = sorted(float(r.get("noise-variance", 0.0)) for r in signed)
        realised = float(sum(variances[: max(0, len(variances) - plan.uncounted)]))
        if not math.isclose(realised, float(body["honest-variance"]), rel_tol=1e-9, abs_tol=1e-9):
            report.fail(check, f"{where}: honest variance {float(body['honest-variance']):.6g} recorded, the signed shares give {realised:.6g}")
        honest.append(realised)
        recomputed = plan.epsilon(honest)
        recomputed_of.append(recomputed)
        claimed = _number(body["user-level-epsilon"]) if float(body["user-level-epsilon"]) >= 0 else math.inf
        if claimed < recomputed * (1 - 1e-9):
            report.fail(check, f"{where}: claims user-level epsilon {claimed:.4f}, the signed shares give {recomputed:.4f}")
        last = _monotone(report, where, last, claimed)
        if top:
            report.server_epsilons.append((entry.round, claimed))
    if honest and plan.epsilon(honest) > budget * (1 + 1e-9):
        where = f" in group {releases[0].body['group']}" if "group" in releases[0].body else ""
        report.fail(check, f"the signed shares give user-level epsilon {plan.epsilon(honest):.4f}{where}, above user-epsilon {budget:g}")
    report.ok(check)
    if top:
        _epsilon_figures(report, run, last, delta, len(releases), f"the {plan.colluders} colluders' shares")
    return recomputed_of


def _monotone(report, where: str, last: float, claimed: float) -> float:
    """A release's claim may not fall below the one before it; returns the claim."""
    if claimed < last:
        report.fail("epsilon-monotone", f"{where}: user-level epsilon fell from {last:.4f} to {claimed:.4f}")
    return claimed


def _epsilon_figures(report, run: RunDirectory, last: float, delta: float, count: int, uncounted: str) -> None:
    """The run summary's epsilon held to the last release's, and the report's epsilon line."""
    from server.audit.release_model import check_summary_epsilon

    check_summary_epsilon(report, "secure-shares", run, last)
    report.figures["user-level epsilon"] = (
        f"{last:.3f} at delta {delta:g} after {count} releases, recomputed from the devices' signed noise shares "
        f"(Skellam RDP; {uncounted} and the removed user's own not counted); whom you trust: no single party"
        if math.isfinite(last) else "inf: the releases had no noise (NOT PRIVATE)"
    )


def _noise(report, plan, run: RunDirectory, releases) -> None:
    """The unmasked sums against the noise the devices signed (see the module docstring): the
    window is :func:`shared.secure_sum.plausible.noise_window`, the line the server aborts at."""
    from server.audit.release_model import released_norm_floor

    check = "secure-noise"
    if not run.file(SECURE_FILE).is_file():
        report.fail(check, f"{run.file(SECURE_FILE)}: missing: the unmasked sums cannot be held against the signed noise")
        return
    evidence = run.load_arrays(SECURE_FILE)
    tail = window_tail(len(releases))  # floor, and the window's two sides
    floors, windows = [], []
    for entry in releases:
        body, name = entry.body, str(entry.body.get("release"))
        where = _where(entry)
        variances = sorted(float(r.get("noise-variance", 0.0)) for r in body.get("signed", []))
        honest, total = float(sum(variances[: max(0, len(variances) - plan.uncounted)])), float(sum(variances))
        if total <= 0.0:
            continue  # no noise claimed: the accounting says inf (NOT PRIVATE)
        unmasked = ReleaseEvidence.key("unmasked", _evidence_name(body))
        if unmasked not in evidence:
            report.fail(check, f"{where}: {SECURE_FILE} holds no unmasked sum to check the noise in")
            continue
        dimension = int(plan.release(name).dimension)
        norm = float(np.linalg.norm(np.asarray(evidence[unmasked], dtype=np.float64)))
        floor = released_norm_floor(math.sqrt(honest), dimension, tail)
        if norm < floor:
            report.fail(
                check,
                f"{where}: the unmasked sum's norm {norm:.6g} is below {floor:.6g}, the least that the signed honest noise "
                f"(variance {honest:.6g} over {dimension} values) leaves whatever the devices sent: the signed noise was not added",
            )
        signal = len(variances) * float(plan.release(name).bound)  # the contributions' norm, at most
        least, most = noise_window(total, len(variances), float(plan.release(name).bound), dimension, tail)
        if norm < least:
            report.fail(
                check,
                f"{where}: the realised noise norm is at most {norm + signal:.6g}, below {least + signal:.6g}, the least "
                f"that the {len(variances)} signed shares (variance {total:.6g} in all) give: the devices added less noise than they signed",
            )
        if norm > most:
            report.fail(
                check,
                f"{where}: the realised noise norm is at least {norm - signal:.6g}, above {most - signal:.6g}, the most "
                f"that the {len(variances)} signed shares (variance {total:.6g} in all) give: more noise than signed, or a sum "
                "no contributions of the planned bound can make",
            )
        floors.append(f"{name}: {floor / math.sqrt(honest * dimension):.3f}")
        windows.append(f"{name}: +-{signal / math.sqrt(total * dimension):.3f}")
    report.ok(check)
    report.figures["secure noise check power"] = (
        "an unmasked sum fails when its honest noise is below these fractions of the signed (Anderson's bound, any sum): "
        + "; ".join(floors) + "; the realised noise norm is measured to within these fractions of its expected size, "
        "and must meet the signed shares' chi-square interval: " + "; ".join(windows)
        + f" (false alarm {FALSE_ALARM_PER_RUN:g} per run)"
        if floors else "no noisy release"
    )


def _known_identities(run: RunDirectory, node_keys) -> identity.Roster | None:
    """The devices' identity keys the audit can hold signers to: a deployment's roster (in the
    ``--node-keys`` folder ``fedmmrec deploy certs`` wrote), else the simulated devices' own."""
    if node_keys and (Path(node_keys) / "roster.json").is_file():
        return identity.roster_from_file(Path(node_keys) / "roster.json")
    keys = [folder / identity.IDENTITY_KEY_FILE for folder in run.device_folders().values()]
    found = frozenset(identity.identity_public_from_file(k) for k in keys if k.is_file())
    return identity.Roster(found) if found else None


def _identities(report, plan, run: RunDirectory, releases, node_keys, group: int | None = None,
                members: frozenset[str] | None = None) -> None:
    """The consistency round's evidence: every device's public keys signed by its identity key,
    and each unmasked survivor set signed by at least the minimum of distinct devices. With
    ``secure-groups``, of one ``group``: the devices recorded in it, whose roster is ``members``
    (the identity keys the roster's order puts there; None without a roster)."""
    check = "secure-sum"
    if not run.file(SECURE_FILE).is_file():
        return  # _sums has failed it already
    evidence = run.load_arrays(SECURE_FILE)
    try:
        keys = KeyEvidence.of(evidence)
    except KeyError:
        report.fail(check, f"{SECURE_FILE} holds no identity evidence (identity keys, run id): the survivor sets cannot be checked")
        return
    run_id, known = str(keys.run_id), _known_identities(run, node_keys)
    inside = _recorded_group(evidence, group, keys.identity_keys.shape[0])
    if known is not None and members is not None:
        known = identity.Roster(members, known.seed)
    participants = {i: bytes(row).hex() for i, row in enumerate(keys.identity_keys) if row.any() and i in inside}
    digest = identity.participants_digest(participants)
    if known is not None:
        drawn = participant_graph(str(keys.graph_seed), participants, plan.neighbours, known)
        recorded = {i: sorted(int(v) for v in keys.neighbours[i] if v >= 0) for i in participants}
        if drawn != recorded or (known.seed and str(keys.graph_seed) != known.seed):
            report.fail(check, "the recorded neighbour graph is not the one the participants, the roster and its seed determine")
    publics = {r.name: evidence[ReleaseEvidence.key("mask_publics", evidence_prefix(r.name, group))] for r in plan.releases
               if ReleaseEvidence.key("mask_publics", evidence_prefix(r.name, group)) in evidence}
    seen: dict[str, int] = {}
    shared = sorted(i for i, row in enumerate(keys.identity_keys)
                    if row.any() and i in inside and seen.setdefault(bytes(row).hex(), i) != i)
    if shared:
        report.fail(check, f"devices {shared[:5]} have the identity key of another device: one party in several places of the graph")
    for i, row in enumerate(keys.identity_keys):
        if not row.any() or i not in inside:
            continue  # took no part (in this group)
        who = bytes(row).hex()
        if known is not None and who not in known:
            report.fail(check, f"device {i}: its identity key is not one of the devices' identity keys")
        if len(publics) == len(plan.releases):
            bundle = identity.key_bundle_message(
                run_id, i, b"".join(bytes(rows[i]) for rows in publics.values()), bytes(keys.channel_publics[i]))
            if not identity.verify(who, bytes(keys.key_signatures[i]), bundle):
                report.fail(check, f"device {i}: its public keys in {SECURE_FILE} are not signed by its identity key")
    for entry in releases:
        name = str(entry.body["release"])
        where = _where(entry)
        try:
            release = ReleaseEvidence.of(evidence, _evidence_name(entry.body))
        except KeyError:
            continue  # _sums names the missing array
        survivors = [int(v) for v in release.survivors]
        message = identity.survivors_message(run_id, name, survivors, digest, masks.sum_digest(release.masked_sum))
        signers = [bytes(row).hex() for row in release.signers]
        valid = {who for who, sig in zip(signers, release.signatures) if identity.verify(who, bytes(sig), message)}
        if len(valid) < plan.min_survivors:
            report.fail(check, f"{where}: {len(valid)} distinct devices signed the unmasked survivor set and masked sum, below the minimum "
                               f"{plan.min_survivors}: the devices would have refused to unmask it")
        strangers = sorted(valid - known.keys) if known is not None else []
        if strangers:
            report.fail(check, f"{where}: the survivor set is signed by {len(strangers)} keys that are not the devices' identity keys")
    report.figures["survivor sets"] = (
        f"each release's unmasked survivor set signed by at least {plan.min_survivors} distinct devices' identity keys"
        + ("" if known is not None else " (not held to a roster: none in the run directory or --node-keys)")
    )


def _recorded_group(evidence, group: int | None, devices: int) -> set[int]:
    """The protocol indices recorded in ``group`` (every index without groups)."""
    if group is None:
        return set(range(devices))
    return {i for i, g in enumerate(np.asarray(evidence.get(GROUP_OF_KEY, []), dtype=np.int64)) if g == group}


def _sums(report, run: RunDirectory, releases, combined: bool = False) -> None:
    """Each recorded sum against its evidence; ``combined``: the releases are combinations of
    group sums (held to ``releases.npz`` by :func:`_combination`, not each sum)."""
    check = "secure-sum"
    if not run.file(SECURE_FILE).is_file() or not run.file(RELEASES_FILE).is_file():
        report.fail(check, f"{run.file(SECURE_FILE)} or {RELEASES_FILE}: missing: the secure sums cannot be checked")
        return
    evidence, released = run.load_arrays(SECURE_FILE), run.load_arrays(RELEASES_FILE)
    try:
        run_keys = KeyEvidence.of(evidence)
    except KeyError as exc:
        report.fail(check, f"{SECURE_FILE} lacks {exc}: the secure sums cannot be checked")
        return
    neighbours = {i: [int(v) for v in row if v >= 0] for i, row in enumerate(run_keys.neighbours)}
    for entry in releases:
        body, name = entry.body, str(entry.body["release"])
        where = _where(entry)
        try:
            release = ReleaseEvidence.of(evidence, _evidence_name(body))
        except KeyError as exc:
            report.fail(check, f"{where}: {SECURE_FILE} lacks {exc}")
            continue
        total, recorded = release.masked_sum, release.unmasked
        survivors, dropped = [int(v) for v in release.survivors], [int(v) for v in release.dropped]
        seeds = {u: bytes(row) for u, row in zip(survivors, release.seeds)}
        keys = {v: bytes(row) for v, row in zip(dropped, release.dropped_keys)}
        publics = {i: bytes(row) for i, row in enumerate(release.mask_publics)}
        signed = list(body.get("signed", []))
        if sorted(int(r["index"]) for r in signed) != survivors:
            report.fail(check, f"{where}: the unmasked survivors are not the devices that signed an input")
        if graph_parts(survivors, neighbours) > 1:
            report.fail(check, f"{where}: the survivors' neighbour graph is split: each part's sum could be unmasked apart")
        forged = [v for v, key in keys.items() if masks.public_key(key) != publics.get(v)]
        if forged:
            report.fail(check, f"{where}: the mask keys recorded for dropped devices {forged[:5]} are not the keys they advertised")
        if total.dtype != np.uint64:
            report.fail(check, f"{where}: the masked sum is not kept as integers (uint64): a run from before the committed sketch cannot be checked")
            continue
        _sketches(report, where, release, run_keys, name, sorted(survivors + dropped), signed)
        unmasked = from_field(unmasked_sum(total.astype(np.uint32), name, survivors, seeds, keys, publics, neighbours))
        if not np.array_equal(unmasked, np.asarray(recorded, dtype=np.int64)):
            report.fail(check, f"{where}: unmasking the recorded sum with the recorded seeds and keys does not give the recorded sum")
        if not combined and (name not in released or not np.allclose(released[name], unmasked / float(body["scale"]), rtol=0, atol=1e-9)):
            report.fail(check, f"{where}: releases.npz does not hold the unmasked sum over the scale")
    report.ok(check)


def _sketches(report, where: str, release: ReleaseEvidence, run_keys: KeyEvidence, name: str, participants: list[int],
              signed: list[dict[str, Any]]) -> None:
    """The recorded masked sum is the sum of the survivors' masked vectors: its sketch, with the
    matrix its own SHA-256 seeds (the devices signed that digest before drawing the matrix), is
    the sum of the devices' signed sketches and of the sketches of the vectors recorded whole
    (each the one its device signed with its input). What binds is the honest devices' sketches:
    a device colluding with the server can sign any sketch for itself, which moves the sum no
    more than that device lying about its input could."""
    check = "secure-sum"
    total, sketched, unsketched = release.masked_sum, [int(v) for v in release.sketched], [int(v) for v in release.unsketched]
    if sorted(sketched + unsketched) != sorted(int(v) for v in release.survivors):
        report.fail(check, f"{where}: the sketched devices and the vectors recorded whole are not the survivors, each once")
        return
    shapes = {"sketches": (release.sketches, (len(sketched), masks.SKETCH_BYTES), np.uint8),
              "sketch-signatures": (release.sketch_signatures, (len(sketched), 64), np.uint8),
              "unsketched-vectors": (release.unsketched_vectors, (len(unsketched), total.size), np.uint32),
              "identity-keys": (run_keys.identity_keys, (run_keys.identity_keys.shape[0], 32), np.uint8)}
    wrong = [key for key, (array, shape, dtype) in shapes.items() if array.shape != shape or array.dtype != dtype]
    if wrong or any(not 0 <= i < run_keys.identity_keys.shape[0] for i in sketched):
        report.fail(check, f"{where}: the sketch evidence ({', '.join(wrong) or 'the sketched indices'}) is not one row per device of "
                           "the right width and type: the sum cannot be held to the sketches")
        return
    committed, run_id = masks.sum_digest(total), str(run_keys.run_id)
    matrix = masks.sketch_matrix(sketch_seed(name, participants, committed), total.size)
    expected = np.zeros(masks.SKETCH_ROWS, dtype=np.uint64)
    for i, blob, signature in zip(sketched, release.sketches, release.sketch_signatures):
        who = bytes(run_keys.identity_keys[i]).hex()
        if not identity.verify(who, bytes(signature), identity.sketch_message(run_id, name, i, committed, bytes(blob))):
            report.fail(check, f"{where}: device {i}'s sketch is not signed by its identity key under the recorded masked sum")
        expected += masks.sketch_of_bytes(bytes(blob))
    digests = {int(r["index"]): r.get("masked-sha256") for r in signed}
    for u, vector in zip(unsketched, release.unsketched_vectors):
        if masks.digest(vector) != digests.get(u):
            report.fail(check, f"{where}: the masked vector recorded for device {u} is not the one it signed with its input")
        expected += masks.sketch(matrix, vector)
    if not np.array_equal(masks.sketch(matrix, total), expected):
        report.fail(check, f"{where}: the recorded masked sum is not the sum of the devices' masked vectors (sketched with the "
                           "matrix drawn from the sum's own digest, which the devices signed before it was drawn)")


def audit_secure_releases(
    report, run: RunDirectory, header: dict[str, Any], entries: list[Entry], delta: float, node_keys=None
) -> None:
    """This mechanism's audit: the secure sum's checks above and the served model's refit."""
    from server.audit.release_model import audit_release_model

    releases = [e for e in entries if e.kind == "release"]
    audit_secure(report, run, header, releases, delta, node_keys)
    audit_release_model(report, releases, header["config"], run)
    report.figures["empirical lower bound"] = (
        "INCONCLUSIVE: no canaries are inserted into the user-level releases; the devices' signed shares are this mode's evidence"
    )
