"""Devices that lie about their input (issue 41): the median of group sums bounds them by the
honest groups, the plain sum does not, and the promotion study's attacker puts in the most the
server's plausibility check lets through."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from shared.config import resolve
from shared.releases import secure_plan
from shared.secure_sum.groups import check_groups, group_colluders, split_into_groups, trimmed_total, trimmed_total_std
from simulations.studies.promotion import _window_headroom, group_plans, plausible_most


def test_the_median_of_group_sums_stays_within_the_honest_groups_whatever_one_group_holds():
    honest = np.array([[3.0, -1.0, 10.0, 0.0], [5.0, 2.0, 12.0, 0.0]])
    for lie in (np.full(4, 1e12), np.full(4, -1e12), np.array([1e12, -1e12, 0.0, 7.0])):
        total = trimmed_total(np.vstack([honest, lie]), trim=1)
        assert np.all(total >= 3 * honest.min(axis=0)) and np.all(total <= 3 * honest.max(axis=0))
    np.testing.assert_array_equal(trimmed_total(np.vstack([honest, np.full(4, 1e12)]), 1), 3 * honest.max(axis=0))
    np.testing.assert_array_equal(trimmed_total(np.vstack([honest, np.full(4, 1e12)]), 0), honest.sum(axis=0) + 1e12)
    five = np.array([[1.0], [2.0], [3.0], [4.0], [100.0]])
    assert trimmed_total(five, 1)[0] == 5 * 3.0 and trimmed_total(five, 2)[0] == 5 * 3.0 and trimmed_total(five, 0)[0] == 110.0


def test_the_combined_noise_std_is_the_order_statistics():
    assert trimmed_total_std(1, 0) == 1.0 and trimmed_total_std(4, 0) == 2.0
    # The median of 3 standard normals has variance 1 - sqrt(3) / pi (0.4487).
    assert trimmed_total_std(3, 1) == pytest.approx(3 * math.sqrt(1 - math.sqrt(3) / math.pi), rel=0.005)
    with pytest.raises(ValueError, match="below half of secure-groups"):
        check_groups(3, 2)
    with pytest.raises(ValueError, match="at least 1"):
        check_groups(0, 0)


def test_groups_are_consecutive_arcs_of_the_order_that_cover_it_once():
    order = [7, 3, 9, 1, 0, 4, 8, 2, 6, 5]
    groups = split_into_groups(order, 3)
    assert groups == [[7, 3, 9, 1], [0, 4, 8], [2, 6, 5]]
    with pytest.raises(ValueError, match="a group would be empty"):
        split_into_groups(order, 11)


def _more_than(devices: int, colluders: int, size: int, c: int) -> float:
    """P(a group of ``size`` drawn from ``devices`` holds more than ``c`` of the ``colluders``)."""
    return sum(math.comb(colluders, j) * math.comb(devices - colluders, size - j) for j in range(c + 1, min(colluders, size) + 1)) / math.comb(devices, size)


def test_a_group_tolerates_the_fewest_colluders_it_holds_more_of_only_within_its_failure_budget():
    assert group_colluders(943, 48, 943, 1, 1e-6) == 48  # one group holds them all
    for devices, colluders, size, groups, expected in ((943, 48, 315, 3, 32), (943, 48, 50, 19, 13), (20000, 1000, 50, 400, 15)):
        c = group_colluders(devices, colluders, size, groups, 1e-6)
        assert c == expected
        assert groups * _more_than(devices, colluders, size, c) <= 1e-6 < groups * _more_than(devices, colluders, size, c - 1)


def test_each_group_plan_tolerates_its_colluders_and_spends_the_budget_alone():
    config = resolve(None, {"user-epsilon": 8.0})
    dimensions = [1682, 180300, 15]
    assert group_plans(config, [943], dimensions) == [secure_plan(config, 943, dimensions)]  # one group: today's plan
    plans = group_plans(config, [315, 314, 314], dimensions)
    assert [(p.devices, p.colluders, p.min_survivors) for p in plans] == [(315, 32, 284), (314, 32, 283), (314, 32, 283)]
    small = group_plans(resolve(None, {"user-epsilon": 8.0, "secure-colluders": 0.1, "secure-dropout": 0.05}), [100] * 3, dimensions)[0]
    assert (small.colluders, small.neighbours) == (23, 42)  # 32 neighbours would leak a device's secrets to 23 colluders too often
    for plan in plans + [small]:
        assert plan.epsilon([plan.honest_minimum * r.share_variance for r in plan.releases]) == pytest.approx(8.0, abs=1e-3)


def test_the_attacker_puts_in_the_most_the_plausibility_window_lets_through():
    honest = np.array([3.0, 4.0, 0.0])
    amount = _window_headroom(honest, 13.0, 2)
    assert np.linalg.norm(honest + amount * np.eye(3)[2]) <= 13.0
    assert np.linalg.norm(honest + (amount + 1) * np.eye(3)[2]) > 13.0
    assert amount == 12.0 and _window_headroom(honest, 4.0, 2) == 0.0
    # the sum is read back as a signed 32-bit integer: the push stops at 2^31 - 1, where it would wrap
    assert _window_headroom(np.array([2.0**31 - 10, 0.0]), 2.0**33, 0) == 9.0


def test_the_studys_strongest_push_is_the_most_the_real_servers_check_lets_through():
    from shared.secure_sum.server import SecureAggregation, SecureAggregationAborted

    config = resolve(None, {"user-epsilon": 8.0})
    secure = SecureAggregation(None, list(range(100)), config, [50, 1275, 15], log=lambda *_: None)
    release = secure.plan.releases[0]
    honest = np.random.default_rng(0).normal(0.0, math.sqrt(100 * release.share_variance), 50).round()
    pushed = honest.copy()
    pushed[7] += _window_headroom(honest, plausible_most(secure.plan, 0, 100), 7)
    secure._check_plausible(release.name, pushed.astype(np.int64), 100)  # let through: nothing raised
    pushed[7] += 1
    with pytest.raises(SecureAggregationAborted, match="popularity unmasking: the unmasked sum's norm"):
        secure._check_plausible(release.name, pushed.astype(np.int64), 100)


def test_promotion_study_command_one_liar_tops_the_plain_sum_and_not_the_median(small_dataset, feature_cache, tmp_path, capsys):
    from simulations.cli import main

    out = tmp_path / "promotion"
    code = main([
        "promotion-study", "--out", str(out), "--data", str(small_dataset), "--groups", "1,3", "--attackers", "0,1",
        "--seeds", "0", "--epsilon", "inf", "--feature-cache", str(feature_cache),
    ])
    assert code == 0 and "wrote" in capsys.readouterr().out
    rows = {(r["groups"], r["attackers"]): r for r in csv.DictReader((out / "results.csv").open())}
    assert sorted(rows) == [("1", "0"), ("1", "1"), ("3", "0"), ("3", "1")]
    assert {r["film-training-users"] for r in rows.values()} == {"0"}  # a film nobody watched
    assert {r["aborted"] for r in rows.values()} == {"0"}  # every attack passed the server's plausibility check
    liar_alone = rows[("1", "1")]
    assert liar_alone["film-popularity-rank"] == "1" and float(liar_alone["lists-with-film"]) == 1.0
    assert liar_alone["selected-candidate"] == "popularity 1, content 0"
    bounded = rows[("3", "1")]  # no noise (epsilon inf): the honest groups' sums for the film are 0 exactly
    assert int(bounded["film-popularity-rank"]) > 10 and float(bounded["lists-with-film"]) == 0.0
    assert "| 3 | 1 | 1 | 0.000 ± 0.000 |" in (out / "results.md").read_text()
    with pytest.raises(SystemExit, match="odd numbers"):
        main(["promotion-study", "--out", str(out), "--groups", "2"])
    with pytest.raises(SystemExit, match="its rows were made with .*use another --out"):  # rows of other settings never mix
        main(["promotion-study", "--out", str(out), "--data", str(small_dataset), "--epsilon", "4", "--feature-cache", str(feature_cache)])
