"""``fedmmrec bench`` runs its cheap parts on real inputs and reports every figure (the figures
themselves are read by people, never asserted: timings flake)."""

from __future__ import annotations

import json

import pytest

from simulations.bench.overheads import format_table, run_bench


def test_bench_dp_part_reports_both_engines_and_every_grad_sample_mode(tmp_path, capsys):
    results = run_bench(tmp_path / "bench.json", repeats=1, parts=("dp",))
    figures = results["dp-overhead"]
    assert figures["no-dp-s-per-step"] > 0 and figures["dp-fast-s-per-step"] > 0
    assert figures["dp-opacus-hooks-s-per-step"] > 0
    for mode in ("functorch", "ew"):  # a ratio, or the reason the mode failed
        name = f"dp-opacus-{mode}"
        assert f"ratio-{name}" in figures or figures[name].startswith("failed: ")
    assert json.loads((tmp_path / "bench.json").read_text()) == json.loads(json.dumps(results, default=float))
    assert "| dp-overhead: ratio-dp-fast |" in capsys.readouterr().out
    assert format_table({"x": {"y": 1.0}}) == "| measure | figure |\n| --- | --- |\n| x: y | 1 |"


def test_bench_online_part_times_a_new_interaction_to_the_next_top10_on_both_exports(
    tmp_path, monkeypatch, user_run, federated_run
):
    """The bench's own path (run_bench, parts=online) on the session's finished runs: the
    default mode's and an item tower's (the bench command runs 100-user ones itself)."""
    import simulations.bench.overheads as bench

    from client.online import OnlineUser

    original = bench.online_latency
    runs = {"user-level": user_run, "item-tower": federated_run}
    monkeypatch.setattr(bench, "online_latency", lambda work, cache: original(work, cache, events=5, runs=runs))
    # A clock that moves only inside the device's work: top(10) takes 2 ms, observe 3 ms. The
    # bench must time exactly observe + top(10) per event, and top(10) alone for the floor.
    clock = {"now": 0.0}
    observed: list[tuple[str, bool]] = []
    real_top, real_observe = OnlineUser.top, OnlineUser.observe

    def top(self, k):
        clock["now"] += 0.002
        return real_top(self, k)

    def observe(self, item):
        clock["now"] += 0.003
        seen = self.index[item] in self.history
        result = real_observe(self, item)
        observed.append((item, seen or self.history[-1] != self.index[item]))
        return result

    monkeypatch.setattr(OnlineUser, "top", top)
    monkeypatch.setattr(OnlineUser, "observe", observe)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock["now"])
    figures = run_bench(tmp_path / "bench.json", repeats=1, parts=("online",))["online-response"]
    assert figures == {
        f"{kind}-{name}-ms-{p}": pytest.approx(ms, abs=1e-9)
        for kind in ("user-level", "item-tower") for name, ms in (("update-and-top10", 5.0), ("top10-alone", 2.0)) for p in ("p50", "p99")
    }
    assert len(observed) == 10 and not any(bad for _, bad in observed)  # 5 events per export, each an unseen item, remembered


def test_bench_secure_part_counts_what_one_device_sends_over_the_whole_protocol():
    from simulations.bench.overheads import secure_device_cost

    figures = secure_device_cost(devices=60, dimensions=(100, 2_000, 15))
    assert (figures["neighbours"], figures["threshold"]) == (32, 17)
    assert figures["masked-input-bytes"] == figures["central-bytes-sent-per-device"] == 4 * 2_115  # uint32 as float32
    assert figures["unmask-share-bytes"] == 3 * 32 * (4 + 16)  # a 16-byte seed share per neighbour per release
    # four 32-byte X25519 public keys (a mask key per release, a channel key), their Ed25519
    # signature (64) and the identity key in hex (64); per neighbour an AES-GCM bundle (12-byte
    # nonce, 16-byte tag) of three mask-key shares (4 + 32) and three seed shares (4 + 16), each
    # length-prefixed (4)
    assert (figures["public-key-bytes"], figures["encrypted-share-bytes"]) == (128 + 64 + 64, 32 * (12 + 16 + 3 * (4 + 36) + 3 * (4 + 20)))
    # per release: the signature on the survivor set and committed sum, the sketch (4 words of 8
    # bytes) and its signature, and the identity key in hex
    assert figures["confirmation-bytes"] == 3 * (64 + 32 + 64 + 64)
    assert figures["bytes-sent-per-device"] == sum(
        figures[k] for k in ("public-key-bytes", "encrypted-share-bytes", "masked-input-bytes", "signed-record-bytes",
                             "confirmation-bytes", "unmask-share-bytes")
    )


def test_the_bench_command_writes_the_parts_it_was_asked_for(tmp_path, capsys):
    """``fedmmrec bench --parts secure --out F``: the command line's path to the same figures,
    written to F (the secure part is the one that takes a second: counts, not timings)."""
    from simulations.bench.overheads import secure_device_cost
    from simulations.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--parts", "secure", "--repeats", "1", "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert list(written) == ["secure-sum-device"]
    expected = json.loads(json.dumps(secure_device_cost(), default=float))
    assert sorted(written["secure-sum-device"]) == sorted(expected)
    # what is fixed by the protocol; timings and the DER signature's length (a few bytes) vary
    fixed = ("devices", "neighbours", "threshold", "masked-input-bytes", "unmask-share-bytes", "public-key-bytes", "encrypted-share-bytes")
    assert {k: written["secure-sum-device"][k] for k in fixed} == {k: expected[k] for k in fixed}
    assert f"fedmmrec: wrote {out}" in capsys.readouterr().out
    assert main(["bench", "--parts", "secure,speed", "--out", str(tmp_path / "other.json")]) == 2
    assert "unknown bench part(s) speed; choose from quality, communication" in capsys.readouterr().err
    assert not (tmp_path / "other.json").exists()


def test_the_secure_scale_part_measures_runs_and_a_device_and_fits_their_growth(tmp_path, feature_cache):
    """``--parts secure-scale`` on small populations (the real runs and the real device cost at
    12, 24 and 30 devices, the last as 3 cohorts): every row is filled, the slopes are those of
    the figures beside them, and a population whose plan cannot hold is reported, not a crash."""
    from simulations.bench.secure_scale import project, project_crossing, secure_scale, slope

    assert slope([10, 100, 1000], [3, 300, 30000]) == pytest.approx(2.0)
    assert project([10, 100], [1, 10], 1000) == pytest.approx(100.0)
    assert project_crossing([10, 100], [0.1, 1.0], 10.0) == pytest.approx(1000.0)
    figures = secure_scale(tmp_path, feature_cache, runs=((12, 1), (24, 1), (30, 3)), device_populations=(12, 30, 2))
    assert [k for k in figures if k.startswith("run ")] == ["run 12 devices, 1 cohort(s)", "run 24 devices, 1 cohort(s)",
                                                         "run 30 devices, 3 cohort(s)"]
    assert figures["run 30 devices, 3 cohort(s)"]["server-sum-buffer-gib"] == pytest.approx(4 * 10 * 20100 / 2**30)
    assert "needs at least 3 devices" in figures["one device at 2 devices"]["no plan"]
    cpu = [figures[f"one device at {n} devices"]["cpu-s-per-release"] for n in (12, 30)]
    assert figures["growth exponent (log-log slope)"]["device CPU per release"] == pytest.approx(slope([12, 30], cpu))
    assert set(figures["projection, one sum"]) == {"1e+05 devices", "1e+06 devices"}
