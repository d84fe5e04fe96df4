"""The default mode's audit (``user-noise = distributed``): every line it can fail with, each made
to fail by a rewritten copy of a real run or by a real run whose devices lie.

The base run is real: 12 devices through the in-process engine (the same server and ClientApp
code), one dropping before its first input (so a dropped device's key is rebuilt), one dropping
at unmasking. A rewrite is what a server that controls its own files can do: edit the ledger
(with a valid hash chain), the evidence (``secure-sum.npz``), the releases or the summary, or
re-sign a record with a simulated device's own key (a device that lies about what it added).
Each case asserts the exact line the audit prints; the last test holds the set of lines the
audit's source can emit to the set of cases, so a new check without a failing test fails here.
"""

from __future__ import annotations

import ast
import json
import math
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from server.audit import audit
from server.audit.release_model import FALSE_ALARM_PER_RUN, chi_square_interval, released_norm_floor
from shared.privacy.spend_signature import KEY_FILE, load_or_create_key, public_pem, sign_record
from shared.run_directory import RunDirectory, read_ledger
from shared.secure_sum.plan import make_plan
from simulations.engines.simulate import simulate

SOURCE = Path(__file__).resolve().parents[1] / "shared" / "secure_sum" / "audit.py"
SIGNED_KEYS = ("release", "index", "noise-variance", "scale", "bound", "field-bits", "dimension", "participants",
               "plan-sha256", "masked-sha256", "client", "identity")
NAMES = ["popularity", "cooccurrence", "selection"]


def _run(small_dataset, feature_cache, runs: Path, run_id: str, faults: str = "dropinput:2 dropconfirm:4 dropunmask:7", **extra) -> Path:
    return simulate(
        {"data-dir": str(small_dataset), "feature-cache": str(feature_cache), "run-dir": str(runs), "run-id": run_id,
         "privacy": "user", "user-noise": "distributed", "secure-dropout": 0.2, "secure-neighbours": 8, **extra},
        engine="in-process", faults=faults,
    )


@pytest.fixture(scope="module")
def base_run(small_dataset, feature_cache, tmp_path_factory) -> Path:
    run = _run(small_dataset, feature_cache, tmp_path_factory.mktemp("secure-audit"), "base")
    report = audit(run)
    assert report.passed, report.failures
    return run


GROUPED = {"secure-groups": 3, "secure-combine": "median"}


@pytest.fixture(scope="module")
def grouped_dataset(tmp_path_factory) -> Path:
    """30 users: three groups of 10, each a secure sum that tolerates its dropouts."""
    from shared.data.synth import SynthConfig, generate

    return generate(tmp_path_factory.mktemp("synth30") / "thirty", SynthConfig(users=30, items=120, seed=3, mean_interactions=30))


@pytest.fixture(scope="module")
def grouped_run(grouped_dataset, feature_cache, tmp_path_factory) -> Path:
    """The base run's faults, with the roster cut into three groups released as their median."""
    run = _run(grouped_dataset, feature_cache, tmp_path_factory.mktemp("secure-audit-groups"), "grouped", **GROUPED)
    report = audit(run)
    assert report.passed, report.failures
    return run


# --- what a rewrite can change ----------------------------------------------------------------


class Copy:
    """A copy of the base run to tamper with, through the files a server writes."""

    def __init__(self, run: Path, where: Path) -> None:
        self.path = where / "copy"
        shutil.copytree(run, self.path)
        self.run = RunDirectory.open(self.path)

    def entries(self):
        return self.run.read_ledger()

    def releases(self) -> list[dict]:
        return [e.body for e in self.entries() if e.kind == "release"]

    def rewrite_ledger(self, edit: Callable[[list], list]) -> None:
        """The ledger written anew from ``edit([(kind, round, body), ...])``, its chain valid."""
        rows = edit([(e.kind, e.round, dict(e.body)) for e in self.entries()])
        self.run.ledger_path.unlink()
        ledger = self.run.open_ledger()
        for row in rows:
            ledger.append([row])
        ledger.close()

    def edit_release(self, number: int, edit: Callable[[dict], None]) -> None:
        def apply(rows):
            for kind, round_, body in rows:
                if kind == "release" and round_ == number:
                    edit(body)
            return rows

        self.rewrite_ledger(apply)

    def edit_header(self, edit: Callable[[dict], None]) -> None:
        def apply(rows):
            for kind, _, body in rows:
                if kind == "header":
                    edit(body)
            return rows

        self.rewrite_ledger(apply)

    def edit_arrays(self, name: str, edit: Callable[[dict], None]) -> None:
        path = self.path / name
        arrays = dict(np.load(path))
        edit(arrays)
        np.savez(path, **arrays)

    def set_row(self, key: str, index: int, row: np.ndarray) -> None:
        """Row ``index`` of ``secure-sum.npz``'s array ``key`` replaced by ``row``."""
        def edit(arrays):
            rows = arrays[key].copy()
            rows[index] = row
            arrays[key] = rows

        self.edit_arrays("secure-sum.npz", edit)

    def evidence(self) -> dict:
        return dict(np.load(self.path / "secure-sum.npz"))

    def device_key(self, identity: str):
        return load_or_create_key(self.path / "devices" / identity / KEY_FILE)


def resign(record: dict, key) -> None:
    """``record`` signed again, as its device signs: what a lying device can do."""
    record["signature"] = sign_record(key, {k: record.get(k) for k in SIGNED_KEYS})
    record["public-key"] = public_pem(key)


def _where(number: int) -> str:
    return f"release {number} ({NAMES[number - 1]})"


def _plan_of(copy: Copy, **config):
    header = next(e.body for e in copy.entries() if e.kind == "header")
    c = {**header["config"], **config}
    dims = [int(b["dimension"]) for b in copy.releases()]
    share = float(c["popularity-budget-share"]), float(c["selection-budget-share"])
    return make_plan(12, NAMES, dims, [share[0], 1 - sum(share), share[1]], float(c["user-epsilon"]), 1e-5,
                     int(c["secure-neighbours"]), float(c["secure-dropout"]), float(c["secure-colluders"]))


def _tail(copy: Copy) -> float:
    return FALSE_ALARM_PER_RUN / (3 * len(copy.releases()))


# --- the cases: (id, check, tamper(copy) -> the exact line) --------------------------------------


def no_release(c: Copy) -> str:
    c.rewrite_ledger(lambda rows: [r for r in rows if r[0] != "release"])
    return "no release in the ledger"


def releases_not_the_planned(c: Copy) -> str:
    c.rewrite_ledger(lambda rows: [r for r in rows if not (r[0] == "release" and r[1] == 1)])
    return f"ledger releases {NAMES[1:]} are not the planned {NAMES}, in order"


def plan_not_recomputable(c: Copy) -> str:
    c.edit_header(lambda h: h["config"].update({"secure-neighbours": 2}))
    with pytest.raises(ValueError) as why:
        _plan_of(c)
    return f"the plan cannot be recomputed from config and ledger: {why.value}"


def threshold_not_the_plans(c: Copy) -> str:
    c.edit_release(1, lambda b: b.update({"threshold": 3}))
    return f"{_where(1)}: threshold 3 is not the plan's 5"


def count_not_the_records(c: Copy) -> str:
    c.edit_release(2, lambda b: b.update({"contributions": 12}))
    return f"{_where(2)}: 12 contributions counted, 11 signed records"


def counted_twice(c: Copy) -> str:
    def twice(b):
        b["signed"].append(dict(b["signed"][0]))
        b["contributors"].append(b["contributors"][0])
        b["contributions"] += 1

    c.edit_release(1, twice)
    return f"{_where(1)}: a device is counted twice (12 records, 11 devices)"


def below_the_minimum(c: Copy) -> str:
    def fewer(b):
        b["signed"], b["contributors"], b["contributions"] = b["signed"][:9], b["contributors"][:9], 9

    c.edit_release(3, fewer)
    return f"{_where(3)}: 9 devices contributed, below the minimum 10: this release should have been aborted"


def more_than_the_population(c: Copy) -> str:
    c.edit_header(lambda h: h.update({"population": 10}))
    return f"{_where(1)}: 11 contributions from a population of 10"


def not_signed_by_its_key(c: Copy) -> str:
    c.edit_release(1, lambda b: b["signed"][0].update({"noise-variance": b["signed"][0]["noise-variance"] * 2}))
    return f"{_where(1)}: device {c.releases()[0]['signed'][0]['client']}: its record is not signed by its key"


def _rekeyed(c: Copy, number: int) -> str:
    """Release ``number``'s first record signed with a key that is not its device's."""
    from cryptography.hazmat.primitives.asymmetric import ec

    stranger = ec.generate_private_key(ec.SECP384R1())
    c.edit_release(number, lambda b: resign(b["signed"][0], stranger))
    return f"{_where(number)}: device {c.releases()[number - 1]['signed'][0]['client']}"


def another_key_than_first(c: Copy) -> str:
    who = _rekeyed(c, 2)
    return f"{who}: device {c.releases()[1]['signed'][0]['identity']} signed with another key than in its first release"


def not_the_simulated_devices_key(c: Copy) -> str:
    who = _rekeyed(c, 1)
    return f"{who}: signed with a key that is not simulated device {c.releases()[0]['signed'][0]['identity']}'s own"


def lying_record(field: str, value, number: int = 1):
    """The first record of release ``number`` with ``field`` set to ``value``, signed again by its
    own device: what the device itself could sign."""

    def tamper(c: Copy) -> str:
        record = c.releases()[number - 1]["signed"][0]

        def edit(b):
            b["signed"][0][field] = value
            resign(b["signed"][0], c.device_key(record["identity"]))

        c.edit_release(number, edit)
        return f"{_where(number)}: device {record['client']}"

    return tamper


def signed_other_dimension(c: Copy) -> str:
    return lying_record("dimension", 121)(c) + ": signed release, dimension, scale, bound or field differ from the plan"


def signed_other_plan(c: Copy) -> str:
    return lying_record("plan-sha256", "0" * 64)(c) + (
        ": signed a plan other than the one the run's config gives (its noise share, threshold or minimum)"
    )


def signed_small_share(c: Copy) -> str:
    planned = _plan_of(c).release("popularity").share_variance
    return lying_record("noise-variance", planned / 4)(c) + (
        f": signed a noise share of variance {planned / 4:.6g}, below the planned {planned:.6g}"
    )


def honest_variance_not_the_shares(c: Copy) -> str:
    recorded = c.releases()[1]["honest-variance"]
    c.edit_release(2, lambda b: b.update({"honest-variance": recorded * 2}))
    return f"{_where(2)}: honest variance {recorded * 2:.6g} recorded, the signed shares give {recorded:.6g}"


def _claimed(c: Copy, number: int, value: float) -> float:
    """Release ``number`` claims ``value``; returns the epsilon the signed shares give."""
    honest = [b["honest-variance"] for b in c.releases()[:number]]
    c.edit_release(number, lambda b: b.update({"user-level-epsilon": value}))
    return _plan_of(c).epsilon(honest)


def claims_less_than_the_shares(c: Copy) -> str:
    recomputed = _claimed(c, 2, 1.0)
    return f"{_where(2)}: claims user-level epsilon 1.0000, the signed shares give {recomputed:.4f}"


def epsilon_falls(c: Copy) -> str:
    before = c.releases()[1]["user-level-epsilon"]
    _claimed(c, 3, 1.0)
    return f"{_where(3)}: user-level epsilon fell from {before:.4f} to 1.0000"


def above_the_budget(c: Copy) -> str:
    honest = [b["honest-variance"] for b in c.releases()]
    c.edit_header(lambda h: h["config"].update({"user-epsilon": 4.0}))
    return f"the signed shares give user-level epsilon {_plan_of(c, **{'user-epsilon': 4.0}).epsilon(honest):.4f}, above user-epsilon 4"


def summary_claims_another_epsilon(c: Copy) -> str:
    path = c.path / "summary.json"
    summary = json.loads(path.read_text())
    last = summary["privacy"]["user-level-epsilon"]
    summary["privacy"]["user-level-epsilon"] = 1.0
    path.write_text(json.dumps(summary))
    return f"summary.json claims user-level epsilon 1.0, the ledger {last}"


def evidence_missing(c: Copy) -> str:
    (c.path / "secure-sum.npz").unlink()
    return f"{c.path / 'secure-sum.npz'}: missing: the unmasked sums cannot be held against the signed noise"


def evidence_missing_for_the_sums(c: Copy) -> str:
    (c.path / "secure-sum.npz").unlink()
    return f"{c.path / 'secure-sum.npz'} or releases.npz: missing: the secure sums cannot be checked"


def no_unmasked_sum(c: Copy) -> str:
    c.edit_arrays("secure-sum.npz", lambda a: a.pop("selection.unmasked"))
    return f"{_where(3)}: secure-sum.npz holds no unmasked sum to check the noise in"


def evidence_lacks_a_key(c: Copy) -> str:
    c.edit_arrays("secure-sum.npz", lambda a: a.pop("selection.sketches"))
    return f"{_where(3)}: secure-sum.npz lacks 'selection.sketches'"


def survivors_not_the_signers(c: Copy) -> str:
    evidence = c.evidence()
    dropped = int(evidence["popularity.dropped"][0])
    survivors = evidence["popularity.survivors"].copy()
    survivors[-1] = dropped

    c.edit_arrays("secure-sum.npz", lambda a: a.update({"popularity.survivors": np.sort(survivors)}))
    return f"{_where(1)}: the unmasked survivors are not the devices that signed an input"


def split_graph(c: Copy) -> str:
    def split(arrays):
        graph = arrays["neighbours"]
        arrays["neighbours"] = np.where(np.isin(graph, list(range(6))) == (np.arange(len(graph)) < 6)[:, None], graph, -1)

    c.edit_arrays("secure-sum.npz", split)
    return f"{_where(1)}: the survivors' neighbour graph is split: each part's sum could be unmasked apart"


def substituted_dropped_key(c: Copy) -> str:
    from shared.secure_sum import masks

    dropped = int(c.evidence()["popularity.dropped"][0])
    c.edit_arrays("secure-sum.npz", lambda a: a.update(
        {"popularity.dropped-keys": np.frombuffer(masks.new_private_key(), dtype=np.uint8).reshape(1, 32).copy()}))
    return f"{_where(1)}: the mask keys recorded for dropped devices [{dropped}] are not the keys they advertised"


def masked_sum_moved(c: Copy) -> str:
    def moved(arrays):
        total = arrays["cooccurrence.masked-sum"].copy()
        total[0] += np.uint64(1)
        arrays["cooccurrence.masked-sum"] = total

    c.edit_arrays("secure-sum.npz", moved)
    return (f"{_where(2)}: the recorded masked sum is not the sum of the devices' masked vectors (sketched with the matrix drawn "
            "from the sum's own digest, which the devices signed before it was drawn)")


def masked_sum_not_integers(c: Copy) -> str:
    c.edit_arrays("secure-sum.npz", lambda a: a.update({"popularity.masked-sum": a["popularity.masked-sum"].astype(np.uint32)}))
    return f"{_where(1)}: the masked sum is not kept as integers (uint64): a run from before the committed sketch cannot be checked"


def sketched_not_the_survivors(c: Copy) -> str:
    c.edit_arrays("secure-sum.npz", lambda a: a.update(
        {"popularity.sketched": a["popularity.sketched"][1:], "popularity.sketches": a["popularity.sketches"][1:],
         "popularity.sketch-signatures": a["popularity.sketch-signatures"][1:]}))
    return f"{_where(1)}: the sketched devices and the vectors recorded whole are not the survivors, each once"


def sketch_evidence_misshapen(c: Copy) -> str:
    c.edit_arrays("secure-sum.npz", lambda a: a.update({"popularity.sketches": a["popularity.sketches"][1:]}))
    return (f"{_where(1)}: the sketch evidence (sketches) is not one row per device of the right width and type: the sum cannot be "
            "held to the sketches")


def sketch_not_signed(c: Copy) -> str:
    evidence = c.evidence()
    first, signature = int(evidence["cooccurrence.sketched"][0]), evidence["cooccurrence.sketch-signatures"][0].copy()
    signature[0] ^= 1
    c.set_row("cooccurrence.sketch-signatures", 0, signature)
    return f"{_where(2)}: device {first}'s sketch is not signed by its identity key under the recorded masked sum"


def recorded_vector_not_signed(c: Copy) -> str:
    evidence = c.evidence()
    unsketched, vectors = evidence["popularity.unsketched"], evidence["popularity.unsketched-vectors"].copy()
    assert unsketched.size == 1  # the device that dropped after its input, before it signed and sketched
    vectors[0, 0] += np.uint32(1)
    c.edit_arrays("secure-sum.npz", lambda a: a.update({"popularity.unsketched-vectors": vectors}))
    return f"{_where(1)}: the masked vector recorded for device {int(unsketched[0])} is not the one it signed with its input"


def unmasked_sum_moved(c: Copy) -> str:
    def moved(arrays):
        total = arrays["popularity.unmasked"].copy()
        total[0] += 1
        arrays["popularity.unmasked"] = total

    c.edit_arrays("secure-sum.npz", moved)
    return f"{_where(1)}: unmasking the recorded sum with the recorded seeds and keys does not give the recorded sum"


def released_not_the_unmasked(c: Copy) -> str:
    def moved(arrays):
        arrays["selection"] = arrays["selection"] + 1.0

    c.edit_arrays("releases.npz", moved)
    return f"{_where(3)}: releases.npz does not hold the unmasked sum over the scale"


def survivors_signed_below_minimum(c: Copy) -> str:
    c.edit_arrays("secure-sum.npz", lambda a: a.update({"popularity.signers": a["popularity.signers"][:9],
                                                        "popularity.signatures": a["popularity.signatures"][:9]}))
    return f"{_where(1)}: 9 distinct devices signed the unmasked survivor set and masked sum, below the minimum 10: the devices would have refused to unmask it"


def _stranger():
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate()


def survivors_signed_by_a_stranger(c: Copy) -> str:
    from shared.secure_sum import identity, masks

    evidence, stranger = c.evidence(), _stranger()
    participants = {i: bytes(row).hex() for i, row in enumerate(evidence["identity-keys"]) if row.any()}
    message = identity.survivors_message(str(evidence["run-id"]), "cooccurrence", [int(v) for v in evidence["cooccurrence.survivors"]],
                                         identity.participants_digest(participants), masks.sum_digest(evidence["cooccurrence.masked-sum"]))

    def swap(a):
        signers, signatures = a["cooccurrence.signers"].copy(), a["cooccurrence.signatures"].copy()
        signers[0] = np.frombuffer(bytes.fromhex(identity.public_hex(stranger)), dtype=np.uint8)
        signatures[0] = np.frombuffer(identity.sign(stranger, message), dtype=np.uint8)
        a.update({"cooccurrence.signers": signers, "cooccurrence.signatures": signatures})

    c.edit_arrays("secure-sum.npz", swap)
    return f"{_where(2)}: the survivor set is signed by 1 keys that are not the devices' identity keys"


def identity_not_a_devices(c: Copy) -> str:
    from shared.secure_sum import identity

    c.set_row("identity-keys", 0, np.frombuffer(bytes.fromhex(identity.public_hex(_stranger())), dtype=np.uint8))
    return "device 0: its identity key is not one of the devices' identity keys"


def keys_not_signed_by_identity(c: Copy) -> str:
    from shared.secure_sum import masks

    c.set_row("channel-publics", 3, np.frombuffer(masks.public_key(masks.new_private_key()), dtype=np.uint8))
    return "device 3: its public keys in secure-sum.npz are not signed by its identity key"


def one_identity_in_two_places(c: Copy) -> str:
    c.set_row("identity-keys", 5, c.evidence()["identity-keys"][4])
    return "devices [5] have the identity key of another device: one party in several places of the graph"


def graph_not_the_rosters(c: Copy) -> str:
    def swap(a):
        graph = a["neighbours"].copy()
        graph[[0, 1]] = graph[[1, 0]]  # two devices' neighbour lists exchanged
        a["neighbours"] = graph

    c.edit_arrays("secure-sum.npz", swap)
    return "the recorded neighbour graph is not the one the participants, the roster and its seed determine"


def no_identity_evidence(c: Copy) -> str:
    c.edit_arrays("secure-sum.npz", lambda a: a.pop("run-id"))
    return "secure-sum.npz holds no identity evidence (identity keys, run id): the survivor sets cannot be checked"


def no_graph_for_the_sums(c: Copy) -> str:
    c.edit_arrays("secure-sum.npz", lambda a: a.pop("neighbours"))
    return "secure-sum.npz lacks 'neighbours': the secure sums cannot be checked"


# --- secure-groups: a grouped run's own lines -------------------------------------------------------


def group_count_not_the_configs(c: Copy) -> str:
    c.edit_release(1, lambda b: b["group-releases"].pop())
    return "releases [1] record [2, 3, 3] group sums: secure-groups is 3"


def group_plans_not_recomputable(c: Copy) -> str:
    c.edit_header(lambda h: h["config"].update({"secure-neighbours": 1}))
    return "the groups' plans cannot be recomputed from config and ledger: secure-neighbours must be at least 2 (got 1)"


def group_entry_not_its_group(c: Copy) -> str:
    c.edit_release(2, lambda b: b["group-releases"][1].update({"evidence": "cooccurrence@group-0"}))
    return "group 1's entries do not name group 1, their release and its evidence"


def claims_less_than_the_costliest_group(c: Copy) -> str:
    costliest = max(float(g["user-level-epsilon"]) for g in c.releases()[1]["group-releases"])
    c.edit_release(2, lambda b: b.update({"user-level-epsilon": 1.0}))
    return f"{_where(2)}: claims user-level epsilon 1.0000, its costliest group's signed shares give {costliest:.4f}"


def no_group_of_each_device(c: Copy) -> str:
    c.edit_arrays("secure-sum.npz", lambda a: a.pop("group-of"))
    return "secure-sum.npz records no group of each device: the groups cannot be held to the roster"


def group_not_the_rosters(c: Copy) -> str:
    group_of = c.evidence()["group-of"]
    device = int(np.flatnonzero(group_of == 0)[0])
    c.set_row("group-of", device, np.int64(1))
    return f"device {device}: recorded in group 1, the roster's order puts it in group 0: the server chose who sums with whom"


def group_entries_of_another_release(c: Copy) -> str:
    first = c.releases()[0]["group-releases"]
    c.edit_release(2, lambda b: b.update({"group-releases": first}))  # release 2's groups are release 1's, each consistent in itself
    return "group 0's entries do not name group 0, their release and its evidence"


def released_not_the_median(c: Copy) -> str:
    def moved(arrays):
        arrays["popularity"] = arrays["popularity"] + 1.0

    c.edit_arrays("releases.npz", moved)
    return f"{_where(1)}: releases.npz does not hold the median of the 3 group sums"


def not_an_authorised_supernode(c: Copy) -> str:
    return f"{_where(1)}: device {c.releases()[0]['signed'][0]['client']}: signed with a key that is not one of the authorised SuperNodes' in {c.path / 'strangers'}"


@dataclass(frozen=True)
class Case:
    tamper: Callable[[Copy], str]
    check: str
    node_keys: bool = False  # audit against a folder of other SuperNodes' keys
    grouped: bool = False  # a rewrite of the grouped run (secure-groups 3), not the base run

    @property
    def name(self) -> str:
        return self.tamper.__name__


CASES = [
    Case(no_release, "secure-plan"),
    Case(releases_not_the_planned, "secure-plan"),
    Case(plan_not_recomputable, "secure-plan"),
    Case(threshold_not_the_plans, "secure-plan"),
    Case(count_not_the_records, "secure-shares"),
    Case(counted_twice, "secure-shares"),
    Case(below_the_minimum, "secure-shares"),
    Case(more_than_the_population, "secure-shares"),
    Case(not_signed_by_its_key, "secure-shares"),
    Case(another_key_than_first, "secure-shares"),
    Case(not_the_simulated_devices_key, "secure-shares"),
    Case(not_an_authorised_supernode, "secure-shares", node_keys=True),
    Case(signed_other_dimension, "secure-shares"),
    Case(signed_other_plan, "secure-shares"),
    Case(signed_small_share, "secure-shares"),
    Case(honest_variance_not_the_shares, "secure-shares"),
    Case(claims_less_than_the_shares, "secure-shares"),
    Case(epsilon_falls, "epsilon-monotone"),
    Case(above_the_budget, "secure-shares"),
    Case(summary_claims_another_epsilon, "secure-shares"),
    Case(evidence_missing, "secure-noise"),
    Case(no_unmasked_sum, "secure-noise"),
    Case(evidence_missing_for_the_sums, "secure-sum"),
    Case(evidence_lacks_a_key, "secure-sum"),
    Case(survivors_not_the_signers, "secure-sum"),
    Case(split_graph, "secure-sum"),
    Case(substituted_dropped_key, "secure-sum"),
    Case(masked_sum_moved, "secure-sum"),
    Case(masked_sum_not_integers, "secure-sum"),
    Case(sketched_not_the_survivors, "secure-sum"),
    Case(sketch_evidence_misshapen, "secure-sum"),
    Case(sketch_not_signed, "secure-sum"),
    Case(recorded_vector_not_signed, "secure-sum"),
    Case(unmasked_sum_moved, "secure-sum"),
    Case(released_not_the_unmasked, "secure-sum"),
    Case(survivors_signed_below_minimum, "secure-sum"),
    Case(survivors_signed_by_a_stranger, "secure-sum"),
    Case(identity_not_a_devices, "secure-sum"),
    Case(keys_not_signed_by_identity, "secure-sum"),
    Case(no_identity_evidence, "secure-sum"),
    Case(no_graph_for_the_sums, "secure-sum"),
    Case(one_identity_in_two_places, "secure-sum"),
    Case(graph_not_the_rosters, "secure-sum"),
    Case(group_count_not_the_configs, "secure-plan", grouped=True),
    Case(group_plans_not_recomputable, "secure-plan", grouped=True),
    Case(group_entry_not_its_group, "secure-plan", grouped=True),
    Case(claims_less_than_the_costliest_group, "secure-shares", grouped=True),
    Case(no_group_of_each_device, "secure-sum", grouped=True),
    Case(group_not_the_rosters, "secure-sum", grouped=True),
    Case(released_not_the_median, "secure-sum", grouped=True),
]


def _base(case: Case, request) -> Path:
    return request.getfixturevalue("grouped_run" if case.grouped else "base_run")


def test_group_entries_copied_from_another_release_fail_as_not_their_release(grouped_run, tmp_path):
    """Release 2's group entries replaced by release 1's, each consistent in itself: the line
    group_entry_not_its_group prints, here for the release they do not name."""
    copy = Copy(grouped_run, tmp_path)
    line = group_entries_of_another_release(copy)
    assert line in audit(copy.path).failures["secure-plan"]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_rewrite_fails_the_secure_audit_with_its_line(case, request, tmp_path):
    copy = Copy(_base(case, request), tmp_path)
    line = case.tamper(copy)
    node_keys = None
    if case.node_keys:
        from server.certificates import write_deployment_keys

        node_keys = write_deployment_keys(copy.path / "strangers", ["localhost"], 1).ca_certificate.parent
        assert node_keys == copy.path / "strangers"
    report = audit(copy.path, node_keys=node_keys)
    assert not report.passed
    assert line in report.failures[case.check], report.failures[case.check]


# --- runs whose devices lie, through the real code path -------------------------------------------


def _noise_lines(run: Path) -> dict[int, list[str]]:
    """The secure-noise lines the audit must print for ``run``, computed here from its files:
    the floor (Anderson), and the realised window's two sides."""
    copy = RunDirectory.open(run)
    evidence = copy.load_arrays("secure-sum.npz")
    releases = [e for e in copy.read_ledger() if e.kind == "release"]
    tail = 1e-6 / (3 * len(releases))
    lines: dict[int, list[str]] = {}
    for entry in releases:
        body, where = entry.body, _where(entry.round)
        variances = sorted(float(r["noise-variance"]) for r in body["signed"])
        honest, total = sum(variances[: len(variances) - 2]), sum(variances)  # 1 colluder and the removed user's own
        d = int(body["dimension"])
        norm = float(np.linalg.norm(evidence[f"{body['release']}.unmasked"].astype(np.float64)))
        floor = released_norm_floor(math.sqrt(honest), d, tail)
        signal = len(variances) * float(body["rounding-bound"])
        low, high = chi_square_interval(d, tail)
        lines[entry.round] = [
            f"{where}: the unmasked sum's norm {norm:.6g} is below {floor:.6g}, the least that the signed honest noise "
            f"(variance {honest:.6g} over {d} values) leaves whatever the devices sent: the signed noise was not added",
            f"{where}: the realised noise norm is at most {norm + signal:.6g}, below {math.sqrt(total * low):.6g}, the least "
            f"that the {len(variances)} signed shares (variance {total:.6g} in all) give: the devices added less noise than they signed",
            f"{where}: the realised noise norm is at least {norm - signal:.6g}, above {math.sqrt(total * high):.6g}, the most "
            f"that the {len(variances)} signed shares (variance {total:.6g} in all) give: more noise than signed, or a sum "
            "no contributions of the planned bound can make",
        ]
    return lines


def test_devices_that_add_no_noise_but_sign_the_full_share_fail_secure_noise(small_dataset, feature_cache, tmp_path, monkeypatch):
    """Every signature is valid and every signed share is the planned one, so ``secure-shares``
    passes at the claimed epsilon; the unmasked sums are the clean sums, below the least norm the
    signed noise leaves any sum."""
    import shared.secure_sum.session as device

    monkeypatch.setattr(device, "skellam_noise", lambda rng, size, variance: np.zeros(size, dtype=np.int64))
    run = _run(small_dataset, feature_cache, tmp_path, "silent", faults="")
    report = audit(run)
    assert report.failures["secure-shares"] == [] and report.failures["secure-sum"] == []
    lines = _noise_lines(run)
    failures = report.failures["secure-noise"]
    assert lines[1][0] in failures and lines[2][0] in failures  # the floor (15 selection votes can outweigh it alone)
    assert lines[2][1] in failures  # and the realised window, where the contributions are small beside the noise


def test_devices_that_add_a_quarter_of_the_variance_they_sign_fail_secure_noise(small_dataset, feature_cache, tmp_path, monkeypatch):
    import shared.secure_sum.session as device

    real = device.skellam_noise
    monkeypatch.setattr(device, "skellam_noise", lambda rng, size, variance: real(rng, size, variance / 4))
    run = _run(small_dataset, feature_cache, tmp_path, "quarter", faults="")
    failures = audit(run).failures["secure-noise"]
    lines = _noise_lines(run)
    assert lines[2][0] in failures and lines[2][1] in failures


def test_a_server_that_releases_a_sum_no_honest_inputs_give_fails_secure_noise(small_dataset, feature_cache, tmp_path, monkeypatch):
    """Devices send a thousand times their statistic and the server skips its plausibility abort
    (the next test holds the abort): the realised noise would have to be far larger than the
    signed shares give."""
    import shared.secure_sum.session as device
    from shared.secure_sum.server import SecureAggregation

    real = device.conditional_round
    monkeypatch.setattr(device, "conditional_round", lambda *a, **k: real(*a, **k) * 1000)
    monkeypatch.setattr(SecureAggregation, "_check_plausible", lambda *a, **k: None)
    run = _run(small_dataset, feature_cache, tmp_path, "loud", faults="")
    failures = audit(run).failures["secure-noise"]
    assert _noise_lines(run)[1][2] in failures


def test_an_honest_runs_noise_figures_name_both_powers(base_run):
    figure = audit(base_run).figures["secure noise check power"]
    assert figure.startswith("an unmasked sum fails when its honest noise is below these fractions of the signed (Anderson's bound, any sum): popularity: 0.")
    assert "cooccurrence: +-0.1" in figure and figure.endswith("(false alarm 1e-06 per run)")


# --- every line the audit can print has a case ------------------------------------------------------


def _templates() -> list[str]:
    """Each ``report.fail`` line of the secure audit's source as a regular expression (the
    formatted parts as ``.+``), from its syntax tree."""

    def pattern(node) -> str:
        if isinstance(node, ast.Constant):
            return re.escape(str(node.value))
        if isinstance(node, ast.JoinedStr):
            return "".join(re.escape(v.value) if isinstance(v, ast.Constant) else ".+" for v in node.values)
        if isinstance(node, ast.BinOp):
            return pattern(node.left) + pattern(node.right)
        return ".+"

    calls = [n for n in ast.walk(ast.parse(SOURCE.read_text())) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "fail"]
    return sorted(pattern(call.args[1]) for call in calls)


NOISE_TEMPLATES = 3  # the floor and the window's two sides: the lying runs above print them
SUMMARY_LINE = "summary.json claims user-level epsilon"  # from server/audit/release_model.py, shared with the central mode


def test_every_line_the_secure_audit_can_print_has_a_case_that_prints_it(base_run, request, tmp_path):
    templates = _templates()
    lines = {case.name: case.tamper(Copy(_base(case, request), tmp_path / case.name)) for case in CASES}
    lines.update({f"noise-{k}": line for k, line in enumerate(_noise_lines(base_run)[2])})
    uncovered = [t for t in templates if not any(re.fullmatch(t, line) for line in lines.values())]
    assert uncovered == []
    stray = [name for name, line in lines.items() if not any(re.fullmatch(t, line) for t in templates) and not line.startswith(SUMMARY_LINE)]
    assert stray == []
    assert len(templates) == len(CASES) + NOISE_TEMPLATES - 1  # one case per line; the summary's is releases.py's


def test_a_device_that_masks_an_out_of_range_input_gets_its_release_aborted_and_recorded(small_dataset, feature_cache, tmp_path, monkeypatch):
    """Device 0 adds 2^30 to every coordinate of its popularity input (within the field, past any
    norm-1 statistic): the server cannot clip what it cannot see, but the unmasked sum is one no
    honest inputs give, so the release is aborted and nothing is released."""
    import shared.secure_sum.session as device
    from shared.secure_sum.server import SecureAggregationAborted

    real_to_field, real_masked_input = device.to_field, device.DeviceSession.masked_input
    loud = {"on": False}

    def to_field(values):
        return real_to_field(values) + np.uint32(2**30) if loud["on"] else real_to_field(values)

    def masked_input(self, plan, release, *args, **kwargs):
        loud["on"] = self.index == 0 and release.name == "popularity"
        try:
            return real_masked_input(self, plan, release, *args, **kwargs)
        finally:
            loud["on"] = False

    monkeypatch.setattr(device, "to_field", to_field)
    monkeypatch.setattr(device.DeviceSession, "masked_input", masked_input)
    with pytest.raises(SecureAggregationAborted, match=r"aborted at popularity unmasking: the unmasked sum's norm \S+ is above \S+, the most "
                                                       r"that 12 inputs of norm at most \S+ and the planned noise give"):
        _run(small_dataset, feature_cache, tmp_path, "loud-input", faults="")
    entries = read_ledger(tmp_path / "loud-input")
    assert [e.kind for e in entries] == ["header", "release-aborted"]
    assert entries[1].body["release"] == "popularity" and "out-of-range input" in entries[1].body["reason"]
    assert not (tmp_path / "loud-input" / "releases.npz").exists()


def test_a_group_entry_that_names_another_size_fails_its_plan(grouped_run, tmp_path):
    """A group's entry must carry the size the roster's cut gives it (the plan's devices)."""
    copy = Copy(grouped_run, tmp_path)
    copy.edit_release(1, lambda b: b["group-releases"][2].update({"devices": 11}))
    assert f"{_where(1)} group 2: devices 11 is not the plan's 10" in audit(copy.path).failures["secure-plan"]
