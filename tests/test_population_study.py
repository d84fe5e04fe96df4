"""The population study (issue 27): its statistics equal the devices', its tower's update is the
gradient of the device's loss, its noise spends exactly the budget, and the command writes
the table, the crossover and the plot from real generated populations."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from shared.content_adapter import ContentAdapter, TowerSettings, content_projection
from shared.cooccurrence import cooccurrence_contribution, triangle_size
from shared.item_model import CooccurrenceModel
from shared.privacy.accounting import gaussian_epsilon, releases_and_rounds_epsilon, split_budget
from simulations.studies.population import SHARES, cooccurrence_sum, crossover, tower_noise_multiplier


def test_the_study_sums_exactly_the_co_occurrence_every_device_sends():
    rng = np.random.default_rng(0)
    histories = [np.unique(rng.integers(0, 30, size=rng.integers(1, 9))) for _ in range(25)] + [np.array([29])]
    top = np.array([0, 2, 3, 5, 7, 11, 13, 17, 19, 23])  # item 29 is outside: that device sends zeros
    expected = sum((cooccurrence_contribution(h, top) for h in histories), np.zeros(triangle_size(len(top))))
    np.testing.assert_allclose(cooccurrence_sum(histories, top, 30), expected, rtol=0, atol=1e-12)


def _leave_one_out_loss(adapter: ContentAdapter, history: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    """The device's loss written out directly: mean over targets of minus the log softmax of
    the target among the items outside the rest of the history."""
    embeddings = adapter.projection @ adapter.weights
    losses = []
    for target in targets:
        rest = history[history != target]
        logits = temperature * (adapter.statistics.scores(rest) + adapter.weight * embeddings @ embeddings[rest].mean(0))
        logits[rest] = -np.inf
        new_films = np.flatnonzero(adapter.statistics.from_content)
        logits[new_films[new_films != target]] = -np.inf  # new films are not negatives
        shifted = logits - logits.max()
        losses.append(-(shifted[target] - math.log(np.exp(shifted).sum())))
    return float(np.mean(losses))


def test_a_devices_tower_update_is_minus_the_gradient_of_its_leave_one_out_loss():
    rng = np.random.default_rng(1)
    items, rank = 12, 3
    statistics = CooccurrenceModel(
        top_items=np.arange(8), factors=rng.normal(size=(items, rank)), popularity=rng.random(items), popularity_weight=0.3,
        from_content=np.arange(items) >= 10,  # two new films, placed from their content
    )
    content = np.hstack([rng.normal(size=(items, 20)), np.ones((items, 3))])
    adapter = ContentAdapter(statistics, content_projection(content, 4), np.eye(4) + 0.1 * rng.normal(size=(4, 4)), weight=0.7)
    history, targets = np.array([1, 4, 6, 9]), np.array([4, 9])
    update = adapter.update(history, targets, temperature=3.0)
    numeric = np.zeros_like(adapter.weights)
    for index in np.ndindex(*adapter.weights.shape):
        step = np.zeros_like(adapter.weights)
        step[index] = 1e-6
        numeric[index] = (
            _leave_one_out_loss(adapter.with_weights(adapter.weights + step), history, targets, 3.0)
            - _leave_one_out_loss(adapter.with_weights(adapter.weights - step), history, targets, 3.0)
        ) / 2e-6
    np.testing.assert_allclose(update, -numeric, rtol=1e-5, atol=1e-8)
    assert not np.any(adapter.update(np.array([5]), np.array([5]), 3.0))  # nothing left to rank it from
    everything_negative = ContentAdapter(
        CooccurrenceModel(statistics.top_items, statistics.factors, statistics.popularity, 0.3), adapter.projection,
        adapter.weights, adapter.weight,
    )
    assert not np.allclose(everything_negative.update(history, targets, 3.0), update)  # the new films' exclusion matters


def test_the_tower_noise_spends_what_the_half_budget_releases_leave_and_no_more():
    full = split_budget(8.0, 1e-5, list(SHARES))
    half = [std * math.sqrt(2.0) for std in full]
    assert gaussian_epsilon(full, 1e-5) == pytest.approx(8.0, abs=1e-9)
    assert gaussian_epsilon(half, 1e-5) == pytest.approx(5.2976, abs=1e-4)
    # PLD composition of the releases alone agrees with the exact Gaussian-DP figure.
    assert releases_and_rounds_epsilon(full, 1.0, 0.1, 0, 1e-5) == pytest.approx(8.0, abs=1e-3)
    for rate, rounds in ((0.05, 20), (0.001, 5)):  # a multiplier above the first guess, and one below it
        z = tower_noise_multiplier(half, rate, rounds, 8.0, 1e-5)
        assert releases_and_rounds_epsilon(half, z, rate, rounds, 1e-5) <= 8.0
        assert releases_and_rounds_epsilon(half, z / 1.01, rate, rounds, 1e-5) > 8.0
    with pytest.raises(ValueError, match="the releases alone spend it"):
        tower_noise_multiplier(split_budget(8.0, 1e-5, [0.5, 0.5]), 0.05, 20, 8.0, 1e-5)


def test_the_crossover_is_where_the_tower_leads_at_95_percent_from_then_on():
    assert crossover({1000: (-0.01, 0.02), 5000: (0.03, 0.01), 20000: (0.05, 0.01)}) == 5000
    assert crossover({1000: (0.02, 0.01), 5000: (0.001, 0.01), 20000: (0.05, 0.01)}) == 20000  # a lead that does not last
    assert crossover({1000: (0.02, 0.01), 5000: (0.03, 0.01), 20000: (-0.01, 0.005)}) is None


def test_population_study_command_writes_every_row_the_crossover_and_the_plot(tmp_path, feature_cache, capsys):
    from simulations.cli import main

    out = tmp_path / "population"
    code = main([
        "population-study", "--out", str(out), "--populations", "40,80", "--seeds", "0", "--rounds", "2",
        "--devices-per-round", "20", "--evaluated-users", "30", "--feature-cache", str(feature_cache),
        "--server-lr", "0.5", "--tower-weight", "2", "--epsilon", "8", "--evaluate-on", "validation",
        "--data-root", str(tmp_path / "generated"), "--cohort", "60",
    ])
    assert code == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["population"], r["method"]) for r in rows] == [
        (p, m) for p in ("40", "80") for m in (
            "statistics", "statistics, half budget", "statistics + public content term", "statistics + tower (DP-FedAvg)",
            "tower without noise (NOT PRIVATE)", "statistics, secure sums (no party trusted)",
        )
    ]
    assert [float(r["user-level-epsilon"]) for r in rows[:3]] == pytest.approx([8.0, 5.2976, 8.0], abs=1e-4)
    assert 7.9 < float(rows[3]["user-level-epsilon"]) <= 8.0 and rows[4]["user-level-epsilon"] == "inf"
    secure = [r for r in rows if r["method"] == "statistics, secure sums (no party trusted)"]
    assert [r["secure-groups"] for r in secure] == ["1", "2"]  # 80 devices in cohorts of at most 60: two secure sums, summed
    # the plans hold the budget at their minimum of survivors; every device counted, the claim is below it
    assert all(6.0 < float(r["user-level-epsilon"]) < 8.0 for r in secure)
    assert [float(r["sample-rate"]) for r in rows if r["method"] == "statistics + tower (DP-FedAvg)"] == [0.5, 0.25]
    assert {r["evaluated-users"] for r in rows} == {"30"}
    assert rows[3]["tower-weights"] == str(TowerSettings.components**2)
    assert sorted(p.name for p in (tmp_path / "generated").iterdir()) == ["users-40", "users-80"]
    summary = (out / "results.md").read_text()
    assert summary.startswith("# Population study: user-level epsilon 8 at delta 1e-05 (validation items)")
    assert "server lr 0.5, temperature 10, weight 2" in summary and "2 rounds, 20 devices per round" in summary
    assert summary.count("\n- ") == 8 and summary.count("Crossover over ") == 2
    assert "secure sums of at most 60 devices" in summary
    assert (out / "population.png").stat().st_size > 10_000
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="populations of at least 10 devices"):
        main(["population-study", "--out", str(out), "--populations", "5"])
