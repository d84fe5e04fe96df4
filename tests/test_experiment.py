"""``fedmmrec experiment`` runs a grid of real runs, resumes without redoing finished ones, and
writes the results table and plots."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from simulations.studies.experiment import load_experiment, run_experiment


def test_grid_runs_resumes_and_writes_results(small_dataset, feature_cache, tmp_path, capsys):
    config = tmp_path / "grid.toml"
    config.write_text(
        f"""
[experiment]
name = "tiny"
out = "{tmp_path / 'out'}"
seeds = [0, 1]
[experiment.base]
data-dir = "{small_dataset}"
feature-cache = "{feature_cache}"
num-server-rounds = 2
fraction-train = 1.0
[[setting]]
name = "most-popular"
kind = "most-popular"
[[setting]]
name = "federated, local DP"
privacy = "local"
seeds = [1]
""",
        encoding="utf-8",
    )
    out = run_experiment(config)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["setting"], r["seed"]) for r in rows] == [
        ("most-popular", "0"), ("most-popular", "1"), ("federated, local DP", "1"),
    ]
    assert all(0.0 <= float(r["ndcg@10"]) <= 1.0 for r in rows)
    assert rows[2]["epsilon-max"] and not rows[0]["epsilon-max"]
    # Every user trained (fraction 1.0), so most-popular "on the same users" is the whole row.
    assert rows[2]["users"] == "12"
    assert float(rows[2]["most-popular-same-users-hr@10-warm"]) == pytest.approx(float(rows[0]["hr@10-warm"]))
    assert float(rows[2]["most-popular-same-users-recall@20-warm"]) == pytest.approx(float(rows[0]["recall@20-warm"]))
    table = (out / "results.md").read_text()
    assert "| federated, local DP | 1 |" in table and "| most-popular | 2 |" in table and " ± " in table
    for plot in ("ndcg_over_rounds.png", "privacy_utility.png", "cold_vs_warm.png", "warm_vs_cold_hits.png"):
        assert (out / plot).stat().st_size > 1000

    capsys.readouterr()
    run_experiment(config)  # everything finished: nothing runs again
    assert "seed" not in capsys.readouterr().out.split("results in")[0]

    # The grid changed under a finished run: it is not silently reused.
    config.write_text(config.read_text().replace("num-server-rounds = 2", "num-server-rounds = 3"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"federated-local-dp-s1: .*num-server-rounds: ran with 2, the grid asks 3"):
        run_experiment(config)


def test_user_level_grid_reports_its_epsilon_and_plots_it_against_references(small_dataset, feature_cache, tmp_path):
    config = tmp_path / "user.toml"
    config.write_text(
        f"""
[experiment]
name = "user"
out = "{tmp_path / 'out'}"
seeds = [0]
[experiment.base]
data-dir = "{small_dataset}"
feature-cache = "{feature_cache}"
privacy = "user"
user-noise = "central"
[[setting]]
name = "most-popular"
kind = "most-popular"
[[setting]]
name = "user-level DP, eps 3"
user-epsilon = 3.0
[[setting]]
name = "no noise"
user-epsilon = inf
""",
        encoding="utf-8",
    )
    out = run_experiment(config)
    rows = {r["setting"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert float(rows["user-level DP, eps 3"]["user-level-epsilon"]) == pytest.approx(3.0)
    assert rows["no noise"]["user-level-epsilon"] == "inf" and rows["most-popular"]["user-level-epsilon"] == ""
    assert rows["user-level DP, eps 3"]["privacy-mode"] == "user"
    table = (out / "results.md").read_text()
    assert "| user-level DP, eps 3 | 1 | 12 |" in table and "| 3.00 |" in table and "| inf |" in table
    assert (out / "privacy_utility.png").stat().st_size > 1000


def test_bad_experiment_config_names_the_file(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[[setting]]\nname = "x"\nkind = "magic"\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.toml: setting 'x': kind must be one of"):
        load_experiment(config)


def test_the_grids_dataset_can_be_given_on_the_command_line(small_dataset, feature_cache, tmp_path):
    from simulations.cli import main

    grid = tmp_path / "portable.toml"
    grid.write_text(
        f"""
[experiment]
name = "portable"
out = "{tmp_path / 'out'}"
[experiment.base]
data-dir = "/nowhere/movielens-100k-mm"
[[setting]]
name = "most-popular"
kind = "most-popular"
""",
        encoding="utf-8",
    )
    assert main(["experiment", str(grid), "--set", f"data-dir={small_dataset}", "--set", f"feature-cache={feature_cache}"]) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "portable" / "results.csv").open()))
    assert rows[0]["users"] == "12"


def test_an_interrupted_run_is_kept_aside_and_run_afresh(small_dataset, feature_cache, tmp_path, capsys):
    from simulations.cli import main

    grid = tmp_path / "again.toml"
    grid.write_text(f"""
[experiment]
name = "again"
out = "{tmp_path / 'out'}"
seeds = [0]
[experiment.base]
data-dir = "{small_dataset}"
feature-cache = "{feature_cache}"
[[setting]]
name = "most-popular"
kind = "most-popular"
""", encoding="utf-8")
    interrupted = tmp_path / "out" / "again" / "runs" / "most-popular-s0"
    (interrupted / "devices" / "device-0").mkdir(parents=True)
    (interrupted / "devices" / "device-0" / "spent.json").write_text("{}", encoding="utf-8")  # a device's durable state
    assert main(["experiment", str(grid)]) == 0
    kept = interrupted.with_name("most-popular-s0.interrupted-1")
    assert (kept / "devices" / "device-0" / "spent.json").read_text(encoding="utf-8") == "{}"  # nothing lost
    assert (interrupted / "summary.json").is_file()  # the new run, in a fresh folder
    assert "was interrupted (no summary.json); kept as most-popular-s0.interrupted-1, run again" in capsys.readouterr().out


def test_a_grid_reads_its_dataset_from_the_environment_with_a_default(tmp_path, monkeypatch):
    grid = tmp_path / "env.toml"
    grid.write_text(
        '[experiment.base]\ndata-dir = "${FEDMMREC_TEST_DATA:-../shared/data/pack}"\n[[setting]]\nname = "m"\nkind = "most-popular"\n',
        encoding="utf-8",
    )
    monkeypatch.delenv("FEDMMREC_TEST_DATA", raising=False)
    assert load_experiment(grid)["base"]["data-dir"] == "../shared/data/pack"
    monkeypatch.setenv("FEDMMREC_TEST_DATA", "/data/my-movielens")
    assert load_experiment(grid)["base"]["data-dir"] == "/data/my-movielens"
    grid.write_text('[experiment.base]\ndata-dir = "${FEDMMREC_TEST_UNSET}"\n[[setting]]\nname = "m"\n', encoding="utf-8")
    monkeypatch.delenv("FEDMMREC_TEST_UNSET", raising=False)
    with pytest.raises(ValueError, match=r"env\.toml: data-dir: \$\{FEDMMREC_TEST_UNSET\} is not set"):
        load_experiment(grid)


def test_a_grids_out_folder_reads_the_environment_like_its_settings(tmp_path, monkeypatch):
    grid = tmp_path / "out.toml"
    grid.write_text('[experiment]\nout = "${FEDMMREC_TEST_OUT:-studies}/movielens"\n[[setting]]\nname = "m"\nkind = "most-popular"\n',
                    encoding="utf-8")
    monkeypatch.delenv("FEDMMREC_TEST_OUT", raising=False)
    assert load_experiment(grid)["out"] == Path("studies/movielens")
    monkeypatch.setenv("FEDMMREC_TEST_OUT", "/scratch")
    assert load_experiment(grid)["out"] == Path("/scratch/movielens")
    grid.write_text('[experiment]\nout = "${FEDMMREC_TEST_UNSET}/x"\n[[setting]]\nname = "m"\n', encoding="utf-8")
    monkeypatch.delenv("FEDMMREC_TEST_UNSET", raising=False)
    with pytest.raises(ValueError, match=r"out\.toml: out: \$\{FEDMMREC_TEST_UNSET\} is not set"):
        load_experiment(grid)


def test_the_old_central_kind_is_read_as_pooled(tmp_path, capsys):
    grid = tmp_path / "old.toml"
    grid.write_text('[[setting]]\nname = "c"\nkind = "central"\n', encoding="utf-8")
    assert load_experiment(grid)["settings"][0]["kind"] == "pooled"
    assert "kind 'central' is now 'pooled'" in capsys.readouterr().err


def test_reference_rows_come_from_every_named_results_file(tmp_path):
    from simulations.studies.experiment import _reference_rows

    for name, setting in (("a.csv", "tower"), ("b.csv", "ease")):
        (tmp_path / name).write_text(f"setting,ndcg@10\n{setting},0.05\nother,0.01\n", encoding="utf-8")
    grid = tmp_path / "grid.toml"
    grid.write_text(
        '[experiment]\nreference-results = ["a.csv", "b.csv"]\nreferences = ["tower", "ease"]\n'
        '[[setting]]\nname = "most-popular"\nkind = "most-popular"\n',
        encoding="utf-8",
    )
    rows = _reference_rows(load_experiment(grid), grid)
    assert [(r["setting"], r["ndcg@10"]) for r in rows] == [("tower", "0.05"), ("ease", "0.05")]
    grid.write_text(grid.read_text().replace('"ease"]', '"ease", "gone"]'), encoding="utf-8")
    with pytest.raises(ValueError, match=r"grid\.toml: no reference-results rows for setting\(s\) gone"):
        _reference_rows(load_experiment(grid), grid)


def test_a_grid_setting_chooses_the_simulation_engine_and_faults_outside_the_run_config(monkeypatch, tmp_path):
    """``engine`` and ``faults`` in a grid setting steer the simulation; the run config never sees them."""
    import simulations.engines.simulate as engines
    from simulations.studies.experiment import _run_federated

    seen = {}
    monkeypatch.setattr(engines, "simulate", lambda settings, faults="", engine="ray": seen.update(settings=settings, faults=faults, engine=engine))
    _run_federated({"seed": 1, "engine": "in-process", "faults": "crash:3"}, tmp_path)
    assert seen == {"settings": {"seed": 1}, "faults": "crash:3", "engine": "in-process"}
    _run_federated({"seed": 2}, tmp_path)
    assert seen == {"settings": {"seed": 2}, "faults": "", "engine": "ray"}
