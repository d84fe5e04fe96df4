"""``fedmmrec experiment CONFIG.toml``: a grid of settings x seeds, resumable, one results table.

The config::

    [experiment]
    name = "privacy-utility"
    out = "experiments"            # results go to <out>/<name>/
    seeds = [0, 1, 2]
    [experiment.base]              # run config keys shared by every setting
    num-server-rounds = 30
    [[setting]]
    name = "most-popular"
    kind = "most-popular"          # federated (default), central, most-popular or library
    [[setting]]
    name = "Cornac EASE"
    kind = "library"               # a peer model on the same split (simulations/studies/library_baselines.py)
    model = "ease"                 # bpr, ease, vbpr (Cornac) or content-knn
    [[setting]]
    name = "local DP, noise 0.8"
    noise-multiplier = 0.8
    seeds = [0]                    # optional: this setting's own seeds (an ablation on fewer)

Each (setting, seed) is a run directory ``<out>/<name>/runs/<setting>-s<seed>``; one that already
has ``summary.json`` is not run again, so an interrupted grid resumes where it stopped; the folder
of the run it stopped in is kept aside (``<run>.interrupted-1``: its devices' state would refuse a
second run there) and that run starts afresh.
Writes ``results.csv`` (one row per run), ``results.md`` (mean and standard deviation over
seeds per setting) and plots: NDCG@10 over rounds per setting, NDCG@10 against the largest
client epsilon, and HR@10 on cold against warm items.
"""

from __future__ import annotations

import csv
import math
import os
import re
import statistics
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from shared.run_directory import RunDirectory

METRICS = (
    "hr@10", "ndcg@10", "recall@20", "hr@10-cold", "hr@10-warm", "ndcg@10-cold", "ndcg@10-warm", "recall@20-warm",
    "hr@10-sampled", "ndcg@10-sampled", "hr@10-sampled-warm-negatives", "ndcg@10-sampled-warm-negatives",
    "rank-percentile-cold", "rank-percentile-warm",
)
KIND_ALIASES = {"central": "pooled"}  # old name: "central" now means only central DP
SAME_USERS_METRICS = ("hr@10-warm", "recall@20-warm", "hr@10-sampled", "rank-percentile-warm")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


ENV_REFERENCE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")


def expand_environment(value: Any, where: str) -> Any:
    """``${NAME}`` or ``${NAME:-default}`` in a grid's string value, from the environment: a grid
    names where its dataset usually is and the user points elsewhere without editing it
    (``FEDMMREC_MOVIELENS=/data/ml fedmmrec experiment ...``)."""
    if not isinstance(value, str):
        return value

    def lookup(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise ValueError(f"{where}: ${{{name}}} is not set in the environment and has no default")
        return default

    return ENV_REFERENCE.sub(lookup, value)


def load_experiment(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the experiment: {exc}") from exc
    experiment = raw.get("experiment", {})
    settings = raw.get("setting", [])
    if not settings:
        raise ValueError(f"{path}: no [[setting]] tables")
    base = {key: expand_environment(value, f"{path}: {key}") for key, value in experiment.get("base", {}).items()}
    for setting in settings:
        setting.update({key: expand_environment(value, f"{path}: {key}") for key, value in setting.items()})
        if "name" not in setting:
            raise ValueError(f"{path}: a [[setting]] has no name")
        if setting.get("kind") in KIND_ALIASES:
            new = KIND_ALIASES[setting["kind"]]
            print(f"fedmmrec: {path}: setting {setting['name']!r}: kind {setting['kind']!r} is now {new!r}", file=sys.stderr)
            setting["kind"] = new
        if setting.get("kind", "federated") not in RUNNERS:
            raise ValueError(f"{path}: setting {setting['name']!r}: kind must be one of {', '.join(RUNNERS)}")
        if setting.get("kind") == "library":
            from simulations.studies.library_baselines import LIBRARY_MODELS

            if setting.get("model") not in LIBRARY_MODELS:
                raise ValueError(f"{path}: setting {setting['name']!r}: model must be one of {', '.join(LIBRARY_MODELS)}")
    return {
        "name": experiment.get("name", path.stem),
        "out": Path(expand_environment(experiment.get("out", "experiments"), f"{path}: out")),
        "seeds": list(experiment.get("seeds", [0])),
        "base": base,
        "settings": settings,
        # Rows of another study's results.csv drawn in this one's plot (measured, not typed in).
        "reference-results": experiment.get("reference-results", ""),
        "references": list(experiment.get("references", [])),
    }


SIMULATION_KEYS = ("faults", "engine")  # a grid setting's keys that steer the simulation, not the run config


def _run_federated(overrides: dict[str, Any], run_dir: Path) -> None:
    from simulations.engines.simulate import simulate

    settings = dict(overrides)
    # A grid's faults and engine (``in-process``: the same server and ClientApp code without
    # Ray's message passing, several times faster for the secure sum's many stages).
    simulate(settings, faults=str(settings.pop("faults", "")), engine=str(settings.pop("engine", "ray")))


def _run_pooled(overrides: dict[str, Any], run_dir: Path) -> None:
    from simulations.studies.pooled import train_pooled

    train_pooled(overrides)


def _run_most_popular(overrides: dict[str, Any], run_dir: Path) -> None:
    from shared.baselines import most_popular
    from shared.config import resolve
    from shared.data import load_dataset, split_for
    from shared.data.prepare import resolve_data_dir

    config = resolve(None, overrides)
    final = most_popular(split_for(load_dataset(resolve_data_dir(config)), config))
    RunDirectory(run_dir.parent, run_dir.name).write_summary({"kind": "most-popular", "final": final})


def _run_library(overrides: dict[str, Any], run_dir: Path) -> None:
    """A library model (``model`` key) fitted and evaluated on the run config's split."""
    from shared.baselines import evaluate_scorer
    from shared.config import resolve
    from shared.data import load_dataset, split_for
    from shared.data.prepare import resolve_data_dir
    from shared.features import load_or_compute_features
    from simulations.studies.library_baselines import library_scorer, tuned_scorer

    name, tune = str(overrides.get("model", "")), bool(overrides.get("tune", False))
    config = resolve(None, {k: v for k, v in overrides.items() if k not in ("model", "tune")})
    dataset = load_dataset(resolve_data_dir(config))
    split = split_for(dataset, config)
    features = load_or_compute_features(dataset, config.data.feature_cache or None, progress=False)
    started = time.time()
    if tune:
        scorer, tuning = tuned_scorer(name, split, features, int(config.run.seed))
    else:
        scorer, tuning = library_scorer(name, split, features, int(config.run.seed)), None
    final = evaluate_scorer(split, scorer)
    RunDirectory(run_dir.parent, run_dir.name).write_summary(
        {"kind": "library", "model": name, "final": final, "wall-seconds": round(time.time() - started, 1),
         **({"tuning": tuning} if tuning else {})}
    )


# kind -> runner(overrides, run directory): each writes the run directory's summary.json,
# whose "final" block the results table reads the same way for every kind.
RUNNERS = {"federated": _run_federated, "pooled": _run_pooled, "library": _run_library, "most-popular": _run_most_popular}


def _check_same_config(run_dir: Path, overrides: dict[str, Any]) -> None:
    """A finished run is reused only if it ran with what the grid asks now: a changed key
    (more rounds, another noise) would otherwise mix old results into the new table."""
    run = RunDirectory.open(run_dir)
    if not run.config_path.is_file():  # most-popular runs save no config
        return
    from shared.config import resolve

    saved = run.read_config()
    wanted = resolve(None, {k: v for k, v in overrides.items() if k not in ("run-dir", "run-id", *SIMULATION_KEYS)})
    changed = [f"{k}: ran with {saved[k]!r}, the grid asks {wanted[k]!r}" for k in overrides
               if k in saved and k not in ("run-dir", "run-id", *SIMULATION_KEYS) and not _same_value(saved[k], wanted[k])]
    if changed:
        raise ValueError(
            f"{run_dir}: this finished run's config differs from the grid's ({'; '.join(changed)}); "
            "delete the run directory to run it again, or give the changed setting a new name"
        )


def _same_value(saved: Any, wanted: Any) -> bool:
    """Equal, or the same folder (a run saves its data-dir resolved; a grid may name it relative)."""
    if saved == wanted:
        return True
    return isinstance(saved, str) and isinstance(wanted, str) and bool(saved and wanted) and (
        Path(saved).resolve() == Path(wanted).resolve()
    )


def most_popular_on_same_users(run_dir: Path) -> dict[str, float]:
    """Most-popular over exactly the users a federated run evaluated.

    Why: the final federated evaluation covers the users sampled at least once (in 15 rounds at
    10%, about four in five), while the most-popular and central rows cover every user; a
    fair comparison uses the same users.
    """
    from shared.baselines import most_popular
    from shared.config import from_saved
    from shared.data import load_dataset, split_for

    run = RunDirectory.open(run_dir)
    config = from_saved(run.read_config())
    return most_popular(split_for(load_dataset(config.data.data_dir), config), run.trained_partitions())


def _row(setting: str, kind: str, seed: int, run_dir: Path, wall: float | None) -> dict[str, Any]:
    run = RunDirectory.open(run_dir)
    summary = run.read_summary()
    privacy = summary.get("privacy", {})
    row = {"setting": setting, "kind": kind, "seed": seed, "run-dir": str(run_dir)}
    row.update({m: summary["final"].get(m, float("nan")) for m in METRICS})
    example_level = privacy.get("epsilon-max", "")  # "not applicable" where no device trains under DP-SGD
    row["epsilon-max"] = example_level if isinstance(example_level, (int, float)) else ""
    row["user-level-epsilon"] = privacy.get("user-level-epsilon") or ""
    row["privacy-mode"] = privacy.get("mode", "")
    row["mechanism"] = privacy.get("mechanism", "")
    row["wall-seconds"] = summary.get("wall-seconds", wall if wall is not None else "")
    row["users"] = summary["final"].get("clients-evaluated", summary["final"].get("users", ""))
    if kind == "federated" and run.trained_partitions():  # a secure-sum run keeps no device state: all users rank
        same = most_popular_on_same_users(run_dir)
        row.update({f"most-popular-same-users-{m}": same[m] for m in SAME_USERS_METRICS})
    return row


def run_experiment(path: str | Path, base: dict[str, Any] | None = None, out_dir: str | Path | None = None) -> Path:
    """Run (or resume) the grid; return the results folder. ``base`` overrides the file's
    ``[experiment.base]`` keys and ``out_dir`` its ``out`` (the benchmark runs a grid elsewhere)."""
    spec = load_experiment(path)
    spec["base"].update(base or {})
    out = Path(out_dir or spec["out"]) / spec["name"]
    runs = out / "runs"
    rows = []
    for setting in spec["settings"]:
        kind = setting.get("kind", "federated")
        keys = {k: v for k, v in setting.items() if k not in ("name", "kind", "seeds")}
        for seed in setting.get("seeds", spec["seeds"]):
            run_id = f"{_slug(setting['name'])}-s{seed}"
            run_dir = runs / run_id
            wall = None
            overrides = {**spec["base"], **keys, "seed": seed, "run-dir": str(runs), "run-id": run_id}
            if run_dir.is_dir() and RunDirectory.open(run_dir).has_summary():
                _check_same_config(run_dir, overrides)
            else:
                if run_dir.is_dir():
                    _set_aside(run_dir)
                print(f"fedmmrec: experiment {spec['name']}: {setting['name']}, seed {seed}", flush=True)
                started = time.time()
                RUNNERS[kind](overrides, run_dir)
                wall = round(time.time() - started, 1)
            rows.append(_row(setting["name"], kind, seed, run_dir, wall))
    write_results(out, rows, _reference_rows(spec, Path(path)))
    print(f"fedmmrec: results in {out}")
    return out


def _set_aside(run_dir: Path) -> Path:
    """Move an interrupted run (a folder without ``summary.json``) out of the way, kept: its
    devices' state folders remember the releases they answered and the budget they spent, so a
    new run in the same folder would meet devices that rightly refuse it (a repeat, or past
    their cap). The grid's new run starts a fresh simulated population instead."""
    for k in range(1, 1000):
        aside = run_dir.with_name(f"{run_dir.name}.interrupted-{k}")
        if not aside.exists():
            run_dir.rename(aside)
            print(f"fedmmrec: {run_dir} was interrupted (no summary.json); kept as {aside.name}, run again", flush=True)
            return aside
    raise ValueError(f"{run_dir}: 999 interrupted copies beside it already; remove some")


def _reference_rows(spec: dict[str, Any], grid_path: Path) -> list[dict[str, Any]]:
    """The ``references`` settings' rows from ``reference-results`` (one results.csv or a list
    of them; each a path relative to the repository root or to the grid file)."""
    if not spec["references"]:
        return []
    names = spec["reference-results"] if isinstance(spec["reference-results"], list) else [spec["reference-results"]]
    rows: list[dict[str, Any]] = []
    for name in map(Path, names):
        path = name if name.is_file() else grid_path.parent / name
        if not path.is_file():
            raise ValueError(f"{grid_path}: reference-results {name} not found")
        rows += [r for r in csv.DictReader(path.open(encoding="utf-8")) if r["setting"] in spec["references"]]
    missing = set(spec["references"]) - {r["setting"] for r in rows}
    if missing:
        raise ValueError(f"{grid_path}: no reference-results rows for setting(s) {', '.join(sorted(missing))}")
    return rows


def write_results(out: Path, rows: list[dict[str, Any]], references: list[dict[str, Any]] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        writer.writerows(rows)
    same_header = "most-popular on the same users: " + " / ".join(SAME_USERS_METRICS)
    lines = [
        "| setting | runs | users | " + " | ".join(METRICS) + f" | {same_header} | epsilon max (example-level) | user-level epsilon | wall s |",
        "|" + " --- |" * (len(METRICS) + 7),
    ]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        group = [r for r in rows if r["setting"] == setting]
        cells = []
        for metric in METRICS:
            values = [float(r[metric]) for r in group]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f}")
        eps = [float(r["epsilon-max"]) for r in group if r["epsilon-max"] != ""]
        walls = [float(r["wall-seconds"]) for r in group if r["wall-seconds"] != ""]
        eps_cell = f"{statistics.mean(eps):.1f}" if eps else "n/a"
        user_eps = sorted({float(r["user-level-epsilon"]) for r in group if r.get("user-level-epsilon", "") != ""})
        user_cell = ", ".join(f"{e:.2f}" for e in user_eps) or "n/a"
        wall_cell = f"{statistics.mean(walls):.0f}" if walls else ""
        users = sorted({str(r.get("users", "")) for r in group})
        same = [
            f"{statistics.mean(float(r[f'most-popular-same-users-{m}']) for r in group):.3f}"
            for m in SAME_USERS_METRICS
            if all(f"most-popular-same-users-{m}" in r for r in group)
        ]
        lines.append(
            f"| {setting} | {len(group)} | {', '.join(users)} | " + " | ".join(cells)
            + f" | {' / '.join(same) or 'n/a'} | {eps_cell} | {user_cell} | {wall_cell} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _plots(out, rows, references or [])


def _plots(out: Path, rows: list[dict[str, Any]], references: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, ax = plt.subplots(figsize=(6, 3.5))
    for setting in dict.fromkeys(r["setting"] for r in rows):
        run = next(r for r in rows if r["setting"] == setting)
        curve = [(m["round"], m["ndcg@10"]) for m in RunDirectory.open(run["run-dir"]).read_metrics() if "ndcg@10" in m and "round" in m]
        if curve:
            ax.plot(*zip(*curve), marker=".", label=setting)
    ax.set(xlabel="round", ylabel="NDCG@10", title="NDCG@10 over rounds (first seed)")
    if ax.lines:
        ax.legend(fontsize=7)
    fig.savefig(out / "ndcg_over_rounds.png", dpi=100, bbox_inches="tight")
    plt.close(fig)

    if any(_user_level(r) for r in rows):
        _user_level_plot(out, rows, references, plt)
    else:
        _example_level_plot(out, rows, plt)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(dict.fromkeys(r["setting"] for r in rows))
    # Rank percentile, not HR@10: lifting a new item from the bottom of a 1,682-item catalog to
    # its top third is what content buys, and HR@10 is near zero for every setting on cold items.
    for offset, part in ((-0.2, "rank-percentile-warm"), (0.2, "rank-percentile-cold")):
        means = [statistics.mean(float(r[part]) for r in rows if r["setting"] == n) for n in names]
        ax.bar([i + offset for i in range(len(names))], means, width=0.4, label=part)
    ax.axhline(0.5, linestyle="--", linewidth=0.8, color="grey")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="rank percentile of the test item (0 best, 0.5 random)", title="Cold-start against warm items")
    ax.legend()
    fig.savefig(out / "cold_vs_warm.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    _hits_plot(out, rows, names, plt)


def _hits_plot(out: Path, rows: list[dict[str, Any]], names: list[str], plt) -> None:
    """HR@10 on warm against cold test items, one point per setting (mean over seeds, bars one
    standard deviation): a model that puts new items in top-10 lists pays in warm hits, and
    this shows who pays how much for how many."""
    def spread(values: list[float]) -> float:
        return statistics.stdev(values) if len(values) > 1 else 0.0

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for index, name in enumerate(names):
        group = [r for r in rows if r["setting"] == name]
        warm, cold = ([float(r[m]) for r in group] for m in ("hr@10-warm", "hr@10-cold"))
        # Matplotlib's ten colours repeat: the marker changes with each round of them.
        ax.errorbar(statistics.mean(warm), statistics.mean(cold), xerr=spread(warm), yerr=spread(cold), fmt="osD^v<>"[index // 10 % 7], label=name)
    ax.set(xlabel="HR@10, warm test items", ylabel="HR@10, cold test items", title="Warm against cold hits")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.savefig(out / "warm_vs_cold_hits.png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def _user_level(row: dict[str, Any]) -> bool:
    """Whether a federated row's mechanism states a user-level epsilon (a line of the plot)."""
    return row.get("kind") == "federated" and row.get("user-level-epsilon") not in ("", None)

INFINITY_AT = 16.0
REFERENCE_COLOURS = ("tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan", "black", "navy", "gold")  # where epsilon = inf (no noise) sits on the log axis


def _user_level_plot(out: Path, rows: list[dict[str, Any]], references: list[dict[str, Any]], plt) -> None:
    """NDCG@10 against user-level epsilon (1, 3, 8, inf): one line per mechanism, mean over
    seeds; settings without a user-level epsilon (and reference rows from another study) as
    labelled horizontal lines, reference rows with one as labelled points."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for mechanism in dict.fromkeys(r.get("mechanism", "") for r in rows if _user_level(r)):
        mine, label = [r for r in rows if _user_level(r) and r.get("mechanism", "") == mechanism], mechanism or "user-level DP"
        by_eps: dict[float, list[float]] = {}
        for r in mine:
            eps = float(r["user-level-epsilon"])
            by_eps.setdefault(INFINITY_AT if math.isinf(eps) else eps, []).append(float(r["ndcg@10"]))
        if by_eps:
            xs = sorted(by_eps)
            ax.plot(xs, [statistics.mean(by_eps[x]) for x in xs], marker="o", label=label)
    levels = [r for r in rows if not _user_level(r)] + references
    for k, setting in enumerate(dict.fromkeys(r["setting"] for r in levels)):
        group = [r for r in levels if r["setting"] == setting]
        level = statistics.mean(float(r["ndcg@10"]) for r in group)
        epsilon = group[0].get("user-level-epsilon", "")
        if epsilon not in ("", None) and not _user_level(group[0]):
            ax.plot([float(epsilon)], [level], marker="s", markersize=8, linestyle="none", color=REFERENCE_COLOURS[k % len(REFERENCE_COLOURS)],
                    label=f"{setting} (user-level eps {float(epsilon):.1f})")
        else:
            ax.axhline(level, linestyle=("--", "-.", ":")[k % 3], linewidth=1.2, color=REFERENCE_COLOURS[k % len(REFERENCE_COLOURS)],
                       label=f"reference: {setting}")
    ticks = [1, 3, 8, INFINITY_AT]
    ax.set_xscale("log")
    ax.set_xticks(ticks, ["1", "3", "8", "inf (no noise)"])
    ax.minorticks_off()
    ax.set(xlabel="user-level epsilon (delta 1e-5)", ylabel="NDCG@10 (full ranking)", title="Privacy against utility")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside: never over a point
    fig.savefig(out / "privacy_utility.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _example_level_plot(out: Path, rows: list[dict[str, Any]], plt) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    private = [r for r in rows if r["epsilon-max"] != ""]
    for setting in dict.fromkeys(r["setting"] for r in private):
        points = [(float(r["epsilon-max"]), float(r["ndcg@10"])) for r in private if r["setting"] == setting]
        ax.scatter(*zip(*points), label=setting)
    # Settings without a local epsilon (not private, central, most-popular) as reference levels.
    for setting in dict.fromkeys(r["setting"] for r in rows if r["epsilon-max"] == ""):
        level = statistics.mean(float(r["ndcg@10"]) for r in rows if r["setting"] == setting)
        ax.axhline(level, linestyle="--", linewidth=0.8, color="grey")
        ax.annotate(setting, (0, level), xycoords=("axes fraction", "data"), fontsize=6, va="bottom")
    ax.set(xlabel="largest client epsilon (example-level, delta 1e-5)", ylabel="NDCG@10", title="Privacy against utility")
    if private:
        ax.legend(fontsize=6)
    fig.savefig(out / "privacy_utility.png", dpi=100, bbox_inches="tight")
    plt.close(fig)

