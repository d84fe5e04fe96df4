"""User-level DP-FedAvg at the server: the ledger records the mechanism, the audit recomputes it,
and the canary audit has teeth: with the server's noise switched off (while the ledger still
claims it) the empirical lower bound exceeds the claimed epsilon and the audit fails."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import server.mechanisms.dp_fedavg.noise
from server.audit import audit, run_audit
from server.mechanisms.dp_fedavg.noise import CentralDP, aggregate, flatten, poisson_sample
from shared.run_directory import RunDirectory, read_ledger
from simulations.engines.simulate import read_summary, simulate

NOISE, CLIP, ROUNDS = 5.0, 0.05, 3


def _simulate(settings):
    """Central DP's server-side checks read what the server computed: the in-process engine
    (the real server and ClientApp code in this process) serves them. Flower's own engine
    carries the local-DP and default-mode runs of the other tests."""
    return simulate(settings, engine="in-process")


def _central(small_dataset, feature_cache, run_dir, run_id: str, **extra) -> dict:
    return {
        "data-dir": str(small_dataset),
        "feature-cache": str(feature_cache),
        "run-dir": str(run_dir),
        "run-id": run_id,
        "privacy": "central",
        "num-server-rounds": ROUNDS,
        "fraction-train": 1.0,  # q = 1: no amplification by sampling, the claim is small
        "server-noise-multiplier": NOISE,
        "server-clip-norm": CLIP,
        "local-epochs": 1,
        **extra,
    }


@pytest.fixture(scope="module")
def canary_run(small_dataset, feature_cache, tmp_path_factory):
    runs = tmp_path_factory.mktemp("central")
    return _simulate(_central(small_dataset, feature_cache, runs, "canaries", canaries=500))


def test_central_dp_run_is_recorded_and_passes_the_audit(canary_run):
    entries = read_ledger(canary_run)
    header = entries[0].body
    assert header["server-dp"] and header["privacy-mode"] == "central" and header["canaries"] == 500
    rounds = [e.body for e in entries if e.kind == "server-round"]
    assert len(rounds) == ROUNDS
    for number, body in enumerate(rounds, start=1):
        assert body["server-noise-std"] == pytest.approx(NOISE * CLIP)
        assert body["denominator"] == pytest.approx(12.0) and body["client-sample-rate"] == 1.0
        assert body["user-level-history"] == [[NOISE, 1.0, number]]
        assert body["replies-received"] == 12 and body["canaries-in-round"] > 0
    epsilons = [body["user-level-epsilon"] for body in rounds]
    assert epsilons == sorted(epsilons) and 0 < epsilons[-1] < 3
    assert read_summary(canary_run)["privacy"]["user-level-epsilon"] == pytest.approx(epsilons[-1])

    report = audit(canary_run)
    assert report.passed, report.failures
    assert {"server-accounting", "empirical-lower-bound"} <= set(report.failures)
    assert "vs claimed" in report.figures["empirical lower bound"]
    assert len(report.canary_scores["included"]) + len(report.canary_scores["excluded"]) == 500
    assert run_audit(canary_run) == 0
    page = (canary_run / "audit.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # server epsilon, canary histograms


def test_a_canary_file_changed_after_the_run_fails_the_audit(canary_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(canary_run, run_dir)
    payload = json.loads(RunDirectory.open(run_dir).canaries_path.read_text())
    payload["included"][0] = 1 - payload["included"][0]
    RunDirectory.open(run_dir).canaries_path.write_text(json.dumps(payload, sort_keys=True))
    report = audit(run_dir)
    assert "does not match the ledger header's commitment" in report.failures["empirical-lower-bound"][0]


def test_a_server_round_claiming_less_than_its_mechanism_fails_server_accounting(canary_run, rewritten_ledger):
    """Round 2 claims half its user-level epsilon and round 3 records a tenth of the noise std:
    each is named (the hash chain is valid, the noise-conformance bound aside)."""
    def edited(kind, round_, body):
        if kind == "server-round" and round_ == 2:
            body["user-level-epsilon"] /= 2
        if kind == "server-round" and round_ == 3:
            body["server-noise-std"] /= 10
        return body

    problems = audit(rewritten_ledger(canary_run, edited)).failures["server-accounting"]
    assert len(problems) == 2
    assert problems[0].startswith("server round 2: claims user-level epsilon ") and "< recomputed" in problems[0]
    assert problems[1].startswith(f"server round 3: noise std {NOISE * CLIP / 10:g} / denominator 12.0 are not z*C = {NOISE * CLIP}")


def test_a_server_that_inflates_the_updates_it_aggregated_fails_noise_conformance(canary_run, rewritten_ledger):
    """More updates claimed than the ledger's devices and canaries widen every bound the
    noise check draws (the clipped signal they allow): the count itself is checked."""
    def inflated(kind, round_, body):
        if kind == "server-round" and round_ == 1:
            body["updates-aggregated"] = 1000
        return body

    problems = audit(rewritten_ledger(canary_run, inflated)).failures["noise-conformance"]
    assert len(problems) == 1 and problems[0].startswith("server round 1: 1000 updates aggregated, but the ledger counts 12 devices and ")


def test_noise_switched_off_while_claimed_is_caught_by_the_canaries(small_dataset, feature_cache, tmp_path, monkeypatch):
    monkeypatch.setattr(server.mechanisms.dp_fedavg.noise, "gaussian_noise", lambda rng, size, std: np.zeros(size))
    run_dir = _simulate(_central(small_dataset, feature_cache, tmp_path, "no-noise", canaries=500))
    report = audit(run_dir)
    # Everything the ledger claims is internally consistent ...
    assert not report.failures["hash-chain"] and not report.failures["server-accounting"]
    # ... but the model gives the canaries away.
    problems = report.failures["empirical-lower-bound"]
    assert problems and "exceeds the claimed user-level epsilon" in problems[0]
    # ... and so do the released updates' norms, round by round, without any canary, and the
    # checkpoints: the final model is too close to the initial one.
    assert [p.split(":")[0] for p in report.failures["noise-conformance"]] == [
        "server round 1", "server round 2", "server round 3", f"final minus initial model ({ROUNDS} DP-FedAvg rounds)"
    ]
    assert run_audit(run_dir) == 1


def test_server_noise_cut_to_a_tenth_is_caught_from_the_released_norms(small_dataset, feature_cache, tmp_path, monkeypatch):
    real = server.mechanisms.dp_fedavg.noise.gaussian_noise
    monkeypatch.setattr(server.mechanisms.dp_fedavg.noise, "gaussian_noise", lambda rng, size, std: real(rng, size, std / 10))
    run_dir = _simulate(_central(small_dataset, feature_cache, tmp_path, "tenth", **{"server-noise-multiplier": 1.0}))
    problems = audit(run_dir).failures["noise-conformance"]
    assert len(problems) == ROUNDS + 1 and all("released update norm" in p for p in problems[:ROUNDS])
    assert problems[ROUNDS].startswith(f"final minus initial model ({ROUNDS} DP-FedAvg rounds): norm")


def test_server_noise_cut_with_full_size_norms_recorded_is_caught_from_the_checkpoints(
    small_dataset, feature_cache, tmp_path, monkeypatch
):
    """The server adds a tenth of the noise and records, for each round, the norm the full
    noise would have given: each round's measured norm passes; the final model's distance from
    the initial one, in the run's own checkpoints, does not."""
    import server.recorder

    real_noise, real_norm = server.mechanisms.dp_fedavg.noise.gaussian_noise, server.recorder.update_norm
    monkeypatch.setattr(server.mechanisms.dp_fedavg.noise, "gaussian_noise", lambda rng, size, std: real_noise(rng, size, std / 10))

    def full_size(before, after):  # the released update's norm as if the whole noise were in it
        d = server.recorder.dimension(after)
        return float(np.hypot(real_norm(before, after), 1.0 * CLIP * np.sqrt(d) / 12))

    monkeypatch.setattr(server.recorder, "update_norm", full_size)
    run_dir = _simulate(_central(small_dataset, feature_cache, tmp_path, "tenth-lied", **{"server-noise-multiplier": 1.0}))
    problems = audit(run_dir).failures["noise-conformance"]
    assert len(problems) == 1 and problems[0].startswith(f"final minus initial model ({ROUNDS} DP-FedAvg rounds): norm")
    assert run_audit(run_dir) == 1


def test_server_budget_stops_the_run_before_it_is_exceeded(small_dataset, feature_cache, tmp_path):
    mechanism = CentralDP(CLIP, NOISE, 1.0, 12)
    cap = (mechanism.epsilon(2, 1e-5) + mechanism.epsilon(3, 1e-5)) / 2
    run_dir = _simulate(
        _central(small_dataset, feature_cache, tmp_path, "capped", **{"num-server-rounds": 5, "server-epsilon-cap": cap})
    )
    entries = read_ledger(run_dir)
    assert [e.round for e in entries if e.kind == "server-round"] == [1, 2]
    stop = [e for e in entries if e.kind == "stop"]
    assert len(stop) == 1 and stop[0].round == 3 and stop[0].body["epsilon-if-run"] > cap
    summary = read_summary(run_dir)
    assert summary["rounds"] == 2 and summary["privacy"]["user-level-epsilon"] <= cap
    assert (run_dir / "checkpoints" / "final.pt").is_file()
    assert audit(run_dir).passed


def test_dp_fedavg_clips_weighs_equally_and_divides_by_the_expected_count():
    import torch
    from flwr.app import ArrayRecord

    zero = ArrayRecord({"w": torch.zeros(4)})
    big = ArrayRecord({"w": torch.tensor([3.0, 4.0, 0.0, 0.0])})  # norm 5: clipped to 1
    small = ArrayRecord({"w": torch.tensor([0.0, 0.0, 0.5, 0.0])})
    mechanism = CentralDP(clip_norm=1.0, noise_multiplier=0.0, sample_rate=0.5, population=4)
    released = aggregate(mechanism, zero, [big, small], [], np.random.default_rng(0))
    assert np.allclose(flatten(released.arrays), [0.6 / 2, 0.8 / 2, 0.5 / 2, 0.0])
    assert released.clipped == 1 and released.clients == 2
    sampled = [len(poisson_sample(list(range(1000)), 0.3, np.random.default_rng(s))) for s in range(20)]
    assert 250 < np.mean(sampled) < 350 and len(set(sampled)) > 1  # Poisson, not fixed-size


def test_a_canary_check_that_could_not_fail_says_inconclusive_not_pass(small_dataset, feature_cache, tmp_path):
    """100 canaries bound epsilon at about ln(100) even when every guess is right: far below
    the claim of z = 0.5 over 3 rounds, so the check is INCONCLUSIVE and names what would do."""
    from server.audit.report import to_markdown

    run_dir = _simulate(_central(small_dataset, feature_cache, tmp_path, "weak", canaries=100, **{"server-noise-multiplier": 0.5}))
    report = audit(run_dir)
    claimed = read_summary(run_dir)["privacy"]["user-level-epsilon"]
    assert claimed > 10
    assert "empirical-lower-bound" not in report.failures
    why = report.inconclusive["empirical-lower-bound"]
    assert why.startswith("INCONCLUSIVE: with 100 canaries the bound cannot exceed") and "canaries or more" in why
    table = to_markdown(report)
    assert "| empirical-lower-bound | INCONCLUSIVE" in table and "| empirical-lower-bound | pass |" not in table


def test_the_canaries_needed_are_where_the_all_correct_bound_first_exceeds_the_claim():
    # The INCONCLUSIVE message's "conclusive with N canaries or more": the doubling search asks
    # whether the claim is rejected (one p-value per guess count), which is whether the
    # searched-for bound exceeds it. Held against the bound itself, claim by claim.
    import numpy as np

    from server.mechanisms.dp_fedavg.audit import canaries_for_ceiling
    from shared.privacy.empirical import one_run_audit

    def by_the_bound(claimed: float) -> int:
        m = 100
        while True:
            included = np.arange(m) % 2 == 0
            if one_run_audit(included.astype(float), included, 1e-5).epsilon_lower_bound > claimed:
                return m
            m *= 2

    assert [canaries_for_ceiling(c, 1e-5) for c in (0.5, 4.0, 6.0)] == [by_the_bound(c) for c in (0.5, 4.0, 6.0)] == [100, 400, 3200]
    assert canaries_for_ceiling(12.3, 1e-5, limit=6_400) == "more than 6,400"
