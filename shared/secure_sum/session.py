"""The device's side of secure aggregation (Bonawitz et al. 2017, Figure 4), and its refusals.

Four stages, each one message from the server and one reply:

1. **keys**: X25519 key pairs, one per release to agree that release's pairwise masks (as
   Bonawitz et al. use fresh keys each round: a device that drops in a later release has that
   release's mask key rebuilt, never one that unmasks an earlier release it took part in), and
   one to encrypt shares; the public halves go to the server (the mask keys as one blob).
2. **share**: for each release a fresh self-mask seed; Shamir shares of every mask private key
   and of every seed go to the device's neighbours, each encrypted for its holder.
3. **input** (per release): the statistic, clipped to norm 1, scaled and rounded, plus this
   device's Skellam noise share, plus its self mask and its pairwise masks with the neighbours
   taking part, modulo 2^32. Uniform to the server. The device signs what it added.
4. **confirm** (per release): the device signs, with its long-term identity key, the survivor
   set the server shows it (Bonawitz et al.'s consistency round) and the SHA-256 of the masked
   sum the server commits to, once per release; then, the sum fixed, it sketches its own masked
   vector with the matrix that commitment seeds (:func:`sketch_seed`) and signs the sketch too.
   The audit checks the recorded sum against the devices' sketches: a sketch drawn only after
   the sum was fixed binds it against any change, where a public one could be defeated by a
   change crafted in its kernel.
5. **unmask** (per release): given valid signatures on that same set from at least the plan's
   minimum of distinct devices of the roster, for each neighbour that sent its input, its share
   of that neighbour's self-mask seed; for each that did not, its share of that release's mask key.

The public keys of stage 1 are signed with the identity key, and a device checks every
neighbour's signature against the roster (:mod:`shared.secure_sum.identity`) before it shares
anything: the server can neither substitute a key nor show two devices two survivor sets.

What the device refuses (a :class:`ProtocolRefusal`, an error reply): to mask or unmask for
fewer devices than the plan's minimum (so the server cannot unmask one device's input, or a
sum over a few); to reveal both the seed share and the mask-key share of the same neighbour for
the same release (with both, the server could unmask that neighbour's input alone); a neighbour list that is not
the plan's size or names itself; a second input or unmasking for the same release (the same
masks over fresh noise would tell the server the difference of two noise draws); a neighbour
whose keys are not signed by a roster identity, or two neighbours with one identity; a survivor
set it did not send an input under, or a second set for a release it confirmed; and an
unmasking for a set other than the one it signed, or one fewer than the minimum signed.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag

from shared.privacy.gaussian import clip
from shared.secure_sum import identity, masks
from shared.secure_sum.plan import CLIP, ReleasePlan, SecurePlan, graph_parts, participant_graph
from shared.secure_sum.quantise import FIELD_BITS, conditional_round, to_field
from shared.secure_sum.skellam import noise_rng, skellam_noise


class ProtocolRefusal(ValueError):
    """The device will not do what the server asked: it would weaken someone's privacy."""


def pairwise_sign(me: int, other: int) -> int:
    return 1 if me < other else -1


def sketch_seed(release: str, participants: list[int], masked_sum: str) -> bytes:
    """Every party derives the same sketch matrix for a release's participants, once the server
    has committed to the masked sum (``masked_sum``: its SHA-256): before that no one can know
    the matrix, so no change to the sum can be crafted in its kernel."""
    return f"{release}:{','.join(map(str, sorted(participants)))}:{masked_sum}".encode()


def _pack(parts: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(p)) + p for p in parts)


def _unpack(blob: bytes) -> list[bytes]:
    out, offset = [], 0
    while offset < len(blob):
        (size,) = struct.unpack_from("<I", blob, offset)
        out.append(blob[offset + 4 : offset + 4 + size])
        offset += 4 + size
    return out


def _associated(sender: int, holder: int) -> bytes:
    return f"share {sender}->{holder}".encode()


def rounded_with_share(statistic: np.ndarray, release: ReleasePlan, rng: np.random.Generator, add_noise: bool = True) -> np.ndarray:
    """A device's contribution before its masks: the statistic clipped to norm 1, scaled and
    rounded at random within the plan's bound, plus its share of Skellam noise (int64). What
    the masks hide and the unmasked sum adds up; the studies sum it without the masks, which
    cancel in the sum."""
    bounded, _ = clip(np.asarray(statistic, dtype=np.float64), CLIP)
    rounded = conditional_round(bounded, release.scale, release.bound, rng)
    return rounded + skellam_noise(rng, rounded.size, release.share_variance if add_noise else 0.0)


def rounded_sparse(statistic: np.ndarray, release: ReleasePlan, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(where, values): the nonzero coordinates of a device's clipped, scaled and randomly rounded
    statistic (:func:`rounded_with_share` without the noise share), for the studies. A zero
    coordinate rounds to 0 and adds nothing to the norm, so rounding only the nonzero ones draws
    from the same distribution, at the cost of a device's few items, not the release's dimension."""
    bounded, _ = clip(np.asarray(statistic, dtype=np.float64), CLIP)
    where = np.flatnonzero(bounded)
    return where, conditional_round(bounded[where], release.scale, release.bound, rng)


@dataclass
class DeviceSession:
    """One device's secrets and bookkeeping for one run's secure releases (kept in its state)."""

    index: int
    devices: int
    mask_privates: list[bytes] = field(default_factory=list)  # one per release, made at the key stage
    channel_private: bytes = field(default_factory=masks.new_private_key)
    releases: list[str] = field(default_factory=list)
    seeds: list[bytes] = field(default_factory=list)
    neighbours: list[int] = field(default_factory=list)
    mask_publics: list[bytes] = field(default_factory=list)  # each neighbour's per-release public keys, concatenated
    channel_publics: list[bytes] = field(default_factory=list)
    held: list[bytes] = field(default_factory=list)  # ciphertexts from each neighbour, in neighbour order
    revealed_keys: list[str] = field(default_factory=list)  # "release:neighbour"
    revealed_seeds: list[str] = field(default_factory=list)  # "release:neighbour"
    masked: list[str] = field(default_factory=list)  # releases this device sent its input for
    unmasked: list[str] = field(default_factory=list)  # releases this device answered the unmasking of
    run: str = ""  # the run the key stage belongs to (signed with the keys)
    neighbour_identities: list[str] = field(default_factory=list)  # each neighbour's identity key, checked against the roster
    inputs: dict[str, list[int]] = field(default_factory=dict)  # release -> the participants this device masked for
    confirmed: dict[str, list[int]] = field(default_factory=dict)  # release -> the survivor set this device signed
    participants: dict[int, str] = field(default_factory=dict)  # protocol index -> identity key, as the share stage listed them
    graph: dict[int, list[int]] = field(default_factory=dict)  # the neighbour graph that list and the roster determine
    plan_digest: str = ""  # the plan this session's shares were made under: every later stage must use it
    pending: dict[str, bytes] = field(default_factory=dict)  # release -> the masked vector sent, kept until it is sketched
    committed: dict[str, str] = field(default_factory=dict)  # release -> the masked sum's SHA-256 this device signed
    sketches: dict[str, bytes] = field(default_factory=dict)  # release -> this device's sketch of its masked vector

    # --- stage 1 ---------------------------------------------------------------------------
    def public_keys(self, releases: int) -> tuple[bytes, bytes]:
        """(the ``releases`` mask public keys concatenated, the channel public key)."""
        if not self.mask_privates:
            self.mask_privates = [masks.new_private_key() for _ in range(releases)]
        if len(self.mask_privates) != releases:
            raise ProtocolRefusal(f"mask keys for {len(self.mask_privates)} releases exist; asked for {releases}")
        return b"".join(masks.public_key(k) for k in self.mask_privates), masks.public_key(self.channel_private)

    def _mask_public(self, position: int, release: int) -> bytes:
        blob = self.mask_publics[position]
        return blob[32 * release : 32 * (release + 1)]

    # --- stage 2 ---------------------------------------------------------------------------
    def check_neighbour_keys(
        self, neighbours: list[int], mask_publics: list[bytes], channel_publics: list[bytes], identities: list[str],
        signatures: list[bytes], roster: identity.Roster, own: str,
    ) -> None:
        """Every neighbour's public keys signed by a distinct identity of the roster (not this device's)."""
        if len(identities) != len(neighbours) or len(signatures) != len(neighbours):
            raise ProtocolRefusal("neighbour identities or key signatures do not match the neighbour list")
        if len(set(identities)) != len(identities) or own in identities:
            raise ProtocolRefusal("two neighbours, or a neighbour and this device, share one identity key: refusing a forged neighbourhood")
        for v, mask, channel, who, signature in zip(neighbours, mask_publics, channel_publics, identities, signatures):
            if who not in roster:
                raise ProtocolRefusal(f"neighbour {v}'s identity key is not in this device's roster")
            if not identity.verify(who, signature, identity.key_bundle_message(self.run, v, mask, channel)):
                raise ProtocolRefusal(f"neighbour {v}'s public keys are not signed by its identity key: refusing substituted keys")

    def check_participants(self, plan: SecurePlan, participants: dict[int, str], neighbours: list[int], identities: list[str],
                           roster: identity.Roster, own: str) -> None:
        """The participant list names at least the minimum of distinct roster identities, this
        device under its own, and ``neighbours`` are this device's in the graph it determines
        (:func:`~shared.secure_sum.plan.participant_graph`), each under its listed identity."""
        if len(roster) != plan.devices:
            raise ProtocolRefusal(f"a plan for {plan.devices} devices, but this device's roster lists {len(roster)}: the population is the roster's")
        if participants.get(self.index) != own:
            raise ProtocolRefusal(f"the participant list does not name this device ({self.index}) under its identity key")
        keys = list(participants.values())
        if len(set(keys)) != len(keys) or any(k not in roster for k in keys):
            raise ProtocolRefusal("the participant list repeats an identity key or names one outside this device's roster")
        if len(keys) < plan.min_survivors or not all(0 <= v < self.devices for v in participants):
            raise ProtocolRefusal(f"{len(keys)} participants listed: the minimum is {plan.min_survivors} of {plan.devices}")
        graph = participant_graph(roster.graph_seed(self.run), participants, plan.neighbours, roster)
        if sorted(neighbours) != graph[self.index]:
            raise ProtocolRefusal("the neighbour list is not the graph the participant list determines: refusing neighbours the server chose")
        if [participants.get(v) for v in neighbours] != list(identities):
            raise ProtocolRefusal("a neighbour's identity key is not the one the participant list gives it")
        self.graph = graph

    def share_keys(
        self, plan: SecurePlan, neighbours: list[int], mask_publics: list[bytes], channel_publics: list[bytes],
        identities: list[str], signatures: list[bytes], roster: identity.Roster, own: str, participants: dict[int, str],
    ) -> list[bytes]:
        """Encrypted shares for each neighbour, in ``neighbours`` order, once the participants and
        the graph check out and each neighbour's keys are signed by its roster identity (``own``:
        this device's identity key), once per session."""
        if self.seeds:
            raise ProtocolRefusal("this session already shared its keys: refusing a second share stage")
        if not plan.threshold <= len(neighbours) <= plan.neighbours or len(set(neighbours)) != len(neighbours) or self.index in neighbours:
            raise ProtocolRefusal(
                f"neighbour list of {len(neighbours)}: the plan wants {plan.threshold} to {plan.neighbours} distinct devices, not this one"
            )
        if not all(0 <= v < self.devices for v in neighbours) or len(mask_publics) != len(neighbours) or len(channel_publics) != len(neighbours):
            raise ProtocolRefusal("neighbour keys do not match the neighbour list")
        if len(self.mask_privates) != len(plan.releases) or any(len(blob) != 32 * len(plan.releases) for blob in mask_publics):
            raise ProtocolRefusal(f"mask keys are not one per release of the plan's {len(plan.releases)}")
        self.check_neighbour_keys(neighbours, mask_publics, channel_publics, identities, signatures, roster, own)
        self.check_participants(plan, participants, neighbours, identities, roster, own)
        self.neighbours, self.mask_publics, self.channel_publics = list(neighbours), list(mask_publics), list(channel_publics)
        self.neighbour_identities, self.participants, self.plan_digest = list(identities), dict(participants), plan.digest()
        self.releases = [r.name for r in plan.releases]
        self.seeds = [masks.new_seed() for _ in self.releases]
        k = len(neighbours)
        key_shares = [masks.share(key, plan.threshold, k) for key in self.mask_privates]
        seed_shares = [masks.share(seed, plan.threshold, k) for seed in self.seeds]
        out = []
        channels = masks.derive_many(self.channel_private, list(channel_publics), "share-encryption")
        for position, (holder, key) in enumerate(zip(neighbours, channels)):
            plaintext = _pack([shares[position] for shares in key_shares] + [shares[position] for shares in seed_shares])
            out.append(masks.encrypt(key, plaintext, _associated(self.index, holder)))
        return out

    def hold(self, ciphertexts: list[bytes]) -> None:
        """Keep the shares the neighbours encrypted for this device (forwarded by the server)."""
        if len(ciphertexts) != len(self.neighbours):
            raise ProtocolRefusal(f"{len(ciphertexts)} forwarded shares for {len(self.neighbours)} neighbours")
        self.held = list(ciphertexts)

    # --- stage 3 ---------------------------------------------------------------------------
    def masked_input(
        self, plan: SecurePlan, release: ReleasePlan, participants: list[int], statistic: np.ndarray, add_noise: bool = True,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """This device's masked, noised, quantised statistic, and the record it signs. The
        masked vector is kept (uniform to anyone without the masks) until the device sketches it
        at the consistency round."""
        if release.name not in self.releases:
            raise ProtocolRefusal(f"no self-mask seed for release {release.name!r}: the key stages did not run")
        if release.name in self.masked:
            raise ProtocolRefusal(f"this device already sent its input for release {release.name!r}")
        self._check_population(plan, participants, "mask an input")
        strangers = sorted(set(int(v) for v in participants) - set(self.participants)) if self.participants else []
        if strangers:
            raise ProtocolRefusal(f"devices {strangers[:5]} are named as taking part but were not in the participant list this device shared under")
        revealed = sorted(v for v in participants if f"{release.name}:{v}" in self.revealed_keys)
        if revealed:
            raise ProtocolRefusal(f"devices {revealed} take part although this device revealed their mask keys")
        if statistic.size != release.dimension:
            raise ProtocolRefusal(f"a statistic of {statistic.size} values for a release of {release.dimension}")
        variance = release.share_variance if add_noise else 0.0
        vector = to_field(rounded_with_share(statistic, release, noise_rng(), add_noise))
        vector = vector + masks.mask_stream(masks.release_key(self.seeds[self.releases.index(release.name)], release.name), release.dimension)
        taking_part = set(participants)
        which = self.releases.index(release.name)
        partners = [(v, self._mask_public(position, which)) for position, v in enumerate(self.neighbours) if v in taking_part]
        pairwise = masks.derive_many(self.mask_privates[which], [public for _, public in partners], "mask")
        for (v, _), secret in zip(partners, pairwise):
            stream = masks.mask_stream(masks.release_key(secret, release.name), release.dimension)
            vector = vector + stream if pairwise_sign(self.index, v) > 0 else vector - stream
        record = {
            "release": release.name,
            "index": self.index,
            "noise-variance": float(variance),
            "scale": float(release.scale),
            "bound": float(release.bound),
            "field-bits": FIELD_BITS,
            "dimension": int(release.dimension),
            "participants": len(participants),
            "plan-sha256": plan.digest(),
            "masked-sha256": masks.digest(vector),
        }
        self.masked.append(release.name)
        self.pending[release.name] = np.ascontiguousarray(vector, dtype="<u4").tobytes()
        self.inputs[release.name] = sorted(int(v) for v in participants)
        return vector, record

    # --- stage 4 ---------------------------------------------------------------------------
    def confirm(self, plan: SecurePlan, release: str, survivors: list[int], masked_sum: str, key,
                keep_sketch_matrix: bool = True) -> tuple[bytes, bytes, bytes]:
        """(signature on the survivor set and committed sum, sketch, signature on the sketch),
        with identity ``key``: only a set it sent its input under, containing it, of at least the
        minimum, one set and one sum only. The sketch is of the masked vector this device sent,
        with the matrix the committed sum seeds. ``keep_sketch_matrix``: keep that matrix in this
        process for the next device (a simulation), rather than draw its rows and let them go (a
        deployed device)."""
        if release not in self.masked:
            raise ProtocolRefusal(f"this device sent no input for release {release!r}: it confirms no survivor set of it")
        self._check_population(plan, survivors, "confirm a survivor set")
        outside = sorted(set(survivors) - set(self.inputs.get(release, [])))
        if outside:
            raise ProtocolRefusal(f"devices {outside[:5]} are named as survivors but were not asked for their input with this device")
        wanted = sorted(set(int(v) for v in survivors))
        parts = graph_parts(wanted, self.graph) if self.graph else 1
        if parts > 1:
            raise ProtocolRefusal(f"the survivor set's neighbour graph is in {parts} parts, whose sums could be unmasked apart: refusing to confirm it")
        if len(masked_sum) != 64 or any(c not in "0123456789abcdef" for c in masked_sum):
            raise ProtocolRefusal(f"the committed masked sum of release {release!r} is not a SHA-256 digest: refusing to confirm")
        if release in self.confirmed and (self.confirmed[release] != wanted or self.committed.get(release) != masked_sum):
            raise ProtocolRefusal(f"this device already signed another survivor set or masked sum for release {release!r}: refusing a second view")
        if release not in self.sketches:  # the first confirmation sketches the vector and lets it go; a repeat re-signs
            if release not in self.pending:
                raise ProtocolRefusal(f"this device no longer holds its masked input of release {release!r}: it cannot sketch it")
            vector = np.frombuffer(self.pending.pop(release), dtype="<u4")
            rows = masks.sketch_matrix if keep_sketch_matrix else masks.sketch_rows
            self.sketches[release] = masks.sketch_bytes(masks.sketch(rows(sketch_seed(release, self.inputs[release], masked_sum), vector.size), vector))
        self.confirmed[release], self.committed[release], sketch = wanted, masked_sum, self.sketches[release]
        survivors_signature = identity.sign(
            key, identity.survivors_message(self.run, release, wanted, identity.participants_digest(self.participants), masked_sum))
        return survivors_signature, sketch, identity.sign(key, identity.sketch_message(self.run, release, self.index, masked_sum, sketch))

    def check_confirmations(self, plan: SecurePlan, release: str, survivors: list[int], dropped: list[int],
                            signers: list[str], signatures: list[bytes], roster: identity.Roster | frozenset[str]) -> None:
        """The set to unmask is the one this device signed, and at least the minimum of distinct
        roster identities signed it too."""
        wanted = sorted(set(int(v) for v in survivors))
        if release not in self.confirmed or release not in self.committed:
            raise ProtocolRefusal(f"this device signed no survivor set for release {release!r}: refusing to unmask")
        if self.confirmed[release] != wanted:
            raise ProtocolRefusal(f"the survivor set to unmask is not the one this device signed for release {release!r}")
        stray = sorted(set(int(v) for v in dropped) - (set(self.inputs.get(release, [])) - set(wanted)))
        if stray:
            raise ProtocolRefusal(f"devices {stray[:5]} are named as dropped but were not asked for their input with this device")
        message = identity.survivors_message(
            self.run, release, wanted, identity.participants_digest(self.participants), self.committed[release])
        valid = {who for who, signature in zip(signers, signatures) if who in roster and identity.verify(who, signature, message)}
        if len(valid) < plan.min_survivors:
            raise ProtocolRefusal(
                f"{len(valid)} distinct roster devices signed the survivor set of release {release!r}, below the minimum "
                f"{plan.min_survivors}: refusing to unmask"
            )

    # --- stage 5 ---------------------------------------------------------------------------
    def unmask(
        self, plan: SecurePlan, release: str, survivors: list[int], dropped: list[int],
        signers: list[str], signatures: list[bytes], roster: identity.Roster | frozenset[str],
    ) -> tuple[dict[int, bytes], dict[int, bytes]]:
        """(seed shares of surviving neighbours, mask-key shares of dropped neighbours), once
        ``signers`` (identity keys) have signed the survivor set this device signed."""
        self._check_population(plan, survivors, "unmask")
        if set(survivors) & set(dropped):
            raise ProtocolRefusal(f"devices {sorted(set(survivors) & set(dropped))} are named as survivors and as dropped")
        if len(self.held) != len(self.neighbours):
            raise ProtocolRefusal("no shares held: the server never forwarded them")
        held_from = {v for v, c in zip(self.neighbours, self.held) if c}
        if any(v not in held_from for v in self.neighbours if v in set(dropped)):
            raise ProtocolRefusal("a dropped device named that never shared its keys with this device")
        which = self.releases.index(release) if release in self.releases else -1
        if which < 0:
            raise ProtocolRefusal(f"unknown release {release!r}")
        if release in self.unmasked:
            raise ProtocolRefusal(f"this device already answered the unmasking of release {release!r}")
        self.check_confirmations(plan, release, survivors, dropped, signers, signatures, roster)
        alive, gone = set(survivors), set(dropped)
        seed_out: dict[int, bytes] = {}
        key_out: dict[int, bytes] = {}
        for v, channel, ciphertext in zip(self.neighbours, self.channel_publics, self.held):
            if (v not in alive and v not in gone) or not ciphertext:
                continue
            tag = f"{release}:{v}"
            if v in alive and tag in self.revealed_keys:
                raise ProtocolRefusal(f"device {v}'s mask key was revealed: refusing to reveal its self-mask seed too")
            if v in gone and tag in self.revealed_seeds:
                raise ProtocolRefusal(f"device {v}'s self-mask seed was revealed: refusing to reveal its mask key too")
            key = masks.derive(self.channel_private, channel, "share-encryption")
            try:
                parts = _unpack(masks.decrypt(key, ciphertext, _associated(v, self.index)))
            except InvalidTag:
                raise ProtocolRefusal(f"the share forwarded as device {v}'s was not encrypted by device {v} for this device") from None
            count = len(self.releases)
            if v in alive:
                seed_out[v] = parts[count + which]
            else:
                key_out[v] = parts[which]
        # Recorded only once every share is answered: a refusal half-way reveals nothing.
        self.revealed_seeds.extend(f"{release}:{v}" for v in seed_out)
        self.revealed_keys.extend(f"{release}:{v}" for v in key_out)
        self.unmasked.append(release)
        return seed_out, key_out

    def _check_population(self, plan: SecurePlan, members: list[int], action: str) -> None:
        if self.plan_digest and plan.digest() != self.plan_digest:
            raise ProtocolRefusal(f"refusing to {action} under another plan than the one this device shared its keys under")
        if plan.roster_size != self.devices:
            raise ProtocolRefusal(f"the plan is for {plan.roster_size} devices, this session for {self.devices}")
        if len(set(members)) < plan.min_survivors:
            raise ProtocolRefusal(
                f"refusing to {action} for {len(set(members))} devices: the minimum is {plan.min_survivors} of {plan.devices}"
            )
        if self.index not in members or not all(0 <= v < self.devices for v in members):
            raise ProtocolRefusal(f"the device list does not name this device ({self.index}) or names unknown devices")

    # --- persistence (Flower's context.state holds plain records) ----------------------------
    def to_record(self) -> dict[str, Any]:
        return {
            "index": self.index, "devices": self.devices, "mask-privates": list(self.mask_privates), "channel-private": self.channel_private,
            "releases": list(self.releases), "seeds": list(self.seeds), "neighbours": list(self.neighbours),
            "mask-publics": list(self.mask_publics), "channel-publics": list(self.channel_publics), "held": list(self.held),
            "revealed-keys": list(self.revealed_keys), "revealed-seeds": list(self.revealed_seeds),
            "masked": list(self.masked), "unmasked": list(self.unmasked), "run": self.run,
            "neighbour-identities": list(self.neighbour_identities), "inputs": json.dumps(self.inputs),
            "confirmed": json.dumps(self.confirmed), "participants": json.dumps({str(k): v for k, v in self.participants.items()}),
            "graph": json.dumps({str(k): v for k, v in self.graph.items()}),
            "plan-digest": self.plan_digest, "pending-releases": list(self.pending), "pending-vectors": list(self.pending.values()),
            "committed": json.dumps(self.committed), "sketched-releases": list(self.sketches), "sketches": list(self.sketches.values()),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "DeviceSession":
        return cls(
            index=int(record["index"]), devices=int(record["devices"]), mask_privates=[bytes(k) for k in record["mask-privates"]],
            channel_private=bytes(record["channel-private"]), releases=list(record["releases"]), seeds=list(record["seeds"]),
            neighbours=[int(v) for v in record["neighbours"]], mask_publics=list(record["mask-publics"]),
            channel_publics=list(record["channel-publics"]), held=list(record["held"]),
            revealed_keys=list(record["revealed-keys"]), revealed_seeds=list(record["revealed-seeds"]),
            masked=list(record.get("masked", [])), unmasked=list(record.get("unmasked", [])), run=str(record.get("run", "")),
            neighbour_identities=[str(v) for v in record.get("neighbour-identities", [])],
            inputs={k: [int(v) for v in vs] for k, vs in json.loads(str(record.get("inputs", "{}"))).items()},
            confirmed={k: [int(v) for v in vs] for k, vs in json.loads(str(record.get("confirmed", "{}"))).items()},
            participants={int(k): str(v) for k, v in json.loads(str(record.get("participants", "{}"))).items()},
            graph={int(k): [int(u) for u in vs] for k, vs in json.loads(str(record.get("graph", "{}"))).items()},
            plan_digest=str(record.get("plan-digest", "")),
            pending={str(k): bytes(v) for k, v in zip(record.get("pending-releases", []), record.get("pending-vectors", []))},
            committed={str(k): str(v) for k, v in json.loads(str(record.get("committed", "{}"))).items()},
            sketches={str(k): bytes(v) for k, v in zip(record.get("sketched-releases", []), record.get("sketches", []))},
        )
