"""The data, baseline, features, export and device-folder commands, each run through the
command line on real inputs, its output held to what the library computes directly."""

from __future__ import annotations

import csv
import json

import pytest

from simulations.cli import main


def test_data_synth_writes_a_dataset_that_data_check_reads_back(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "synth"), "--users", "20", "--items", "60", "--seed", "4"]) == 0
    assert capsys.readouterr().out.strip() == f"fedmmrec: wrote {tmp_path / 'synth'}"
    with (tmp_path / "synth" / "items.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 60
    with (tmp_path / "synth" / "interactions.csv").open() as handle:
        users = {row["user_id"] for row in csv.DictReader(handle)}
    assert len(users) == 20
    assert main(["data", "check", str(tmp_path / "synth")]) == 0
    assert capsys.readouterr().out.startswith(f"fedmmrec: {tmp_path / 'synth'}: 60 items, 20 users, ")


def test_baseline_most_popular_prints_the_metrics_of_the_split(small_dataset, capsys):
    from shared.baselines import most_popular
    from shared.config import resolve
    from shared.data import load_dataset, split_for

    assert main(["baseline", "most-popular", "--set", f"data-dir={small_dataset}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == pytest.approx(most_popular(split_for(load_dataset(small_dataset), resolve(None, {"data-dir": str(small_dataset)}))))


def test_features_fills_the_cache_the_runs_read(tmp_path, capsys, monkeypatch):
    from shared.data import load_dataset
    from shared.data.synth import SynthConfig, generate
    from shared.features import load_or_compute_features

    # a catalog of its own (no other test has encoded it), small: the command encodes every item
    small_dataset = generate(tmp_path / "tiny", SynthConfig(users=4, items=12, seed=11, mean_interactions=5))
    cache = tmp_path / "cache"
    assert main(["features", "--set", f"data-dir={small_dataset}", "--set", f"feature-cache={cache}"]) == 0
    assert capsys.readouterr().out.strip().endswith("fedmmrec: features for 12 items cached")
    assert sorted(p.name.split("-")[0] for p in cache.glob("*.npz")) == ["image", "text"]  # not the lock files alone

    import shared.features.cache as features_cache

    def no_encoding(*_args, **_kwargs):
        raise AssertionError("the run recomputed features the command should have cached")

    monkeypatch.setattr(features_cache, "_encode_texts", no_encoding)
    monkeypatch.setattr(features_cache, "_encode_images", no_encoding)
    cached = load_or_compute_features(load_dataset(small_dataset), str(cache), progress=False)
    assert cached.num_items == 12 and cached.text_mask.any() and cached.image_mask.any()


def test_deploy_devices_writes_one_folder_per_device_with_that_users_interactions(small_dataset, tmp_path, capsys):
    out = tmp_path / "devices"
    assert main(["deploy", "devices", "--data", str(small_dataset), "--out", str(out), "--devices", "3"]) == 0
    assert capsys.readouterr().out.strip() == f"fedmmrec: wrote 3 device folders under {out}"
    for k in range(3):
        with (out / f"device-{k}" / "interactions.csv").open() as handle:
            assert len({row["user_id"] for row in csv.DictReader(handle)}) == 1
        assert (out / f"device-{k}" / "items.csv").read_bytes() == (small_dataset / "items.csv").read_bytes()
    assert main(["deploy", "devices", "--data", str(small_dataset), "--out", str(out), "--devices", "3"]) == 2
    assert "device-0" in capsys.readouterr().err  # an existing device folder may hold its state: refused


def test_export_command_signs_with_the_key_it_is_given(federated_run, tmp_path, capsys):
    from client.exports import load_export
    from server.certificates import write_deployment_keys

    keys = write_deployment_keys(tmp_path / "keys", ["localhost"], 0)
    out = tmp_path / "export"
    assert main(["export", str(federated_run), "--out", str(out), "--signing-key", str(keys.export_key)]) == 0
    assert capsys.readouterr().out.startswith(f"fedmmrec: wrote {out} (signed with {keys.export_key}")
    assert load_export(out, keys.export_public_key).kind == "item-tower"
    assert main(["export", str(federated_run), "--out", str(tmp_path / "x"), "--signing-key", str(tmp_path / "none.key")]) == 2
    assert "none.key: signing key not found" in capsys.readouterr().err


def test_run_takes_a_fault_spec_for_the_simulation_only(small_dataset, monkeypatch, capsys):
    """``--faults`` is the simulation's hook (not a run-config key): a bad spec is refused with
    the reason before Flower starts, and a good one reaches the simulation."""
    assert main(["run", "--faults", "melt:1", "--set", f"data-dir={small_dataset}"]) == 2
    assert "fedmmrec: error: faults: 'melt:1': expected KIND:ID[,ID or A-B...] with KIND one of nan, shape" in capsys.readouterr().err
    assert main(["run", "--set", "faults=nan:1"]) == 2
    assert "unknown run config key 'faults'" in capsys.readouterr().err
    import simulations.engines.simulate

    seen = {}
    monkeypatch.setattr(simulations.engines.simulate, "simulate",
                        lambda overrides, quiet, faults, engine: seen.update(faults=faults, engine=engine, **overrides))
    assert main(["run", "--faults", "crash:3 slow:4", "--set", f"data-dir={small_dataset}"]) == 0
    assert seen == {"faults": "crash:3 slow:4", "engine": "ray", "data-dir": str(small_dataset)}  # faults need Flower's in-process engine
    seen.clear()
    assert main(["run", "--set", f"data-dir={small_dataset}"]) == 0
    assert seen == {"faults": "", "engine": "superlink", "data-dir": str(small_dataset)}  # flwr run against a SuperLink of its own


def test_run_on_the_in_process_engine_from_the_command_line(small_dataset, feature_cache, tmp_path, capsys):
    """``fedmmrec run --engine in-process``: the default mode's three releases, the devices called
    one after another in this process, the same lines a user sees on the other engines."""
    from server.audit import audit
    from simulations.engines.simulate import read_summary

    settings = {"data-dir": small_dataset, "feature-cache": feature_cache, "run-dir": tmp_path, "run-id": "cli-in-process",
                "cooccurrence-items": 60}
    argv = ["run", "--engine", "in-process"]
    for key, value in settings.items():
        argv += ["--set", f"{key}={value}"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("[round")] == [
        "[round 1/3] popularity release", "[round 2/3] cooccurrence release", "[round 3/3] selection release"]
    assert lines[-1] == f"fedmmrec: run directory {tmp_path / 'cli-in-process'}"
    summary = read_summary(tmp_path / "cli-in-process")
    assert summary["final"]["clients-evaluated"] == 12 and summary["privacy"]["mode"] == "user"
    assert audit(tmp_path / "cli-in-process").passed
