"""The device's side of the secure sum, tested on the device itself (``DeviceSession``), with no
server in between: its arithmetic (masks, noise, clipping, rounding) and its refusals at their
boundaries, where a server's own checks would otherwise stop a run before the device is asked.

Every session here goes through the real stages: keys, encrypted shares forwarded to their
holders, masked inputs, and unmasking with the seeds rebuilt from the holders' shares."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from secure_sessions import COMMITTED, Protocol
from server.audit.release_model import chi_square_interval
from shared.secure_sum import masks
from shared.secure_sum.session import DeviceSession, ProtocolRefusal, pairwise_sign
from shared.secure_sum.plan import SecurePlan, make_plan
from shared.secure_sum.quantise import conditional_round, from_field

FALSE_ALARM = 1e-6  # per assertion on a random draw
N = 12


def _plan(dimension: int, epsilon: float = 8.0, devices: int = N) -> SecurePlan:
    return make_plan(devices, ["a"], [dimension], [1.0], epsilon, 1e-5, 8, 0.2, 0.05)


def _unit_vectors(count: int, dimension: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.random((count, dimension))
    return [v / np.linalg.norm(v) for v in vectors]


# --- arithmetic ----------------------------------------------------------------------------------


def test_pairwise_keys_match_between_the_two_ends_and_differ_between_pairs_releases_and_sessions():
    plan = make_plan(N, ["a", "b"], [8, 8], [0.5, 0.5], 8.0, 1e-5, 8, 0.2, 0.05)
    protocol = Protocol(plan)
    private = {s.index: s.mask_privates for s in protocol.sessions}
    u, v, w = 0, protocol.graph[0][0], protocol.graph[0][1]
    for release, which in (("a", 0), ("b", 1)):
        assert masks.derive(private[u][which], protocol.mask_public(v, release), "mask") == masks.derive(
            private[v][which], protocol.mask_public(u, release), "mask")
    secrets = {
        masks.derive(private[u][0], protocol.mask_public(v, "a"), "mask"),
        masks.derive(private[u][0], protocol.mask_public(w, "a"), "mask"),
        masks.derive(private[u][1], protocol.mask_public(v, "b"), "mask"),
        masks.derive(Protocol(plan).sessions[u].mask_privates[0], protocol.mask_public(v, "a"), "mask"),
    }
    assert len(secrets) == 4  # another pair, another release, another session: another key


def test_a_survivors_masked_vector_less_its_revealed_self_mask_is_its_pairwise_masks_uniform_and_unrelated_to_its_input():
    """After unmasking the server holds every survivor's self-mask seed; what is left of device
    0's vector is its input plus the pairwise masks, which only its neighbours' private keys give
    (recomputed here from their end), and which are fresh in each session: uniform and unrelated
    to the input (chi-square over the top byte's 256 bins at a false-alarm rate of 1e-6)."""
    dimension = 40_000
    chi_square_limit = 376.0  # chi-square(255) quantile at 1 - 1e-6
    residuals = []
    for statistic in (np.zeros(dimension), np.full(dimension, 1 / 200.0)):
        protocol = Protocol(_plan(dimension, epsilon=float("inf")))
        inputs = [statistic] + [np.zeros(dimension)] * (N - 1)
        vectors = protocol.inputs("a", inputs)
        seed = protocol.seeds("a")[0]
        residual = vectors[0] - masks.mask_stream(masks.release_key(seed, "a"), dimension)
        pairwise = np.zeros(dimension, dtype=np.uint32)
        for v in protocol.graph[0]:
            secret = masks.derive(protocol.sessions[v].mask_privates[0], protocol.mask_public(0, "a"), "mask")  # from v's end
            stream = masks.mask_stream(masks.release_key(secret, "a"), dimension)
            pairwise = pairwise + stream if pairwise_sign(0, v) > 0 else pairwise - stream
        rounded = from_field(residual - pairwise)
        assert np.abs(rounded - statistic * protocol.plan.release("a").scale).max() < 1.0  # the input itself, rounded
        counts = np.bincount((residual >> 24).astype(np.int64), minlength=256)
        assert float(((counts - dimension / 256) ** 2 / (dimension / 256)).sum()) < chi_square_limit
        residuals.append(residual)
    assert abs(np.corrcoef(residuals[0].astype(float), residuals[1].astype(float))[0, 1]) < 0.03


def test_at_finite_epsilon_the_unmasked_sum_less_the_true_sum_has_the_variance_the_signed_shares_claim():
    """``||unmasked - scale * sum(x)||^2 / (N * share variance)`` is chi-square with d degrees of
    freedom (the rounding's error, at most N/4 per coordinate, is 1e-13 of the noise): it must lie
    in the two-sided interval at a false-alarm rate of 1e-6."""
    dimension = 20_000
    protocol = Protocol(_plan(dimension))
    release = protocol.plan.release("a")
    statistics = _unit_vectors(N, dimension)
    unmasked = protocol.unmasked("a", protocol.inputs("a", statistics))
    error = unmasked - release.scale * np.sum(statistics, axis=0)
    low, high = chi_square_interval(dimension, FALSE_ALARM / 2)
    statistic = float(error @ error) / (N * release.share_variance)
    assert low <= statistic <= high, (low, statistic, high)
    assert abs(float(error.mean())) < NormalDist().inv_cdf(1 - FALSE_ALARM / 2) * np.sqrt(N * release.share_variance / dimension)


def test_without_noise_the_unmasked_sum_is_the_rounded_sum_with_no_bias():
    """At user-epsilon inf the sum is exact but for the rounding: every coordinate within N
    units, and the error's mean over 20,000 coordinates within 5.3 standard errors of zero (each
    device's rounding error has variance at most 1/4): rounding down would shift it by about N/2."""
    dimension = 20_000
    protocol = Protocol(_plan(dimension, epsilon=float("inf")))
    statistics = _unit_vectors(N, dimension, seed=1)
    error = protocol.unmasked("a", protocol.inputs("a", statistics)) - protocol.plan.release("a").scale * np.sum(statistics, axis=0)
    assert np.abs(error).max() < N
    assert abs(float(error.mean())) < NormalDist().inv_cdf(1 - FALSE_ALARM / 2) * np.sqrt(N / 4 / dimension)


def test_a_statistic_of_norm_5_enters_the_sum_clipped_to_norm_1_within_the_rounding_bound():
    dimension = 1_000
    protocol = Protocol(_plan(dimension, epsilon=float("inf")))
    release = protocol.plan.release("a")
    loud = 5.0 * _unit_vectors(1, dimension, seed=2)[0]
    unmasked = protocol.unmasked("a", protocol.inputs("a", [loud] + [np.zeros(dimension)] * (N - 1)))
    assert np.linalg.norm(unmasked) <= release.bound
    assert np.abs(unmasked - release.scale * loud / 5.0).max() < 1.0


def test_conditional_rounding_is_unbiased_over_many_draws():
    """Each coordinate's mean over 4,000 draws is its scaled value, within 5.3 standard errors
    (a rounding of fraction f has variance f (1 - f) <= 1/4)."""
    rng = np.random.default_rng(3)
    vector = np.linspace(0.01, 0.99, 50) / 100.0  # fractions 0.01 .. 0.99 of a unit at scale 100
    vector /= max(1.0, float(np.linalg.norm(vector)))
    draws = np.array([conditional_round(vector, 100.0, 1e9, rng) for _ in range(4_000)], dtype=np.float64)
    z = NormalDist().inv_cdf(1 - FALSE_ALARM / 2 / 50)
    assert np.abs(draws.mean(axis=0) - vector * 100.0).max() < z * 0.5 / np.sqrt(4_000)


# --- refusals at their boundary, both directions ------------------------------------------------------

EVERYONE = list(range(N))


@pytest.fixture
def protocol() -> Protocol:
    """12 devices, a release needs 10, threshold 5 of 8 neighbours; every device sent its input
    to release "a" and signed the full survivor set."""
    protocol = Protocol(_plan(16))
    protocol.inputs("a", [np.zeros(16)] * N)
    protocol.confirmations = {"a": protocol.confirm("a", EVERYONE)}
    return protocol


def _confirmed(protocol: Protocol, survivors: list[int], release: str = "a") -> tuple[list[str], list[bytes]]:
    """A fresh session set in which ``survivors`` signed ``survivors`` (the rest sent an input too)."""
    protocol.inputs(release, [np.zeros(16)] * N)
    return protocol.confirm(release, survivors)


def test_a_device_masks_and_unmasks_for_the_minimum_and_refuses_one_fewer():
    plan = _plan(16)
    assert plan.min_survivors == 10
    at_minimum, below = list(range(10)), list(range(9))
    protocol = Protocol(plan)
    with pytest.raises(ProtocolRefusal, match="refusing to mask an input for 9 devices: the minimum is 10 of 12"):
        protocol.sessions[0].masked_input(plan, plan.release("a"), below, np.zeros(16))
    protocol.inputs("a", [np.zeros(16)] * N)
    with pytest.raises(ProtocolRefusal, match="refusing to confirm a survivor set for 9 devices: the minimum is 10 of 12"):
        protocol.sessions[0].confirm(plan, "a", below, COMMITTED, protocol.keys[0])[0]
    signed = protocol.confirm("a", at_minimum)
    with pytest.raises(ProtocolRefusal, match="refusing to unmask for 9 devices: the minimum is 10 of 12"):
        protocol.unmask(1, "a", below, [10, 11], signed)
    seeds, keys = protocol.unmask(1, "a", at_minimum, [10, 11], signed)
    assert set(seeds) == set(protocol.graph[1]) & set(at_minimum) and set(keys) == set(protocol.graph[1]) & {10, 11}


def test_a_device_unmasks_with_the_minimum_of_signatures_on_its_set_and_refuses_one_fewer():
    protocol = Protocol(_plan(16))
    signers, signatures = _confirmed(protocol, EVERYONE)
    with pytest.raises(ProtocolRefusal, match="9 distinct roster devices signed the survivor set of release 'a', below the minimum 10"):
        protocol.unmask(0, "a", EVERYONE, [], (signers[:9], signatures[:9]))
    with pytest.raises(ProtocolRefusal, match="9 distinct roster devices signed"):  # one signer counted twice is one
        protocol.unmask(0, "a", EVERYONE, [], (signers[:9] + signers[:1], signatures[:9] + signatures[:1]))
    with pytest.raises(ProtocolRefusal, match="9 distinct roster devices signed"):  # a signature on another set counts for nothing
        protocol.unmask(0, "a", EVERYONE, [], (signers[:10], signatures[:9] + signatures[:1]))
    protocol.unmask(0, "a", EVERYONE, [], (signers[:10], signatures[:10]))


def test_a_survivor_signs_one_set_per_release_only_one_it_sent_its_input_under():
    """The split view: shown a set without a neighbour while others are shown it with, a device
    that already signed one set refuses the other; and nobody signs devices that were not asked."""
    plan = _plan(16)
    protocol = Protocol(plan)
    with pytest.raises(ProtocolRefusal, match="this device sent no input for release 'a': it confirms no survivor set of it"):
        protocol.sessions[0].confirm(plan, "a", EVERYONE, COMMITTED, protocol.keys[0])[0]
    protocol.inputs("a", [np.zeros(16)] * N, participants=EVERYONE[:11])
    with pytest.raises(ProtocolRefusal, match=r"devices \[11\] are named as survivors but were not asked for their input with this device"):
        protocol.sessions[0].confirm(plan, "a", EVERYONE, COMMITTED, protocol.keys[0])[0]
    protocol.sessions[0].confirm(plan, "a", EVERYONE[:11], COMMITTED, protocol.keys[0])[0]
    protocol.sessions[0].confirm(plan, "a", EVERYONE[:11], COMMITTED, protocol.keys[0])[0]  # the same set again: the same answer
    with pytest.raises(ProtocolRefusal, match="this device already signed another survivor set or masked sum for release 'a': refusing a second view"):
        protocol.sessions[0].confirm(plan, "a", [0] + EVERYONE[2:11], COMMITTED, protocol.keys[0])[0]
    with pytest.raises(ProtocolRefusal, match="this device already signed another survivor set or masked sum for release 'a': refusing a second view"):
        protocol.sessions[0].confirm(plan, "a", EVERYONE[:11], "cd" * 32, protocol.keys[0])  # the same set, another sum
    with pytest.raises(ProtocolRefusal, match="the committed masked sum of release 'a' is not a SHA-256 digest: refusing to confirm"):
        protocol.sessions[1].confirm(plan, "a", EVERYONE[:11], "not a digest", protocol.keys[1])


def test_a_device_unmasks_only_the_set_it_signed():
    protocol = Protocol(_plan(16))
    signed = _confirmed(protocol, EVERYONE[:11])  # device 11 dropped after its input
    with pytest.raises(ProtocolRefusal, match="the survivor set to unmask is not the one this device signed for release 'a'"):
        protocol.unmask(0, "a", EVERYONE, [], signed)
    protocol.unmask(0, "a", EVERYONE[:11], [11], signed)
    late = Protocol(_plan(16))
    late.inputs("a", [np.zeros(16)] * N)
    signers, signatures = [], []
    for u in EVERYONE[1:]:  # device 0 was never shown the set
        signers.append(late.ids[u])
        signatures.append(late.sessions[u].confirm(late.plan, "a", EVERYONE, COMMITTED, late.keys[u])[0])
    with pytest.raises(ProtocolRefusal, match="this device signed no survivor set for release 'a': refusing to unmask"):
        late.unmask(0, "a", EVERYONE, [], (signers, signatures))


def test_a_device_refuses_dropped_devices_it_never_masked_with():
    plan = _plan(16)
    protocol = Protocol(plan)
    protocol.inputs("a", [np.zeros(16)] * N, participants=EVERYONE[:11])  # device 11 was not asked
    signed = protocol.confirm("a", EVERYONE[:10])
    with pytest.raises(ProtocolRefusal, match=r"devices \[11\] are named as dropped but were not asked for their input with this device"):
        protocol.unmask(0, "a", EVERYONE[:10], [10, 11], signed)
    protocol.unmask(0, "a", EVERYONE[:10], [10], signed)


def test_a_device_reveals_no_key_share_after_the_seed_share_of_the_same_neighbour(protocol):
    from shared.secure_sum import identity

    session = protocol.sessions[0]
    v = protocol.graph[0][0]
    seeds, _ = protocol.unmask(0, "a", EVERYONE, [])
    assert v in seeds and f"a:{v}" in session.revealed_seeds
    # past the refusals in front of it (one unmasking per release, one signed set): the guard behind them
    session.unmasked.remove("a")
    others = [u for u in EVERYONE if u != v]
    session.confirmed["a"] = others
    message = identity.survivors_message("run-1", "a", others, identity.participants_digest(protocol.participants), COMMITTED)
    signed = ([protocol.ids[u] for u in others], [identity.sign(protocol.keys[u], message) for u in others])
    with pytest.raises(ProtocolRefusal, match=f"device {v}'s self-mask seed was revealed: refusing to reveal its mask key too"):
        protocol.unmask(0, "a", others, [v], signed)


def test_a_device_reveals_no_seed_share_after_the_key_share_of_the_same_neighbour():
    from shared.secure_sum import identity

    plan = _plan(16)
    protocol = Protocol(plan)
    v = protocol.graph[0][0]
    others = [u for u in EVERYONE if u != v]
    signed = _confirmed(protocol, others)
    _, keys = protocol.unmask(0, "a", others, [v], signed)
    assert v in keys and f"a:{v}" in protocol.sessions[0].revealed_keys
    session = protocol.sessions[0]
    session.unmasked.remove("a")
    session.confirmed["a"] = EVERYONE
    message = identity.survivors_message("run-1", "a", EVERYONE, identity.participants_digest(protocol.participants), COMMITTED)
    everyone_signed = ([protocol.ids[u] for u in EVERYONE], [identity.sign(protocol.keys[u], message) for u in EVERYONE])
    with pytest.raises(ProtocolRefusal, match=f"device {v}'s mask key was revealed: refusing to reveal its self-mask seed too"):
        protocol.unmask(0, "a", EVERYONE, [], everyone_signed)


def test_a_device_named_both_as_survivor_and_as_dropped_is_refused(protocol):
    v = protocol.graph[0][0]
    with pytest.raises(ProtocolRefusal, match=rf"devices \[{v}\] are named as survivors and as dropped"):
        protocol.unmask(0, "a", EVERYONE, [v])
    assert protocol.sessions[0].revealed_seeds == protocol.sessions[0].revealed_keys == []


def test_a_neighbour_list_of_the_wrong_size_or_naming_the_device_is_refused():
    plan = _plan(16)
    assert (plan.threshold, plan.neighbours) == (5, 8)
    protocol = Protocol(plan)
    for listed in ([1, 2, 3, 4], list(range(1, 10)), [0, 1, 2, 3, 4, 5, 6, 7], [1, 1, 2, 3, 4, 5, 6, 7]):
        session = DeviceSession(0, N, run="run-1")
        session.public_keys(1)
        with pytest.raises(ProtocolRefusal, match=f"neighbour list of {len(listed)}: the plan wants 5 to 8 distinct devices, not this one"):
            session.share_keys(plan, *protocol.neighbour_fields(listed), protocol.roster, protocol.ids[0], protocol.participants)
    ours = protocol.graph[0]
    chosen = sorted(set(range(1, N)) - set(ours))[:4] + ours[:4]  # eight distinct devices, four of them the server's choice
    session = DeviceSession(0, N, run="run-1")
    session.public_keys(1)
    with pytest.raises(ProtocolRefusal, match="the neighbour list is not the graph the participant list determines: refusing neighbours the server chose"):
        session.share_keys(plan, *protocol.neighbour_fields(chosen), protocol.roster, protocol.ids[0], protocol.participants)
    session = DeviceSession(0, N, run="run-1")
    session.public_keys(1)
    session.share_keys(plan, *protocol.neighbour_fields(ours), protocol.roster, protocol.ids[0], protocol.participants)  # accepted
    with pytest.raises(ProtocolRefusal, match="this session already shared its keys: refusing a second share stage"):
        session.share_keys(plan, *protocol.neighbour_fields(ours), protocol.roster, protocol.ids[0], protocol.participants)


def test_a_participant_list_short_of_the_minimum_or_foreign_or_repeated_is_refused():
    plan = _plan(16)
    protocol = Protocol(plan)
    ours = protocol.graph[0]

    def attempt(participants):
        session = DeviceSession(0, N, run="run-1")
        session.public_keys(1)
        session.share_keys(plan, *protocol.neighbour_fields(ours), protocol.roster, protocol.ids[0], participants)

    with pytest.raises(ProtocolRefusal, match="9 participants listed: the minimum is 10 of 12"):  # this device and its 8 neighbours
        attempt({i: protocol.participants[i] for i in [0, *ours]})
    repeated = {**protocol.participants, 11: protocol.participants[10]}
    with pytest.raises(ProtocolRefusal, match="the participant list repeats an identity key or names one outside this device's roster"):
        attempt(repeated)
    with pytest.raises(ProtocolRefusal, match=r"the participant list does not name this device \(0\) under its identity key"):
        attempt({**protocol.participants, 0: protocol.ids[1], 1: protocol.ids[0]})


def test_substituted_or_unsigned_neighbour_keys_are_refused():
    """The server replaces neighbour 1's mask key with its own, re-uses an identity, or names a
    key outside the roster: the device shares nothing."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from shared.secure_sum import identity

    plan = _plan(16)
    protocol = Protocol(plan)

    def attempt(change) -> None:
        session = DeviceSession(0, N, run="run-1")
        session.public_keys(1)
        them, mask, channel, ids, signed = (list(x) for x in protocol.neighbour_fields(protocol.graph[0]))
        change(mask, channel, ids, signed)
        session.share_keys(plan, them, mask, channel, ids, signed, protocol.roster, protocol.ids[0], protocol.participants)

    attempt(lambda *a: None)  # as forwarded: accepted
    server_key = DeviceSession(1, N).public_keys(1)[0]
    first = protocol.graph[0][0]
    with pytest.raises(ProtocolRefusal, match=f"neighbour {first}'s public keys are not signed by its identity key: refusing substituted keys"):
        attempt(lambda mask, channel, ids, signed: mask.__setitem__(0, server_key))
    with pytest.raises(ProtocolRefusal, match="two neighbours, or a neighbour and this device, share one identity key"):
        attempt(lambda mask, channel, ids, signed: ids.__setitem__(1, ids[0]))
    with pytest.raises(ProtocolRefusal, match="two neighbours, or a neighbour and this device, share one identity key"):
        attempt(lambda mask, channel, ids, signed: ids.__setitem__(1, protocol.ids[0]))
    stranger = ed25519.Ed25519PrivateKey.generate()

    def outsider(mask, channel, ids, signed):
        ids[0] = identity.public_hex(stranger)
        signed[0] = identity.sign(stranger, identity.key_bundle_message("run-1", first, mask[0], channel[0]))

    with pytest.raises(ProtocolRefusal, match=f"neighbour {first}'s identity key is not in this device's roster"):
        attempt(outsider)


def test_shares_forwarded_for_the_wrong_devices_are_refused(protocol):
    session = protocol.sessions[0]
    with pytest.raises(ProtocolRefusal, match="7 forwarded shares for 8 neighbours"):
        session.hold(session.held[:7])
    session.hold(session.held[1:] + session.held[:1])  # each neighbour's share filed under another
    v = session.neighbours[0]
    with pytest.raises(ProtocolRefusal, match=f"the share forwarded as device {v}'s was not encrypted by device {v} for this device"):
        protocol.unmask(0, "a", EVERYONE, [])
    assert session.revealed_seeds == [] and session.unmasked == []


def test_a_dropped_device_that_never_shared_its_keys_is_refused():
    protocol = Protocol(_plan(16))
    session = protocol.sessions[0]
    v = session.neighbours[0]
    others = [u for u in EVERYONE if u != v]
    signed = _confirmed(protocol, others)
    session.held[0] = b""  # v's shares never reached this device
    with pytest.raises(ProtocolRefusal, match="a dropped device named that never shared its keys with this device"):
        protocol.unmask(0, "a", others, [v], signed)
    protocol.unmask(0, "a", others, [], signed)  # not named: simply skipped


def test_an_unknown_release_is_refused(protocol):
    with pytest.raises(ProtocolRefusal, match="unknown release 'b'"):
        protocol.unmask(0, "b", EVERYONE, [], protocol.confirmations["a"])
    with pytest.raises(ProtocolRefusal, match="no self-mask seed for release 'b': the key stages did not run"):
        protocol.sessions[0].masked_input(protocol.plan, protocol.plan.release("a").__class__("b", 16, 1.0, 1.0, 0.0, 0.0), EVERYONE, np.zeros(16))


def test_a_survivor_set_whose_graph_is_split_is_not_confirmed():
    """Twenty devices in a ring of degree 4: a server that calls two consecutive devices dropped
    at two places (within its allowance of six) would hold two arcs whose sums unmask apart, each
    with part of the noise. Every device recomputes the graph and refuses to sign such a set."""
    from dataclasses import replace

    from shared.secure_sum.plan import participant_graph

    import hashlib

    base = _plan(16)  # its release; the graph's parameters set by hand (make_plan would refuse so thin a ring)
    plan = replace(base, devices=20, neighbours=4, threshold=3, min_survivors=14, colluders=0)
    protocol = Protocol(plan)
    seed = protocol.roster.graph_seed("run-1")
    order = sorted(protocol.participants, key=lambda i: hashlib.sha256(f"fedmmrec graph|{seed}|{protocol.participants[i]}".encode()).digest())
    assert participant_graph(seed, protocol.participants, 4, protocol.roster)[order[5]] == sorted([order[3], order[4], order[6], order[7]])
    gone = {order[0], order[1], order[10], order[11]}
    survivors = [u for u in range(20) if u not in gone]
    protocol.inputs("a", [np.zeros(16)] * 20)
    with pytest.raises(ProtocolRefusal, match="the survivor set's neighbour graph is in 2 parts, whose sums could be unmasked apart"):
        protocol.sessions[survivors[0]].confirm(plan, "a", survivors, COMMITTED, protocol.keys[survivors[0]])
    whole = [u for u in range(20) if u not in {order[0], order[1], order[10]}]
    protocol.sessions[whole[0]].confirm(plan, "a", whole, COMMITTED, protocol.keys[whole[0]])  # one cut: still one piece


def test_a_plan_for_another_population_than_the_roster_is_refused():
    """A server that says the run has 10 devices (so that a target's neighbours are all its
    colluders, or the minimum is small) is refused: a device plans for its roster's population."""
    from shared.secure_sum.identity import Roster

    plan = _plan(16)
    protocol = Protocol(plan)
    bigger = Roster(protocol.roster.keys | {"ab" * 32}, protocol.roster.seed)
    session = DeviceSession(0, N, run="run-1")
    session.public_keys(1)
    with pytest.raises(ProtocolRefusal, match="a plan for 12 devices, but this device's roster lists 13: the population is the roster's"):
        session.share_keys(plan, *protocol.neighbour_fields(protocol.graph[0]), bigger, protocol.ids[0], protocol.participants)


def test_leaving_devices_out_draws_no_one_new_into_a_neighbourhood():
    """The graph is a ring over the whole roster: a participant's neighbours are its ring
    neighbours that take part, so the server cannot bring colluders next to a target by
    leaving the honest devices between them out."""
    from shared.secure_sum.plan import participant_graph

    protocol = Protocol(_plan(16))
    seed = protocol.roster.graph_seed("run-1")
    full = participant_graph(seed, protocol.participants, 8, protocol.roster)
    left_out = set(full[0][:2])
    fewer = {i: k for i, k in protocol.participants.items() if i not in left_out}
    assert participant_graph(seed, fewer, 8, protocol.roster)[0] == [v for v in full[0] if v not in left_out]


def test_a_stage_message_without_a_field_is_refused_by_the_device_and_its_reply_dropped_by_the_server():
    """The stage records name each field once: a request without one is a protocol refusal that
    names it, and a reply without one is dropped by the server (as a device that did not answer)
    instead of stopping the release."""
    from types import SimpleNamespace

    from shared.messages import SECURE, SECURE_KEYS
    from shared.secure_sum.device import stage_reply
    from shared.secure_sum.records import KeysReply, KeysRequest, MissingField
    from shared.secure_sum.server import _read

    def carrying(fields):  # what secure_fields reads of a message: its secure record
        return SimpleNamespace(content=SimpleNamespace(config_records={SECURE: fields}), metadata=SimpleNamespace(run_id=1))

    with pytest.raises(ProtocolRefusal, match="secure-keys: a KeysRequest without its 'dimensions'"):
        stage_reply(carrying({"devices": 3, "index": 0}), None, None, SECURE_KEYS, "c", "i", None)
    with pytest.raises(MissingField):
        KeysRequest.of({"devices": 3, "index": 0})
    whole = KeysReply(b"k" * 96, b"c" * 32, [5, 15, 15], "ab" * 32, b"s" * 64)
    replies = {
        0: carrying(whole.fields()), 1: carrying({"channel-public": b"c" * 32, "dimensions": [5]}),
        2: carrying({**whole.fields(), "mask-public": 10**12}),  # bytes(10**12) would be a terabyte of zeros
    }
    said: list[str] = []
    assert _read(KeysReply, replies, said.append) == {0: whole}
    assert said == [
        "  device 1: a KeysReply without its 'mask-public': its reply is dropped",
        "  device 2: int where bytes are expected: its reply is dropped",
    ]


def test_a_ledger_config_from_before_the_selection_release_plans_none():
    from shared.releases import budget_shares, planned_releases

    old = {"popularity-budget-share": 0.1}  # written before selection-budget-share existed
    assert [r.name for r in planned_releases(old)] == ["popularity", "cooccurrence"] and budget_shares(old) == [0.1, 0.9]
    assert [r.name for r in planned_releases({**old, "selection-budget-share": 0.1})] == ["popularity", "cooccurrence", "selection"]
