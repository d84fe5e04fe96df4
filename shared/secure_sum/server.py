"""``user-noise = distributed``: the server's side of secure aggregation for the user-level releases.

The server routes keys and encrypted shares, sums the masked inputs modulo 2^32 and unmasks
the sum with the shares the survivors return (:mod:`shared.secure_sum`). It never holds a
device's statistic: each masked input is uniform in Z_{2^32} to it, and the devices refuse to
help unmask fewer than the plan's minimum. The noise is the devices': the released sum carries
the Skellam noise of every device that sent its input, and the claim counts only the shares of
those beyond the colluders the run tolerates.

What it records (the audit's evidence, ``secure-sum.npz`` and the ledger): each release's
masked sum, survivors, the rebuilt self-mask seeds and dropped devices' mask keys, every
device's mask public key and neighbours, and each device's signed record of what it added.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message
from flwr.serverapp import Grid

from server.replies import ok_replies, send_and_collect
from shared.config import RunConfig
from shared.messages import (
    MASKED_KEY,
    SECURE_CONFIRM,
    SECURE_INPUT,
    SECURE_KEYS,
    SECURE_SHARE,
    SECURE_UNMASK,
    secure_fields,
    secure_message,
    update_of,
)
from shared.secure_sum import identity, masks
from shared.secure_sum.evidence import KeyEvidence, ReleaseEvidence, evidence_prefix
from shared.secure_sum.records import (
    ConfirmReply,
    ConfirmRequest,
    InputRequest,
    KeysReply,
    KeysRequest,
    MissingField,
    ShareReply,
    ShareRequest,
    StageRecord,
    UnmaskReply,
    UnmaskRequest,
)
from shared.secure_sum.plan import SecurePlan, graph_parts, participant_graph
from shared.secure_sum.plausible import noise_window, window_tail
from shared.secure_sum.quantise import from_field
from shared.secure_sum.session import sketch_seed
from shared.secure_sum.unmask import unmasked_sum
from shared.releases import secure_plan


def _read(kind: type[StageRecord], replies: dict[int, Message], log) -> dict[int, StageRecord]:
    """Each reply's fields as ``kind``; a reply without a field its stage needs is dropped, as a
    device that did not answer."""
    read = {}
    for i, reply in replies.items():
        try:
            read[i] = kind.of(secure_fields(reply))
        except (MissingField, TypeError, ValueError, OverflowError) as exc:
            log(f"  device {i}: {exc}: its reply is dropped")
    return read


class SecureAggregationAborted(RuntimeError):
    """Too few devices took part for the plan's minimum: nothing was released."""


@dataclass
class Collected:
    """One release's sum before its unmasking: who sent an input, the masked sum committed to,
    the survivor-set signatures and the checked sketches (:meth:`SecureAggregation.collect`)."""

    name: str
    server_round: int
    common: tuple
    participants: list[int]
    survivors: list[int]
    dropped: list[int]
    total: np.ndarray
    vectors: dict[int, np.ndarray]
    records: dict[int, dict[str, Any]]
    signers: list[str]
    signatures: list[bytes]
    sketched: dict[int, tuple[bytes, bytes]]


@dataclass
class SecureRelease:
    """What one secure release gave: the noisy sum (in units of the clip) and its evidence."""

    name: str
    noisy: np.ndarray
    participants: list[int]
    survivors: list[int]
    dropped: list[int]
    records: list[dict[str, Any]]
    honest_variance: float  # per coordinate, integer domain: the signed shares a claim counts (plan.uncounted left out)
    total_variance: float  # per coordinate, integer domain: every signed share
    evidence: dict[str, np.ndarray] = field(default_factory=dict)


def honest_variance(variances: list[float], uncounted: int) -> float:
    """The noise a claim counts: every share but the ``uncounted`` largest (the colluders' and the
    removed user's own, taken as the worst case)."""
    ordered = sorted(variances)
    return float(sum(ordered[: max(0, len(ordered) - uncounted)]))


def _hex_rows(values: list[str], width: int) -> np.ndarray:
    return np.frombuffer(b"".join(bytes.fromhex(v) for v in values), dtype=np.uint8).reshape(len(values), width)


def _byte_rows(values: list[bytes], width: int) -> np.ndarray:
    return np.frombuffer(b"".join(values), dtype=np.uint8).reshape(len(values), width)


def _key_rows(keys: dict[int, bytes], devices: int) -> np.ndarray:
    rows = np.zeros((devices, 32), dtype=np.uint8)
    for i, key in keys.items():
        rows[i] = np.frombuffer(key, dtype=np.uint8)
    return rows


class SecureAggregation:
    """One run's secure releases over ``grid``'s ``nodes`` (protocol indices 0..n-1 in node order)."""

    def __init__(self, grid: Grid, nodes: list[int], config: RunConfig, dimensions: list[int], log=print,
                 plan: SecurePlan | None = None, group: int | None = None) -> None:
        self.grid, self.nodes, self.config, self.log = grid, list(nodes), config, log
        self.plan: SecurePlan = plan if plan is not None else secure_plan(config, len(nodes), dimensions)
        self.group = group  # which of ``secure-groups`` this sum is (None: the only one)
        self.dimensions = list(dimensions)
        self.mask_publics: dict[int, bytes] = {}  # each device's per-release mask public keys, concatenated
        self.neighbours: dict[int, list[int]] = {}
        self.forwarded: dict[int, list[bytes]] = {}
        self.participants: list[int] = []
        self.channel_publics: dict[int, bytes] = {}
        self.identities: dict[int, tuple[str, bytes]] = {}  # each device's identity key and its signature over its public keys
        self.run = ""
        self.graph_seed = ""
        self.participants_digest = ""

    def _send(self, stage: str, fields_of: dict[int, dict[str, Any]], arrays: ArrayRecord, server_round: int) -> dict[int, Message]:
        settings = self.config.device_settings()
        messages = [secure_message(self.nodes[i], stage, fields, arrays, settings, server_round) for i, fields in fields_of.items()]
        replies = ok_replies(send_and_collect(self.grid, messages))
        index = {node: i for i, node in enumerate(self.nodes)}
        return {index[r.metadata.src_node_id]: r for r in replies if r.metadata.src_node_id in index}

    def _require(self, alive: int, stage: str) -> None:
        if alive < self.plan.min_survivors:
            raise SecureAggregationAborted(
                f"secure aggregation aborted at {stage}{self.in_group}: {alive} devices, below the minimum {self.plan.min_survivors} of "
                f"{self.plan.devices} (secure-dropout {self.config.privacy.secure_dropout:g}); nothing was released"
            )

    @property
    def in_group(self) -> str:
        """How an abort names this sum's group ("" without groups)."""
        return "" if self.group is None else f" in group {self.group}"

    def evidence_name(self, release: str) -> str:
        """The prefix of ``release``'s arrays in ``secure-sum.npz``: its name, or with groups its
        name and this group's (``popularity@group-0``)."""
        return evidence_prefix(release, self.group)

    def setup(self, server_round: int) -> None:
        """Stages 1 and 2: keys, then encrypted shares for each device's neighbours."""
        self.advertise(server_round)
        self.distribute(server_round, self.roster())

    def advertise(self, server_round: int, required: bool = True) -> None:
        """Stage 1, for every node: each device's signed public keys and identity key.
        ``required``: abort below this plan's minimum (a group's is checked by its own sum)."""
        everyone = range(len(self.nodes))
        asked = {i: KeysRequest(len(self.nodes), self.dimensions, i).fields() for i in everyone}
        replies = self._send(SECURE_KEYS, asked, ArrayRecord(), server_round)
        if required:
            self._require(len(replies), "key advertisement")
        self.run = str(next(iter(replies.values())).metadata.run_id) if replies else ""
        answers = _read(KeysReply, replies, self.log)
        keys = {i: (a.mask_public, a.channel_public) for i, a in answers.items()}
        self.identities = {i: (a.identity_key, a.key_signature) for i, a in answers.items()}
        wanted = 32 * len(self.plan.releases)
        keys = {i: k for i, k in keys.items() if len(k[0]) == wanted}  # a device with the wrong key count takes no part
        if required:
            self._require(len(keys), "key advertisement")
        self.mask_publics = {i: k[0] for i, k in keys.items()}
        self.channel_publics = {i: k[1] for i, k in keys.items()}

    def adopt(self, advertised: "SecureAggregation", roster: identity.Roster) -> None:
        """Take the devices of ``advertised``'s key stage whose identity is in ``roster`` (this
        group's), as if this sum had run stage 1 itself."""
        self.run, self.identities = advertised.run, dict(advertised.identities)
        mine = [i for i in advertised.mask_publics if self.identities[i][0] in roster]
        self.mask_publics = {i: advertised.mask_publics[i] for i in mine}
        self.channel_publics = {i: advertised.channel_publics[i] for i in mine}
        self._require(len(mine), "key advertisement")

    def distribute(self, server_round: int, roster: identity.Roster) -> None:
        """Stage 2: the participant list and neighbour graph ``roster`` (and its seed) determine,
        and each device's encrypted shares forwarded to its neighbours."""
        keys = {i: (self.mask_publics[i], self.channel_publics[i]) for i in self.mask_publics}
        taking_part = {i: self.identities[i][0] for i in sorted(keys)}
        if len(roster) != self.plan.devices:
            raise SecureAggregationAborted(
                f"secure aggregation aborted at share distribution: the roster lists {len(roster)} devices, the run has "
                f"{self.plan.devices}; every device plans for its roster's population and would refuse; nothing was released"
            )
        self.graph_seed = roster.graph_seed(self.run)
        self.neighbours = participant_graph(self.graph_seed, taking_part, self.plan.neighbours, roster)  # the devices recompute it
        self.participants_digest = identity.participants_digest(taking_part)
        fields = {
            i: ShareRequest(
                len(self.nodes), self.dimensions, list(taking_part), list(taking_part.values()), self.neighbours[i],
                [keys[v][0] for v in self.neighbours[i]], [keys[v][1] for v in self.neighbours[i]],
                [self.identities[v][0] for v in self.neighbours[i]], [self.identities[v][1] for v in self.neighbours[i]],
            ).fields()
            for i in keys
        }
        replies = _read(ShareReply, self._send(SECURE_SHARE, fields, ArrayRecord(), server_round), self.log)
        self._require(len(replies), "share distribution")
        sent = {(i, v): c for i, r in replies.items() for v, c in zip(self.neighbours[i], r.ciphertexts)}
        self.forwarded = {v: [sent.get((u, v), b"") for u in self.neighbours[v]] for v in replies}
        self.participants = sorted(replies)

    def release(self, name: str, arrays: ArrayRecord, server_round: int) -> SecureRelease:
        """Stages 3 to 5 for one release: masked inputs and their sum, committed to; the consistency
        round, in which the devices sign the set and the commitment, then sketch their inputs; the unmasking."""
        return self.unmask(self.collect(name, arrays, server_round))

    def collect(self, name: str, arrays: ArrayRecord, server_round: int) -> "Collected":
        """Stages 3 and 4: the masked inputs, their sum committed to, the survivor set signed and
        the sketches checked; nothing is unmasked yet (a run of groups collects every group
        before it unmasks any)."""
        plan = self.plan
        participants = list(self.participants)
        self._require(len(participants), f"{name} input")
        common = (plan.devices, self.dimensions, name, participants)
        total, vectors, records = self._masked_inputs(name, common, arrays, server_round)
        survivors = sorted(records)
        self._require(len(survivors), f"{name} input")
        parts = graph_parts(survivors, self.neighbours)
        if parts > 1:
            raise SecureAggregationAborted(
                f"secure aggregation aborted at {name} unmasking{self.in_group}: the survivors' neighbour graph is in {parts} parts, whose sums "
                "could be unmasked apart with a part of the noise each; nothing was released"
            )
        dropped = sorted(set(participants) - set(survivors))
        committed = masks.sum_digest(total)
        signers, signatures, sketched = self._confirm(name, survivors, common, committed, server_round)
        sketched = self._checked_sketches(name, participants, committed, sketched, vectors)
        return Collected(name, server_round, common, participants, survivors, dropped, total, vectors, records, signers, signatures, sketched)

    def unmask(self, collected: "Collected") -> SecureRelease:
        """Stage 5: the survivors' shares, the unmasked sum, the plausibility check, the evidence."""
        plan, name, release = self.plan, collected.name, self.plan.release(collected.name)
        common, participants, survivors, dropped = collected.common, collected.participants, collected.survivors, collected.dropped
        total, vectors, records, sketched = collected.total, collected.vectors, collected.records, collected.sketched
        signers, signatures, server_round = collected.signers, collected.signatures, collected.server_round
        unsketched = [u for u in survivors if u not in sketched]
        fields = {i: UnmaskRequest(*common, survivors, dropped, signers, signatures).fields() for i in survivors}
        answers = _read(UnmaskReply, self._send(SECURE_UNMASK, fields, ArrayRecord(), server_round), self.log)
        seed_shares: dict[int, list[bytes]] = {}
        key_shares: dict[int, list[bytes]] = {}
        for answer in answers.values():
            for owner, value in zip(answer.seed_owners, answer.seed_shares):
                seed_shares.setdefault(owner, []).append(value)
            for owner, value in zip(answer.key_owners, answer.key_shares):
                key_shares.setdefault(owner, []).append(value)
        short = [u for u in survivors if len(seed_shares.get(u, [])) < plan.threshold]
        short += [v for v in dropped if len(key_shares.get(v, [])) < plan.threshold]
        if short:
            raise SecureAggregationAborted(
                f"secure aggregation aborted at {name} unmasking{self.in_group}: devices {short[:5]} have fewer than {plan.threshold} "
                "shares returned; nothing was released"
            )
        seeds = {u: masks.rebuild(seed_shares[u], plan.threshold) for u in survivors}
        dropped_keys = {v: masks.rebuild(key_shares[v], plan.threshold) for v in dropped}
        publics = {i: self.release_publics(i, name) for i in self.mask_publics}
        integers = unmasked_sum(total.astype(np.uint32), name, survivors, seeds, dropped_keys, publics, self.neighbours)
        centred = from_field(integers)  # the unmasked sum, read as signed integers
        self._check_plausible(name, centred, len(survivors))
        self.participants = survivors  # a dropped device's mask key is known now: it takes no further part
        variances = [float(records[u]["noise-variance"]) for u in survivors]
        evidence = ReleaseEvidence(
            masked_sum=total,
            survivors=np.asarray(survivors, dtype=np.int64),
            seeds=np.frombuffer(b"".join(seeds[u] for u in survivors), dtype=np.uint8).reshape(len(survivors), -1),
            dropped=np.asarray(dropped, dtype=np.int64),
            dropped_keys=np.frombuffer(b"".join(dropped_keys[v] for v in dropped), dtype=np.uint8).reshape(len(dropped), 32),
            mask_publics=_key_rows({i: publics[i] for i in publics}, len(self.nodes)),
            unmasked=centred,
            signers=_hex_rows(signers, 32),
            signatures=_byte_rows(signatures, 64),
            sketched=np.asarray(sorted(sketched), dtype=np.int64),
            sketches=_byte_rows([sketched[u][0] for u in sorted(sketched)], masks.SKETCH_BYTES),
            sketch_signatures=_byte_rows([sketched[u][1] for u in sorted(sketched)], 64),
            unsketched=np.asarray(unsketched, dtype=np.int64),
            unsketched_vectors=np.asarray([vectors[u] for u in unsketched], dtype=np.uint32).reshape(len(unsketched), release.dimension),
        ).arrays(self.evidence_name(name))
        return SecureRelease(
            name=name, noisy=centred / release.scale, participants=participants, survivors=survivors, dropped=dropped,
            records=[records[u] for u in survivors], honest_variance=honest_variance(variances, plan.uncounted),
            total_variance=float(sum(variances)), evidence=evidence,
        )

    def _masked_inputs(self, name: str, common: tuple, arrays: ArrayRecord,
                       server_round: int) -> tuple[np.ndarray, dict[int, np.ndarray], dict[int, dict[str, Any]]]:
        """Stage 3: each participant's masked input and signed record, and their sum kept as
        integers (``uint64``: the sketch checks it over Z_{2^64}; mod 2^32 it is the masked sum)."""
        release, participants = self.plan.release(name), common[3]
        replies = self._send(SECURE_INPUT, {i: InputRequest(*common, self.forwarded[i]).fields() for i in participants}, arrays, server_round)
        total = np.zeros(release.dimension, dtype=np.uint64)  # kept as integers: the sketch checks it over Z_{2^64}
        vectors: dict[int, np.ndarray] = {}
        records: dict[int, dict[str, Any]] = {}
        for i, reply in sorted(replies.items()):
            masked = update_of(reply)[MASKED_KEY].numpy() if MASKED_KEY in update_of(reply) else None
            record = secure_fields(reply)
            if masked is None or masked.dtype != np.uint32 or masked.shape != (release.dimension,) or record.get("masked-sha256") != masks.digest(masked):
                self.log(f"  device {i}: masked input dropped (wrong type, size or digest)")
                continue
            total += masked
            vectors[i], records[i] = masked, record
        return total, vectors, records

    def roster(self) -> identity.Roster:
        """The devices' identity keys the graph is drawn over: a deployment's roster file
        (``secure-roster``), else the simulated devices' own keys in their state folders."""
        named = self.config.privacy.secure_roster
        if named:
            return identity.roster_from_file(named)
        return identity.roster_of_simulated_devices(self.config.run.device_state_dir)

    def _confirm(self, name: str, survivors: list[int], common: tuple, committed: str,
                 server_round: int) -> tuple[list[str], list[bytes], dict[int, tuple[bytes, bytes]]]:
        """The consistency round: every survivor signs the survivor set and the masked sum's
        SHA-256 (``committed``), then sketches its masked vector with the matrix that commitment
        seeds; the valid signatures of distinct identities go to each survivor with the
        unmasking, which it refuses below the minimum. Returns them, and each device's (sketch,
        signature on it)."""
        asked = {i: ConfirmRequest(*common, survivors, committed).fields() for i in survivors}
        replies = _read(ConfirmReply, self._send(SECURE_CONFIRM, asked, ArrayRecord(), server_round), self.log)
        message = identity.survivors_message(self.run, name, survivors, self.participants_digest, committed)
        signed: dict[str, bytes] = {}
        sketches: dict[int, tuple[bytes, bytes]] = {}
        for i, reply in replies.items():
            who, signature = reply.identity_key, reply.signature
            if identity.verify(who, signature, message):
                signed.setdefault(who, signature)
                sketches[i] = (reply.sketch, reply.sketch_signature)
        if len(signed) < self.plan.min_survivors:
            raise SecureAggregationAborted(
                f"secure aggregation aborted at {name} confirmation{self.in_group}: {len(signed)} devices signed the survivor set, below the "
                f"minimum {self.plan.min_survivors}; nothing was released"
            )
        return list(signed), list(signed.values()), sketches

    def _checked_sketches(self, name: str, participants: list[int], committed: str, sketches: dict[int, tuple[bytes, bytes]],
                          vectors: dict[int, np.ndarray]) -> dict[int, tuple[bytes, bytes]]:
        """The sketches that are their device's masked vector's, signed by its identity key. A
        device whose sketch is not (or that sent none) has its masked vector recorded instead,
        checked by the audit against the digest it signed with its input."""
        matrix = masks.sketch_matrix(sketch_seed(name, participants, committed), self.plan.release(name).dimension)
        kept = {}
        for i, (sketch, signature) in sketches.items():
            who = self.identities.get(i, ("", b""))[0]
            try:
                honest = np.array_equal(masks.sketch_of_bytes(sketch), masks.sketch(matrix, vectors[i]))
            except ValueError:
                honest = False
            if honest and identity.verify(who, signature, identity.sketch_message(self.run, name, i, committed, sketch)):
                kept[i] = (sketch, signature)
            else:
                self.log(f"  device {i}: its sketch is not of its masked vector or not signed by it: the vector is recorded instead")
        return kept

    def _check_plausible(self, name: str, integers: np.ndarray, contributions: int) -> None:
        """Abort a sum no ``contributions`` inputs of the plan's rounding bound and the planned
        noise shares give (:mod:`shared.secure_sum.plausible`): the server cannot clip a masked
        input, but it can refuse to release what no honest set of inputs makes. The planned share,
        not the signed one: a device that signs a vast variance does not widen the window."""
        release = self.plan.release(name)
        variance = contributions * release.share_variance
        if variance <= 0:
            return  # no noise planned (user-epsilon inf): the sum alone, at most contributions x bound
        norm = float(np.linalg.norm(integers.astype(np.float64)))
        _, most = noise_window(variance, contributions, release.bound, release.dimension, window_tail(len(self.plan.releases)))
        if norm > most:
            raise SecureAggregationAborted(
                f"secure aggregation aborted at {name} unmasking{self.in_group}: the unmasked sum's norm {norm:.6g} is above {most:.6g}, the most "
                f"that {contributions} inputs of norm at most {release.bound:.6g} and the planned noise give: a device masked an "
                "out-of-range input, or the sum wrapped around the field; nothing was released"
            )

    def release_publics(self, device: int, name: str) -> bytes:
        """``device``'s mask public key for release ``name``."""
        which = [r.name for r in self.plan.releases].index(name)
        return self.mask_publics[device][32 * which : 32 * (which + 1)]

    def key_evidence(self) -> dict[str, np.ndarray]:
        """Every device's neighbours (the audit rebuilds dropped masks with them and each
        release's mask public keys, recorded with the release)."""
        return key_evidence([self]).arrays()


def key_evidence(sums: list[SecureAggregation]) -> KeyEvidence:
    """The key stages' evidence of one or more secure sums over disjoint devices of the same
    nodes (a run's groups): each device's neighbours, identity key, its signature over its
    public keys and its channel key, in one table over the protocol indices."""
    n = len(sums[0].nodes)
    neighbours = {i: vs for one in sums for i, vs in one.neighbours.items()}
    width = max((len(v) for v in neighbours.values()), default=0)
    graph = -np.ones((n, width), dtype=np.int64)
    for i, vs in neighbours.items():
        graph[i, : len(vs)] = vs
    identities = np.zeros((n, 32), dtype=np.uint8)
    signatures = np.zeros((n, 64), dtype=np.uint8)
    channels = np.zeros((n, 32), dtype=np.uint8)
    for one in sums:
        for i in one.mask_publics:
            who, signature = one.identities.get(i, ("", b""))
            if len(who) == 64 and len(signature) == 64:
                identities[i], signatures[i] = np.frombuffer(bytes.fromhex(who), dtype=np.uint8), np.frombuffer(signature, dtype=np.uint8)
            channels[i] = np.frombuffer(one.channel_publics[i], dtype=np.uint8)
    return KeyEvidence(neighbours=graph, identity_keys=identities, key_signatures=signatures, channel_publics=channels,
                       run_id=np.asarray(sums[0].run), graph_seed=np.asarray(sums[0].graph_seed))
