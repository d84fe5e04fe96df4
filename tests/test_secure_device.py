"""The device's side of the secure sum, tested on the device itself (``DeviceSession``), with no
server in between: its arithmetic (masks, noise, clipping, rounding) and its refusals at their
boundaries, where a server's own checks would otherwise stop a run before the device is asked.

Every session here goes through the real stages: keys, encrypted shares forwarded to their
holders, masked inputs, and unmasking with the seeds rebuilt from the holders' shares."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from server.audit.releases import chi_square_interval
from shared.secure_sum import masks
from shared.secure_sum.device import DeviceSession, ProtocolRefusal, pairwise_sign
from shared.secure_sum.plan import SecurePlan, make_plan, ring_neighbours
from shared.secure_sum.quantise import conditional_round, from_field
from shared.secure_sum.unmask import unmasked_sum

FALSE_ALARM = 1e-6  # per assertion on a random draw
N = 12


class Protocol:
    """``N`` device sessions that shared their keys over a ring of the plan's degree."""

    def __init__(self, plan: SecurePlan) -> None:
        self.plan = plan
        self.sessions = [DeviceSession(i, plan.devices) for i in range(plan.devices)]
        self.publics = [s.public_keys(len(plan.releases)) for s in self.sessions]
        self.graph = ring_neighbours(list(range(plan.devices)), plan.neighbours)
        sent = {}
        for s in self.sessions:
            them = self.graph[s.index]
            for holder, ciphertext in zip(them, s.share_keys(plan, them, [self.publics[v][0] for v in them], [self.publics[v][1] for v in them])):
                sent[(s.index, holder)] = ciphertext
        for s in self.sessions:
            s.hold([sent[(v, s.index)] for v in s.neighbours])

    def mask_public(self, device: int, release: str) -> bytes:
        which = [r.name for r in self.plan.releases].index(release)
        return self.publics[device][0][32 * which : 32 * (which + 1)]

    def inputs(self, release: str, statistics: list[np.ndarray], add_noise: bool = True) -> list[np.ndarray]:
        everyone = list(range(self.plan.devices))
        return [s.masked_input(self.plan, self.plan.release(release), everyone, x, add_noise=add_noise)[0] for s, x in zip(self.sessions, statistics)]

    def seeds(self, release: str) -> dict[int, bytes]:
        """Every device's self-mask seed, rebuilt from the shares its neighbours reveal."""
        everyone = list(range(self.plan.devices))
        shares: dict[int, list[bytes]] = {u: [] for u in everyone}
        for s in self.sessions:
            for owner, piece in s.unmask(self.plan, release, everyone, [])[0].items():
                shares[owner].append(piece)
        return {u: masks.rebuild(pieces, self.plan.threshold) for u, pieces in shares.items()}

    def unmasked(self, release: str, vectors: list[np.ndarray]) -> np.ndarray:
        total = np.zeros_like(vectors[0])
        for v in vectors:
            total += v
        everyone = list(range(self.plan.devices))
        publics = {u: self.mask_public(u, release) for u in everyone}
        return from_field(unmasked_sum(total, release, everyone, self.seeds(release), {}, publics, self.graph))


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


@pytest.fixture
def protocol() -> Protocol:
    return Protocol(_plan(16))  # 12 devices, a release needs 10, threshold 5 of 8 neighbours


def test_a_device_masks_and_unmasks_for_the_minimum_and_refuses_one_fewer(protocol):
    plan = protocol.plan
    assert plan.min_survivors == 10
    at_minimum, below = list(range(10)), list(range(9))
    with pytest.raises(ProtocolRefusal, match="refusing to mask an input for 9 devices: the minimum is 10 of 12"):
        protocol.sessions[0].masked_input(plan, plan.release("a"), below, np.zeros(16))
    protocol.sessions[0].masked_input(plan, plan.release("a"), at_minimum, np.zeros(16))
    with pytest.raises(ProtocolRefusal, match="refusing to unmask for 9 devices: the minimum is 10 of 12"):
        protocol.sessions[1].unmask(plan, "a", below, [10, 11])
    seeds, keys = protocol.sessions[1].unmask(plan, "a", at_minimum, [10, 11])
    assert set(seeds) == set(protocol.graph[1]) & set(at_minimum) and set(keys) == set(protocol.graph[1]) & {10, 11}


def test_a_device_reveals_no_key_share_after_the_seed_share_of_the_same_neighbour(protocol):
    session, plan = protocol.sessions[0], protocol.plan
    v = protocol.graph[0][0]
    everyone = list(range(N))
    seeds, _ = session.unmask(plan, "a", everyone, [])
    assert v in seeds and f"a:{v}" in session.revealed_seeds
    session.unmasked.remove("a")  # past the one-unmasking-per-release refusal: the guard behind it
    with pytest.raises(ProtocolRefusal, match=f"device {v}'s self-mask seed was revealed: refusing to reveal its mask key too"):
        session.unmask(plan, "a", [u for u in everyone if u != v], [v])


def test_a_device_reveals_no_seed_share_after_the_key_share_of_the_same_neighbour(protocol):
    session, plan = protocol.sessions[0], protocol.plan
    v = protocol.graph[0][0]
    everyone = list(range(N))
    _, keys = session.unmask(plan, "a", [u for u in everyone if u != v], [v])
    assert v in keys and f"a:{v}" in session.revealed_keys
    session.unmasked.remove("a")
    with pytest.raises(ProtocolRefusal, match=f"device {v}'s mask key was revealed: refusing to reveal its self-mask seed too"):
        session.unmask(plan, "a", everyone, [])


def test_a_device_named_both_as_survivor_and_as_dropped_is_refused(protocol):
    v = protocol.graph[0][0]
    with pytest.raises(ProtocolRefusal, match=rf"devices \[{v}\] are named as survivors and as dropped"):
        protocol.sessions[0].unmask(protocol.plan, "a", list(range(N)), [v])
    assert protocol.sessions[0].revealed_seeds == protocol.sessions[0].revealed_keys == []


def test_a_neighbour_list_of_the_wrong_size_or_naming_the_device_is_refused():
    plan = _plan(16)
    assert (plan.threshold, plan.neighbours) == (5, 8)
    for listed in ([1, 2, 3, 4], list(range(1, 10)), [0, 1, 2, 3, 4, 5, 6, 7], [1, 1, 2, 3, 4, 5, 6, 7]):
        session = DeviceSession(0, N)
        session.public_keys(1)
        keys = [b"k" * 32] * len(listed)
        with pytest.raises(ProtocolRefusal, match=f"neighbour list of {len(listed)}: the plan wants 5 to 8 distinct devices, not this one"):
            session.share_keys(plan, listed, keys, keys)
    session = DeviceSession(0, N)
    session.public_keys(1)
    other = DeviceSession(1, N).public_keys(1)
    session.share_keys(plan, [1, 2, 3, 4, 5], [other[0]] * 5, [other[1]] * 5)  # the threshold: accepted


def test_shares_forwarded_for_the_wrong_devices_are_refused(protocol):
    session = protocol.sessions[0]
    with pytest.raises(ProtocolRefusal, match="7 forwarded shares for 8 neighbours"):
        session.hold(session.held[:7])
    session.hold(session.held[1:] + session.held[:1])  # each neighbour's share filed under another
    v = session.neighbours[0]
    with pytest.raises(ProtocolRefusal, match=f"the share forwarded as device {v}'s was not encrypted by device {v} for this device"):
        session.unmask(protocol.plan, "a", list(range(N)), [])
    assert session.revealed_seeds == [] and session.unmasked == []


def test_a_dropped_device_that_never_shared_its_keys_is_refused(protocol):
    session = protocol.sessions[0]
    v = session.neighbours[0]
    session.held[0] = b""  # v's shares never reached this device
    with pytest.raises(ProtocolRefusal, match="a dropped device named that never shared its keys with this device"):
        session.unmask(protocol.plan, "a", [u for u in range(N) if u != v], [v])
    session.unmask(protocol.plan, "a", list(range(N)), [])  # as a survivor it is simply skipped


def test_an_unknown_release_is_refused(protocol):
    with pytest.raises(ProtocolRefusal, match="unknown release 'b'"):
        protocol.sessions[0].unmask(protocol.plan, "b", list(range(N)), [])
    with pytest.raises(ProtocolRefusal, match="no self-mask seed for release 'b': the key stages did not run"):
        protocol.sessions[0].masked_input(protocol.plan, protocol.plan.release("a").__class__("b", 16, 1.0, 1.0, 0.0, 0.0), list(range(N)), np.zeros(16))
