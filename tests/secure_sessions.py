"""Test helper: device sessions of the secure sum run through their real stages in one process,
each device with its own identity key, the roster of their keys, and no server in between."""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ed25519

from shared.secure_sum import identity, masks
from shared.secure_sum.session import DeviceSession
from shared.secure_sum.plan import SecurePlan, participant_graph
from shared.secure_sum.quantise import from_field
from shared.secure_sum.unmask import unmasked_sum

RUN = "run-1"
COMMITTED = "ab" * 32  # the masked sum's SHA-256 a server commits to at the consistency round (no server here)


class Protocol:
    """``plan.devices`` device sessions that shared their signed keys over a ring of the plan's degree."""

    def __init__(self, plan: SecurePlan) -> None:
        self.plan = plan
        n = plan.devices
        self.keys = [ed25519.Ed25519PrivateKey.generate() for _ in range(n)]
        self.ids = [identity.public_hex(k) for k in self.keys]
        self.roster = identity.Roster(frozenset(self.ids), seed="00" * 32)
        self.sessions = [DeviceSession(i, n, run=RUN) for i in range(n)]
        self.publics = [s.public_keys(len(plan.releases)) for s in self.sessions]
        self.signed = [identity.sign(self.keys[i], identity.key_bundle_message(RUN, i, *self.publics[i])) for i in range(n)]
        self.participants = dict(enumerate(self.ids))
        self.graph = participant_graph(self.roster.graph_seed(RUN), self.participants, plan.neighbours, self.roster)  # what every device recomputes
        sent = {}
        for s in self.sessions:
            them = self.graph[s.index]
            for holder, ciphertext in zip(them, s.share_keys(plan, *self.neighbour_fields(them), self.roster, self.ids[s.index], self.participants)):
                sent[(s.index, holder)] = ciphertext
        for s in self.sessions:
            s.hold([sent[(v, s.index)] for v in s.neighbours])

    def neighbour_fields(self, them: list[int]) -> tuple[list[int], list[bytes], list[bytes], list[str], list[bytes]]:
        """What the server forwards a device about its neighbours ``them``."""
        return them, [self.publics[v][0] for v in them], [self.publics[v][1] for v in them], [self.ids[v] for v in them], [self.signed[v] for v in them]

    def mask_public(self, device: int, release: str) -> bytes:
        which = [r.name for r in self.plan.releases].index(release)
        return self.publics[device][0][32 * which : 32 * (which + 1)]

    def inputs(self, release: str, statistics: list[np.ndarray], add_noise: bool = True, participants: list[int] | None = None) -> list[np.ndarray]:
        taking_part = participants if participants is not None else list(range(self.plan.devices))
        return [self.sessions[i].masked_input(self.plan, self.plan.release(release), taking_part, statistics[i], add_noise=add_noise)[0]
                for i in taking_part]

    def confirm(self, release: str, survivors: list[int]) -> tuple[list[str], list[bytes]]:
        """Every survivor's signature on ``survivors`` and the committed sum (the consistency round)."""
        return [self.ids[u] for u in survivors], [self.sessions[u].confirm(self.plan, release, survivors, COMMITTED, self.keys[u])[0]
                                                  for u in survivors]

    def unmask(self, device: int, release: str, survivors: list[int], dropped: list[int], signed=None):
        signers, signatures = signed if signed is not None else self.confirmations[release]
        return self.sessions[device].unmask(self.plan, release, survivors, dropped, signers, signatures, self.roster)

    def seeds(self, release: str) -> dict[int, bytes]:
        """Every device's self-mask seed, rebuilt from the shares its neighbours reveal."""
        everyone = list(range(self.plan.devices))
        signed = self.confirm(release, everyone)
        shares: dict[int, list[bytes]] = {u: [] for u in everyone}
        for s in self.sessions:
            for owner, piece in self.unmask(s.index, release, everyone, [], signed)[0].items():
                shares[owner].append(piece)
        return {u: masks.rebuild(pieces, self.plan.threshold) for u, pieces in shares.items()}

    def unmasked(self, release: str, vectors: list[np.ndarray]) -> np.ndarray:
        total = np.zeros_like(vectors[0])
        for v in vectors:
            total += v
        everyone = list(range(self.plan.devices))
        publics = {u: self.mask_public(u, release) for u in everyone}
        return from_field(unmasked_sum(total, release, everyone, self.seeds(release), {}, publics, self.graph))
