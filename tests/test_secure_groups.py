"""``secure-groups``: the roster cut into groups by its own seed, each its own secure sum, the
release their median (or sum), through the real server, devices and audit.

The design's claim (:mod:`shared.secure_sum.groups`): while fewer than half the groups hold a
device that lies about its input, every value of the release stays within what the honest
groups' sums give; the server cannot choose the groups, because every device draws its own from
the roster and refuses a participant list outside it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.audit import audit
from shared.config import resolve
from shared.releases import group_plan, group_sizes, secure_plan
from shared.run_directory import read_ledger
from shared.secure_sum.groups import combine_trim, group_rosters
from simulations.engines.simulate import simulate

PUSH = 10.0  # units of the clip a lying device adds to one film's popularity: 10 devices' worth, within the plausibility window


@pytest.fixture(scope="module")
def thirty(tmp_path_factory) -> Path:
    from shared.data.synth import SynthConfig, generate

    return generate(tmp_path_factory.mktemp("synth30") / "thirty", SynthConfig(users=30, items=120, seed=3, mean_interactions=30))


def _run(data: Path, feature_cache, runs: Path, run_id: str, **extra) -> Path:
    return simulate(
        {"data-dir": str(data), "feature-cache": str(feature_cache), "run-dir": str(runs), "run-id": run_id,
         "privacy": "user", "user-noise": "distributed", "secure-dropout": 0.2, "secure-neighbours": 8, **extra},
        engine="in-process", faults="",
    )


def test_the_groups_are_the_rosters_own_arcs_and_one_group_is_todays_plan():
    keys = [f"{i:064x}" for i in range(10)]
    arcs = group_rosters(keys, "seed", 3)
    assert [len(a) for a in arcs] == [4, 3, 3] and frozenset().union(*arcs) == frozenset(keys)
    assert group_rosters(list(reversed(keys)), "seed", 3) == arcs  # the order the server lists them in does not matter
    assert group_rosters(keys, "another seed", 3) != arcs
    config = resolve(None, {"user-epsilon": 8.0})
    dimensions = [120, 7260, 15]
    assert group_plan(config, 943, 943, dimensions) == secure_plan(config, 943, dimensions)
    assert group_plan(config, 943, 943, dimensions).digest() == secure_plan(config, 943, dimensions).digest()
    grouped = resolve(None, {"user-epsilon": 8.0, "secure-groups": 3})
    plans = [group_plan(grouped, 943, size, dimensions) for size in group_sizes(943, 3)]
    assert [(p.devices, p.population, p.groups, p.colluders) for p in plans] == [(315, 943, 3, 32), (314, 943, 3, 32), (314, 943, 3, 32)]
    assert plans[1].digest() != secure_plan(config, 314, dimensions).digest()  # a device signs which plan it followed
    assert (combine_trim("median", 3), combine_trim("median", 4), combine_trim("sum", 5)) == (1, 1, 0)


@pytest.mark.parametrize("change, problem", [
    ({"secure-groups": 0}, "secure-groups must be at least 1, not 0"),
    ({"secure-groups": 3, "secure-combine": "mean"}, "secure-combine 'mean': choose one of median, sum"),
    ({"secure-groups": 2}, "secure-combine median over 2 groups is their mean, which one liar moves at will"),
])
def test_bad_group_settings_are_refused_naming_the_key(change, problem):
    from server.mechanisms import mechanism_for

    with pytest.raises(ValueError, match=problem):
        mechanism_for(resolve(None, {"privacy": "user", **change}))


def test_one_lying_device_moves_the_median_of_three_groups_no_further_than_the_honest_groups(thirty, feature_cache, tmp_path, monkeypatch):
    """Device 0 adds PUSH units of the clip to film 7's popularity (within what the server's
    plausibility check lets through at epsilon 50: the run is not aborted). Its group's sum carries the push;
    the release, three times the coordinate-wise median of the group sums, stays between three
    times the two honest groups' values, and the audit passes: the liar is bounded, not caught."""
    import shared.secure_sum.session as session

    real_round, real_masked_input = session.conditional_round, session.DeviceSession.masked_input
    lying = {"on": False}

    def conditional_round(values, scale, bound, rng):
        rounded = real_round(values, scale, bound, rng)
        if lying["on"]:
            rounded[7] += int(PUSH * scale)
        return rounded

    def masked_input(self, plan, release, *args, **kwargs):
        lying["on"] = self.index == 0 and release.name == "popularity"
        try:
            return real_masked_input(self, plan, release, *args, **kwargs)
        finally:
            lying["on"] = False

    monkeypatch.setattr(session, "conditional_round", conditional_round)
    monkeypatch.setattr(session.DeviceSession, "masked_input", masked_input)
    run = _run(thirty, feature_cache, tmp_path, "median", **{"secure-groups": 3, "user-epsilon": 50.0})
    evidence, released = np.load(run / "secure-sum.npz"), np.load(run / "releases.npz")
    body = next(e.body for e in read_ledger(run) if e.kind == "release" and e.body["release"] == "popularity")
    values = [float(evidence[f"popularity@group-{g}.unmasked"][7]) / float(b["scale"]) for g, b in enumerate(body["group-releases"])]
    liar = int(evidence["group-of"][0])
    honest = [v for g, v in enumerate(values) if g != liar]
    assert values[liar] - max(honest) > PUSH / 4  # the lie reached its group's sum (at epsilon 50 a group's noise std is about 0.8)
    assert 3 * min(honest) - 1e-9 <= float(released["popularity"][7]) <= 3 * max(honest) + 1e-9
    assert float(released["popularity"][7]) == pytest.approx(3 * float(np.median(values)), abs=1e-9)
    assert audit(run).passed


def test_cohorts_release_the_sum_of_the_group_sums(thirty, feature_cache, tmp_path):
    run = _run(thirty, feature_cache, tmp_path, "cohorts", **{"secure-groups": 2, "secure-combine": "sum"})
    evidence, released = np.load(run / "secure-sum.npz"), np.load(run / "releases.npz")
    bodies = next(e.body for e in read_ledger(run) if e.kind == "release" and e.body["release"] == "cooccurrence")["group-releases"]
    total = sum(evidence[f"cooccurrence@group-{g}.unmasked"] / float(b["scale"]) for g, b in enumerate(bodies))
    assert np.array_equal(released["cooccurrence"], total)
    assert sorted(len(b["contributors"]) for b in bodies) == [15, 15]
    report = audit(run)
    assert report.passed, report.failures
    assert report.figures["secure plan"].startswith("30 devices in 2 groups of 15, 15, each its own secure sum")


def test_devices_refuse_groups_the_server_chose(thirty, feature_cache, tmp_path, monkeypatch):
    """A server that cuts the roster its own way (here: with another seed) lists participants
    outside each device's group: every device refuses to share its keys, nothing is released."""
    import shared.secure_sum.grouped as grouped
    from shared.secure_sum.server import SecureAggregationAborted

    monkeypatch.setattr(grouped, "group_rosters", lambda keys, seed, count: group_rosters(keys, seed + " chosen", count))
    with pytest.raises(SecureAggregationAborted, match=r"aborted at share distribution in group 0: 0 devices, below the minimum 8 of 10"):
        _run(thirty, feature_cache, tmp_path, "chosen", **{"secure-groups": 3})
    assert [e.kind for e in read_ledger(tmp_path / "chosen")] == ["header"]


def test_a_studys_secure_noise_over_groups_is_the_median_of_its_arcs_sums():
    """The studies' secure arithmetic with ``secure-groups``: the devices in the order handed
    over are cut into arcs, each summed under its own group plan; without noise the release is
    three times the median of the arcs' sums (within each device's rounding); with noise its std
    is the groups' times the median's factor, and the epsilon the costliest group's."""
    from server.mechanisms import mechanism_for
    from shared.secure_sum.groups import trimmed_total_std
    from shared.secure_sum.plan import make_group_plan

    rng = np.random.default_rng(0)
    statistics = [v / np.linalg.norm(v) for v in rng.normal(size=(30, 40))]
    arcs = [np.sum(statistics[0:10], axis=0), np.sum(statistics[10:20], axis=0), np.sum(statistics[20:30], axis=0)]
    noiseless = mechanism_for(resolve(None, {"user-epsilon": "inf", "secure-groups": 3})).study_noise([1.0], [40], 30)
    released, std = noiseless.release(0, iter(statistics), 40, rng)
    bound = max(p.releases[0].bound / p.releases[0].scale for p in noiseless.plans)
    assert std == 0.0 and np.max(np.abs(released - 3 * np.median(arcs, axis=0))) <= 3 * 10 * bound
    noisy = mechanism_for(resolve(None, {"user-epsilon": 1.0, "secure-groups": 3})).study_noise([1.0], [40], 30)
    _, std = noisy.release(0, iter(statistics), 40, rng)
    assert [p.devices for p in noisy.plans] == [10, 10, 10]
    assert std == pytest.approx(noisy.plans[0].releases[0].noise_std_of_sum(10) * trimmed_total_std(3, 1))
    plan = make_group_plan(30, 10, 3, ["study-release-0"], [40], [1.0], 1.0, 1e-5, 32, 0.1, 0.05)
    assert noisy.epsilon(1) == pytest.approx(plan.epsilon([(10 - plan.uncounted) * plan.releases[0].share_variance]))
    with pytest.raises(ValueError, match="29 contributions to a study release planned for 30 devices"):
        noisy.release(0, iter(statistics[:29]), 40, rng)


@pytest.mark.parametrize("groups", [1, 3])
def test_the_streamed_study_release_is_the_same_release_in_distribution(groups):
    """``release_streamed`` (nonzeros rounded, each group's shares drawn as one Skellam sum) gives
    the exact release within the rounding without noise, and with noise the same std as the
    per-device path, measured over 40 coordinates x 30 draws."""
    from server.mechanisms import mechanism_for

    rng = np.random.default_rng(1)
    statistics = [np.where(rng.random(40) < 0.2, rng.random(40), 0.0) for _ in range(30)]
    statistics = [v / np.linalg.norm(v) if v.any() else v for v in statistics]
    exact = mechanism_for(resolve(None, {"user-epsilon": "inf", "secure-groups": groups})).study_noise([1.0], [40], 30)
    fast, _ = exact.release_streamed(0, iter(statistics), 40, rng)
    slow, _ = exact.release(0, iter(statistics), 40, rng)
    bound = max(p.releases[0].bound / p.releases[0].scale for p in exact.plans)
    assert np.max(np.abs(fast - slow)) <= 2 * 30 * bound
    noisy = mechanism_for(resolve(None, {"user-epsilon": 2.0, "secure-groups": groups})).study_noise([1.0], [40], 30)
    draws = {name: np.stack([getattr(noisy, name)(0, iter(statistics), 40, rng)[0] for _ in range(30)])
             for name in ("release", "release_streamed")}
    stds = {name: float(np.std(d - d.mean(axis=0))) for name, d in draws.items()}
    _, planned = noisy.release_streamed(0, iter(statistics), 40, rng)
    assert stds["release_streamed"] == pytest.approx(stds["release"], rel=0.15)
    if groups == 1:  # a plain sum: its std is the plan's (a median's spread is the factor's only approximately)
        assert stds["release_streamed"] == pytest.approx(planned, rel=0.1)


def test_a_group_that_fails_its_unmasking_after_another_aborts_and_records_what_was_unmasked(thirty, feature_cache, tmp_path, monkeypatch):
    """Every group collects its inputs and signatures before any is unmasked, so a group below
    its minimum aborts with nothing unmasked; but group 1's popularity sum failing the server's
    plausibility check (here: read 1000 times too loud) comes after group 0's unmasking. The
    release is aborted, nothing is released, and the ledger records group 0's sum as learned."""
    from shared.secure_sum.server import SecureAggregation, SecureAggregationAborted

    real = SecureAggregation._check_plausible

    def loud(self, name, integers, contributions):
        return real(self, name, integers * (1000 if self.group == 1 and name == "popularity" else 1), contributions)

    monkeypatch.setattr(SecureAggregation, "_check_plausible", loud)
    with pytest.raises(SecureAggregationAborted, match=r"aborted at popularity unmasking in group 1: the unmasked sum's norm .*; groups \[0\] had been unmasked$"):
        _run(thirty, feature_cache, tmp_path, "partial", **{"secure-groups": 3})
    entries = read_ledger(tmp_path / "partial")
    assert [e.kind for e in entries] == ["header", "release-aborted"]
    body = entries[1].body
    assert body["reason"].endswith("; groups [0] had been unmasked") and "out-of-range input" in body["reason"]
    assert [g["group"] for g in body["unmasked-groups"]] == [0] and body["unmasked-groups"][0]["contributions"] == 10
    assert body["user-level-epsilon"] == body["unmasked-groups"][0]["user-level-epsilon"] > 0
    assert not (tmp_path / "partial" / "releases.npz").exists()


def test_grouped_devices_that_add_no_noise_but_sign_the_full_share_fail_secure_noise(thirty, feature_cache, tmp_path, monkeypatch):
    """The audit's noise check runs on every group's sum: devices that sign the planned share
    and add none pass the signatures, and fail ``secure-noise`` in each group."""
    import shared.secure_sum.session as session

    monkeypatch.setattr(session, "skellam_noise", lambda rng, size, variance: np.zeros(size, dtype=np.int64))
    run = _run(thirty, feature_cache, tmp_path, "silent", **{"secure-groups": 3})
    report = audit(run)
    assert not report.passed and report.failures["secure-shares"] == []
    failed_groups = {line.split(":")[0].split(" group ")[1] for line in report.failures["secure-noise"] if "cooccurrence" in line}
    assert failed_groups == {"0", "1", "2"}
