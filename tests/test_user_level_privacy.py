"""privacy = user: two Gaussian releases of bounded device statistics, accounted exactly, and an
audit that fails when a release's noise, clipping or accounting is not what the ledger claims.

Each lie is made by patching the real mechanism in the server's code path (not a mocked
audit); the ledger keeps recording what the code measured."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import server.mechanisms.gaussian_releases.mechanism
import shared.releases.cooccurrence
import shared.releases.popularity
import shared.releases.selection
from server.audit import audit, run_audit
from server.audit.release_model import chi_square_interval
from shared.cooccurrence import CANDIDATES, cooccurrence_contribution, matrix_from_triangle, popularity_contribution, selection_contribution, triangle_size
from shared.item_content import content_similarity
from shared.item_model import CooccurrenceModel
from shared.privacy.accounting import (
    dp_accounting_gaussian_epsilon,
    gaussian_epsilon,
    split_budget,
)
from shared.run_directory import read_ledger, read_metrics
from simulations.engines.simulate import read_summary, simulate


def _user_run(small_dataset, feature_cache, runs, run_id: str, **extra):
    return simulate(
        {
            "data-dir": str(small_dataset),
            "feature-cache": str(feature_cache),
            "run-dir": str(runs),
            "run-id": run_id,
            "privacy": "user",
            "user-noise": "central",  # these tests are the central mechanism's (the secure sum's are tests/test_secure_sum.py)
            "user-epsilon": 3.0,
            **extra,
        },
        engine="in-process",  # what the server computes and records: the same code without Ray's processes
    )


@pytest.fixture(scope="module")
def honest_run(small_dataset, feature_cache, tmp_path_factory):
    return _user_run(small_dataset, feature_cache, tmp_path_factory.mktemp("user"), "honest")


@pytest.mark.parametrize("epsilon", [1.0, 3.0, 8.0])
def test_budget_split_composes_to_the_target_by_two_independent_accountants(epsilon):
    stds = split_budget(epsilon, 1e-5, [0.1, 0.9])
    # mu^2 shares: the popularity release gets a tenth of 1/std^2.
    assert (1 / stds[0] ** 2) / (1 / stds[0] ** 2 + 1 / stds[1] ** 2) == pytest.approx(0.1)
    assert gaussian_epsilon(stds, 1e-5) == pytest.approx(epsilon, abs=1e-6)
    assert dp_accounting_gaussian_epsilon(stds, 1e-5) == pytest.approx(epsilon, abs=1e-3)
    assert split_budget(math.inf, 1e-5, [0.1, 0.9]) == [0.0, 0.0]
    assert gaussian_epsilon([0.0, 1.0], 1e-5) == math.inf


def test_each_contribution_has_norm_one_and_the_triangle_is_the_users_cooccurrence():
    items = np.array([1, 4, 7, 9])
    assert np.linalg.norm(popularity_contribution(items, 12)) == pytest.approx(1.0)
    top = np.array([0, 1, 4, 5, 9])  # the user has 1, 4 and 9 of these
    vector = cooccurrence_contribution(items, top)
    assert vector.size == triangle_size(5) and np.linalg.norm(vector) == pytest.approx(1.0)
    x = np.array([0, 1, 1, 0, 1], dtype=float)
    np.testing.assert_allclose(matrix_from_triangle(vector, 5), np.outer(x, x) / 3)
    assert not cooccurrence_contribution(np.array([2, 3]), top).any()  # none of the M items


def test_a_device_ranks_with_its_own_history_and_the_released_model():
    model = CooccurrenceModel(
        top_items=np.array([0, 1, 2]),
        factors=np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.5, 0.5]]),
        popularity=np.array([1.0, 2.0, 3.0, 0.5]),
        popularity_weight=0.0,
    )
    np.testing.assert_allclose(model.user_vector(np.array([0, 3])), [1.0, 0.0])  # item 3 is not in M
    assert np.argmax(model.scores(np.array([0]))) == 0
    assert np.argmax(model.scores(np.array([2]))) == 2


def test_a_devices_selection_vote_has_norm_one_and_favours_the_weighting_that_ranks_its_item():
    # Items 0-3; the user's history is {0, 1}, its most recent interaction 1. Collaborative
    # factors say nothing useful (item 1 scores low), content says item 1 is like item 0.
    model = CooccurrenceModel(
        top_items=np.array([0, 1, 2, 3]),
        factors=np.array([[1.0], [0.0], [0.2], [0.2]]),
        popularity=np.array([1.0, 0.0, 1.0, 1.0]),
        popularity_weight=0.3,
    )
    content = np.array([[1.0, 0.0, 0.0, 0, 0, 1], [0.9, 0.1, 0, 0, 0, 1], [0.0, 1.0, 0, 0, 0, 1], [0.0, 0.0, 1.0, 0, 0, 1]])
    vote = selection_contribution(model, np.array([0, 1]), 1, content)
    assert np.linalg.norm(vote) == pytest.approx(1.0)
    # Without content item 1 ranks third (behind 2 and 3); with content weight 1 it ranks first.
    assert vote[CANDIDATES.index((0.1, 0.0))] == pytest.approx(vote.max() / 3)
    assert vote[CANDIDATES.index((0.1, 1.0))] == pytest.approx(vote.max())
    assert not selection_contribution(model, np.array([1]), 1, content).any()  # nothing left to rank from
    similarity = content_similarity(content, np.array([0]))
    assert np.argsort(-similarity).tolist()[:2] == [0, 1]


def test_validation_item_is_each_users_most_recent_training_interaction(small_dataset):
    from shared.data import load_dataset
    from shared.data.split import leave_last_out

    dataset = load_dataset(small_dataset)
    split = leave_last_out(dataset)
    for k, user in enumerate(split.users):
        rows = np.flatnonzero(dataset.inter_user == user)
        order = rows[np.lexsort((rows, dataset.inter_time[rows]))]
        assert split.validation_item[k] == dataset.inter_item[order[-2]]
        assert split.test_item[k] == dataset.inter_item[order[-1]]


def test_user_level_run_is_recorded_and_passes_the_audit(honest_run):
    summary = read_summary(honest_run)
    assert summary["privacy"]["mode"] == "user"
    assert summary["privacy"]["user-level-epsilon"] == pytest.approx(3.0, abs=1e-6)
    assert summary["final"]["clients-evaluated"] == 12
    releases = [e for e in read_ledger(honest_run) if e.kind == "release"]
    assert [(e.round, e.body["release"], e.body["contributions"]) for e in releases] == [
        (1, "popularity", 12), (2, "cooccurrence", 12), (3, "selection", 12)
    ]
    assert releases[2].body["dimension"] == len(CANDIDATES)
    chosen = [row for row in read_metrics(honest_run) if row.get("release") == "selection"][0]
    assert (chosen["popularity-weight"], chosen["content-weight"]) in CANDIDATES
    assert releases[0].body["dimension"] == 120 and releases[1].body["dimension"] == triangle_size(120)
    assert max(e.body["contribution-norm-max"] for e in releases) <= 1.0 + 1e-9
    report = audit(honest_run)
    assert report.passed, report.failures
    assert "INCONCLUSIVE" in str(report.figures["empirical lower bound"])
    assert run_audit(honest_run) == 0


def _audit_failure(run_dir, check: str) -> list[str]:
    report = audit(run_dir)
    assert run_audit(run_dir) == 1
    return report.failures[check]


def test_audit_fails_when_the_noise_is_cut(small_dataset, feature_cache, tmp_path, monkeypatch):
    real = server.mechanisms.gaussian_releases.mechanism.gaussian_noise
    monkeypatch.setattr(server.mechanisms.gaussian_releases.mechanism, "gaussian_noise", lambda rng, size, std: real(rng, size, 0.8 * std))
    run = _user_run(small_dataset, feature_cache, tmp_path, "noise-cut")
    problems = _audit_failure(run, "release-noise")
    assert any(p.startswith("release 2 (cooccurrence): noise norm") for p in problems)


def test_audit_fails_when_the_noise_is_off(small_dataset, feature_cache, tmp_path, monkeypatch):
    monkeypatch.setattr(server.mechanisms.gaussian_releases.mechanism, "gaussian_noise", lambda rng, size, std: np.zeros(size))
    run = _user_run(small_dataset, feature_cache, tmp_path, "noise-off")
    problems = _audit_failure(run, "release-noise")
    measured = [p.split(":")[0] for p in problems if "noise norm 0 is 0.000 x the expected" in p]
    assert measured == ["release 1 (popularity)", "release 2 (cooccurrence)", "release 3 (selection)"]
    # The released vectors show it too where the devices' sum is small beside the claimed
    # noise (12 devices): popularity and co-occurrence, not the 15-value vote.
    shown = [p.split(":")[0] for p in problems if "the claimed noise was not added" in p]
    assert shown == ["release 1 (popularity)", "release 2 (cooccurrence)"] and len(problems) == 5


def test_audit_fails_when_the_server_adds_half_the_noise_and_records_a_full_draw(
    small_dataset, feature_cache, tmp_path, monkeypatch
):
    """The server's measurements are its word: this one adds half the noise and records the
    norm of a full-size draw, so the chi-square check of the measured norm passes; the
    released vectors, kept in releases.npz, cannot have so little norm."""
    real = server.mechanisms.gaussian_releases.mechanism.gaussian_release

    def half_noise(contributions, dimension, std, rng):
        released, measured = real(contributions, dimension, std / 2, rng)
        return released, {**measured, "noise-norm": 2 * measured["noise-norm"]}

    monkeypatch.setattr(server.mechanisms.gaussian_releases.mechanism, "gaussian_release", half_noise)
    monkeypatch.setattr(server.mechanisms.gaussian_releases.mechanism.secrets, "randbits", lambda bits: 7)  # one noise draw: one outcome
    run = _user_run(small_dataset, feature_cache, tmp_path, "half-noise")
    problems = _audit_failure(run, "release-noise")
    # Co-occurrence (7,260 values): half the noise is half the floor (65.8 against 126.4).
    # Popularity (120 values beside 12 devices' sum) is near its floor (21.6 against 22.7):
    # one fixed noise draw makes the outcome one.
    assert [p.split(":")[0] for p in problems] == ["release 1 (popularity)", "release 2 (cooccurrence)"]
    assert all("the claimed noise was not added" in p for p in problems)
    assert audit(run).failures["release-accounting"] == []


def test_audit_fails_when_clipping_does_not_bound(small_dataset, feature_cache, tmp_path, monkeypatch):
    monkeypatch.setattr(server.mechanisms.gaussian_releases.mechanism, "clip", lambda update, bound: (1.5 * update, float(np.linalg.norm(update))))
    run = _user_run(small_dataset, feature_cache, tmp_path, "no-clip")
    problems = _audit_failure(run, "release-clipping")
    assert any("a contribution of norm 1.5 entered the sum" in p for p in problems)


def test_audit_fails_when_the_noise_std_is_below_the_budget(small_dataset, feature_cache, tmp_path, monkeypatch):
    real = server.mechanisms.gaussian_releases.mechanism.noise_stds
    monkeypatch.setattr(server.mechanisms.gaussian_releases.mechanism, "noise_stds", lambda config: [0.5 * s for s in real(config)])
    run = _user_run(small_dataset, feature_cache, tmp_path, "low-std")
    problems = _audit_failure(run, "release-accounting")
    assert any("noise std" in p and "that user-epsilon 3 gives" in p for p in problems)
    assert any("above user-epsilon 3" in p for p in problems)


def test_audit_fails_when_the_claimed_epsilon_is_too_low(small_dataset, feature_cache, tmp_path, monkeypatch):
    real = server.mechanisms.gaussian_releases.mechanism.gaussian_epsilon
    monkeypatch.setattr(server.mechanisms.gaussian_releases.mechanism, "gaussian_epsilon", lambda stds, delta: 0.5 * real(stds, delta))
    run = _user_run(small_dataset, feature_cache, tmp_path, "low-claim")
    problems = _audit_failure(run, "release-accounting")
    assert any("claims user-level epsilon" in p and "< recomputed" in p for p in problems)


@pytest.mark.parametrize(
    "item_model,shift,problem",
    [
        ("factors", 1.0, "4 factors per item; the co-occurrence release gives 1"),  # more eigenvalues above the noise
        ("factors", 0.05, "the served factors differ from those of the recorded co-occurrence release"),  # same rank, other vectors
        ("ease", 1.0, "the served ease differ from those of the recorded co-occurrence release"),
    ],
)
def test_audit_fails_when_the_served_model_is_not_fitted_to_the_release(
    small_dataset, feature_cache, tmp_path, monkeypatch, item_model, shift, problem
):
    """A server that releases one co-occurrence and serves a model fitted to another matrix
    (here the release plus a symmetric perturbation, standing for statistics it kept back)."""
    real = shared.releases.cooccurrence.fit_model

    def fitted_elsewhere(popularity, popularity_std, top, matrix, std, *args, **kwargs):
        other = matrix + np.random.default_rng(0).normal(0.0, shift, matrix.shape)
        return real(popularity, popularity_std, top, (other + other.T) / 2, std, *args, **kwargs)

    monkeypatch.setattr(server.mechanisms.gaussian_releases.mechanism.secrets, "randbits", lambda bits: 7)  # the same noise every run: the same rank
    with monkeypatch.context() as lying:  # the server's post-processing only: the audit refits with the real one
        lying.setattr(shared.releases.cooccurrence, "fit_model", fitted_elsewhere)
        run = _user_run(small_dataset, feature_cache, tmp_path, f"elsewhere-{item_model}-{shift}", **{"item-model": item_model})
    problems = _audit_failure(run, "release-model")
    assert problems[0].startswith(f"{run / 'model.npz'}: {problem}")
    if shift == 1.0 and item_model == "factors":
        assert len(problems) == 1  # another rank: nothing further is compared
    else:  # the content-to-factor map was fitted to the other matrix too
        assert len(problems) == 2 and problems[1].startswith(f"{run / 'model.npz'}: the served content-to-factor map differs")


@pytest.mark.parametrize("lie", ["top items from the raw counts", "raw popularity served"])
def test_audit_fails_when_the_model_reads_the_raw_popularity(small_dataset, feature_cache, tmp_path, monkeypatch, lie):
    """The server keeps the noiseless popularity (the clipped sum before noise) and uses it:
    to choose the items the devices are asked about, or as the popularity it serves. The audit
    refits the model from releases.npz and catalog.npz and sees either."""
    import dataclasses

    real_release, real_top, real_fit = (
        server.mechanisms.gaussian_releases.mechanism.gaussian_release, shared.releases.popularity.top_items, shared.releases.cooccurrence.fit_model
    )
    raw: dict[str, np.ndarray] = {}

    def keeping_the_sum(contributions, dimension, std, rng):
        kept = [server.mechanisms.gaussian_releases.mechanism.clip(c, 1.0)[0] for c in contributions]
        raw.setdefault("popularity", np.sum(kept, axis=0))
        return real_release(iter(kept), dimension, std, rng)

    monkeypatch.setattr(server.mechanisms.gaussian_releases.mechanism, "gaussian_release", keeping_the_sum)
    lying = monkeypatch.context().__enter__()  # the server's post-processing only: undone before the audit
    if lie == "top items from the raw counts":
        lying.setattr(shared.releases.popularity, "top_items", lambda noisy, known, m: real_top(raw["popularity"], known, m))
        expected = "serves factors for other items than the 40 the popularity release ranked highest"
    else:
        def serving_raw(*args, **kwargs):
            model, rank = real_fit(*args, **kwargs)
            return dataclasses.replace(model, popularity=raw["popularity"]), rank

        lying.setattr(shared.releases.cooccurrence, "fit_model", serving_raw)
        expected = "the served popularity differs from the recorded popularity release shrunk toward the catalog's content"
    monkeypatch.setattr(server.mechanisms.gaussian_releases.mechanism.secrets, "randbits", lambda bits: 7)  # one noise draw: one outcome
    run = _user_run(small_dataset, feature_cache, tmp_path, "raw", **{"cooccurrence-items": 40})
    lying.undo()
    problems = _audit_failure(run, "release-model")
    assert len(problems) == 1 and problems[0].startswith(f"{run / 'model.npz'}: {expected}")


def test_audit_fails_when_the_catalog_is_not_the_one_the_release_recorded(honest_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(honest_run, run)
    with np.load(run / "catalog.npz") as data:
        catalog = {key: data[key] for key in data.files}
    catalog["content"][0, 0] += 1e-3
    np.savez(run / "catalog.npz", **catalog)
    problems = _audit_failure(run, "release-model")
    assert problems == [f"{run / 'catalog.npz'}: not the public catalog the first release recorded (catalog-sha256)"]


def test_a_device_counted_twice_or_a_release_file_not_the_ledgers_fails_release_clipping(honest_run, rewritten_ledger, tmp_path):
    def counted_twice(kind, round_, body):
        if kind == "release" and body["release"] == "cooccurrence":
            body["contributors"][1] = body["contributors"][0]
        return body

    problems = _audit_failure(rewritten_ledger(honest_run, counted_twice), "release-clipping")
    assert problems == ["release 2 (cooccurrence): 12 contributions from 11 distinct devices"]

    import shutil

    run = tmp_path / "changed-releases"
    shutil.copytree(honest_run, run)
    with np.load(run / "releases.npz") as data:
        stored = {key: data[key] for key in data.files}
    stored["selection"] = stored["selection"] + 1.0
    np.savez(run / "releases.npz", **stored)
    problems = _audit_failure(run, "release-clipping")
    assert problems == ["release 3 (selection): releases.npz does not hold the released vector the ledger recorded"]


def test_audit_fails_when_the_served_weights_are_not_the_selections(small_dataset, feature_cache, tmp_path, monkeypatch):
    # the server serves the candidate after the one the devices voted for: a rotation moves every
    # one of the 15 distinct candidates (reversing them kept the middle one, 1 run in 15 passed)
    real = shared.releases.selection.CANDIDATES
    with monkeypatch.context() as lying:  # the server's post-processing only: the audit refits with the real one
        lying.setattr(shared.releases.selection, "CANDIDATES", real[1:] + real[:1])
        run = _user_run(small_dataset, feature_cache, tmp_path, "other-weights")
    problems = _audit_failure(run, "release-model")
    assert len(problems) == 1 and "the selection gives" in problems[0]


def test_no_noise_pipeline_claims_no_privacy(small_dataset, feature_cache, tmp_path):
    run = _user_run(small_dataset, feature_cache, tmp_path, "no-noise", **{"user-epsilon": math.inf})
    assert read_summary(run)["privacy"]["user-level-epsilon"] == math.inf
    report = audit(run)
    assert report.passed and report.figures["user-level epsilon"].startswith("inf")


def test_chi_square_interval_brackets_the_noise_norm():
    low, high = chi_square_interval(10_000, 2.5e-7)
    draws = np.random.default_rng(0).normal(size=(200, 10_000))
    statistic = (draws**2).sum(1)
    assert low < statistic.min() and statistic.max() < high
    assert math.sqrt(low / 10_000) > 0.96  # a noise std cut by 4% over 10,000 values is caught


def test_export_of_a_user_level_run_is_its_released_model_and_the_public_content(honest_run, tmp_path):
    import shutil

    from server.export import export_run

    out = export_run(honest_run, tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "user-level" and sorted(manifest["files"]) == [
        "content.npy", "item_ids.json", "item_titles.json", "model.npz"]
    assert (out / "model.npz").read_bytes() == (honest_run / "model.npz").read_bytes()
    assert manifest["privacy"]["user-level-epsilon"] == pytest.approx(3.0, abs=1e-6)  # the run's user-epsilon
    broken = tmp_path / "broken"
    shutil.copytree(honest_run, broken)
    (broken / "model.npz").unlink()
    with pytest.raises(ValueError, match="model.npz: missing: the run did not finish its releases"):
        export_run(broken, tmp_path / "out2")


def test_without_selection_the_configured_weights_serve_and_the_sizes_follow_the_config(small_dataset, feature_cache, tmp_path):
    run = _user_run(
        small_dataset, feature_cache, tmp_path, "no-selection",
        **{"selection-budget-share": 0.0, "popularity-weight": 0.7, "cooccurrence-items": 30, "max-factors": 2},
    )
    releases = [e.body for e in read_ledger(run) if e.kind == "release"]
    assert [b["release"] for b in releases] == ["popularity", "cooccurrence"]
    assert releases[1]["dimension"] == triangle_size(30)
    with np.load(run / "model.npz") as model:
        assert model["popularity-weight"][0] == 0.7 and model["content-weight"][0] == 0.0
        assert len(model["top-items"]) == 30 and model["factors"].shape[1] <= 2
    assert read_summary(run)["privacy"]["user-level-epsilon"] == pytest.approx(3.0, abs=1e-6)
    assert audit(run).passed
