"""``fedmmrec population-study``: at which population does training the multimodal tower on
devices beat the statistics alone, at the same user-level budget?

At MovieLens' 943 users a device-trained tower loses to the released statistics (README). The
noise of DP-FedAvg on a sum shrinks relative to the sum like 1/N, so more devices should help
the tower; but they help the statistics too. This study measures both on the same synthetic
generator (:mod:`shared.data.synth`, the catalog fixed at 500 items and seed 0: the catalog is
drawn before the users, so every population sees the same films, content and cold films) at
several populations, user-level epsilon 8 at delta 1e-5, and four ways to spend it:

- ``statistics``: the default mechanism's two releases (popularity, co-occurrence; shares 0.1 /
  0.9 of the mu^2 budget; no selection vote: popularity weight 0.3, cold weight 1), the whole
  budget;
- ``statistics, half budget``: the same releases at half the mu^2 budget (what the tower row
  keeps for them);
- ``statistics + tower (DP-FedAvg)``: those releases plus the tower of
  :mod:`shared.content_adapter` (a projection of the public content, initialised at the
  identity, on top of the released model) trained by user-level DP-FedAvg with the rest of the
  budget: Poisson sampling of ``devices-per-round`` devices in expectation, clip, Gaussian noise
  calibrated so that the releases and the rounds compose to the budget (dp-accounting's PLD
  accountant, :func:`shared.privacy.accounting.releases_and_rounds_epsilon`);
- ``tower without noise``: the same training without noise (NOT PRIVATE: the ceiling that
  noise takes the tower away from).

The devices and the server are simulated in one process with the Flower path's functions:
each device's statistics (:func:`shared.cooccurrence.popularity_contribution`; the
co-occurrence sum computed at once by :func:`cooccurrence_sum`, tested equal to the sum of
:func:`shared.cooccurrence.cooccurrence_contribution` over devices), the server's Gaussian
release (:func:`server.mechanisms.gaussian_releases.gaussian_release`), the model fit
(:func:`shared.cooccurrence.fit_model`) and DP-FedAvg's clip, noise and fixed denominator
(:func:`server.mechanisms.dp_fedavg.noise.aggregate`). Flower's transport is left out: 50,000 devices
on 2 cores would be hours of message passing for the same arithmetic. The study draws its noise
and sampling from seeded generators so that its rows reproduce; the Flower path draws them from
OS entropy, as a deployment must.

Evaluation: each evaluated user's last interaction (warm, or one of the 10% of films that no
training history holds, only content ranks them) against the whole catalog outside its history
(HR@10, rank percentile); the same users for every row of a population. ``evaluate_on =
validation`` is the same one step earlier (:func:`shared.data.split.leave_last_out`), where the
tower's settings were chosen.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from shared.content_adapter import ContentAdapter, TowerSettings, content_projection
from shared.cooccurrence import fit_model, matrix_from_triangle, popularity_contribution, top_items, triangle_size
from shared.data import LeaveLastOutSplit, leave_last_out, load_dataset
from shared.data.synth import SynthConfig, generate
from shared.features import load_or_compute_features
from shared.item_content import content_matrix
from shared.metrics import metrics_from_rank, rank_of, rank_percentile
from shared.privacy.accounting import gaussian_epsilon, releases_and_rounds_epsilon, split_budget

POPULATIONS = (250, 1000, 5000, 20000, 50000)
CATALOG = SynthConfig(items=500, seed=0)
SHARES = (0.1, 0.9)  # popularity, co-occurrence: of the mu^2 budget
STATISTICS, WITH_CONTENT, HALF, TOWER, NOISELESS, SECURE = (
    "statistics", "statistics + public content term", "statistics, half budget", "statistics + tower (DP-FedAvg)",
    "tower without noise (NOT PRIVATE)", "statistics, secure sums (no party trusted)",
)
METHODS = (STATISTICS, WITH_CONTENT, HALF, TOWER, NOISELESS, SECURE)
COHORT = 10_000  # most devices in one secure sum of the SECURE row: larger populations are cut into cohorts, summed
COMPARED = (STATISTICS, WITH_CONTENT)  # what the tower must beat: the releases, with or without public content


def population_data(users: int, data_root: Path, evaluate_on: str, feature_cache: str | None):
    """The generator's dataset at ``users`` devices (written once under ``data_root``), its
    split and the public content matrix."""
    folder = data_root / f"users-{users}"
    if not (folder / "interactions.csv").exists():
        generate(folder, SynthConfig(**{**asdict(CATALOG), "users": users}))
    dataset = load_dataset(folder)
    features = load_or_compute_features(dataset, feature_cache, progress=False)
    content = content_matrix(features.text, features.text_mask, features.image, features.image_mask)
    # On validation a tenth of the warm films is pseudo-cold (held out of training), so that what
    # the tower does to new films is measured where its settings are chosen; on test the
    # generator's own cold films (never in a training history) are the new films.
    return leave_last_out(dataset, 0.1 if evaluate_on == "validation" else 0.0, 0, evaluate_on), content


def cooccurrence_sum(histories: list[np.ndarray], top: np.ndarray, num_items: int) -> np.ndarray:
    """The sum over devices of :func:`shared.cooccurrence.cooccurrence_contribution` (each of
    L2 norm 1 or 0, so the server's clip changes nothing), as one sparse product."""
    from scipy import sparse

    m = len(top)
    position = np.full(num_items, -1)  # each catalog item's row among the top items, -1 outside
    position[top] = np.arange(m)
    rows, cols = [], []
    for user, history in enumerate(histories):
        kept = position[np.asarray(history, dtype=np.int64)]
        kept = kept[kept >= 0]
        rows.append(np.full(len(kept), user))
        cols.append(kept)
    rows_all, cols_all = np.concatenate(rows), np.concatenate(cols)
    indicator = sparse.csr_matrix((np.ones(len(rows_all)), (rows_all, cols_all)), shape=(len(histories), m))
    counts = np.asarray(indicator.sum(1)).ravel()
    weights = sparse.diags(np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0))
    gram = (indicator.T @ weights @ indicator).toarray()
    upper_rows, upper_cols = np.triu_indices(m)
    return gram[upper_rows, upper_cols] * np.where(upper_rows == upper_cols, 1.0, math.sqrt(2.0))


def release_statistics(split: LeaveLastOutSplit, content: np.ndarray, stds: list[float], rng: np.random.Generator, m: int = 600, max_factors: int = 24):
    """The two releases and the served model, as ``privacy = user`` makes them."""
    from server.mechanisms.gaussian_releases import gaussian_release
    from shared.privacy.gaussian import gaussian_noise

    n = split.num_items
    known = np.zeros(n, dtype=bool)
    for items in split.train_items:
        known[items] = True
    popularity, _ = gaussian_release((popularity_contribution(h, n) for h in split.train_items), n, stds[0], rng)
    top = top_items(popularity, known, min(m, int(known.sum())))
    triangle = cooccurrence_sum(split.train_items, top, n) + gaussian_noise(rng, triangle_size(len(top)), stds[1])
    model, _ = fit_model(popularity, stds[0], top, matrix_from_triangle(triangle, len(top)), stds[1], content, known, max_factors, 0.3)
    return model


def secure_statistics(split: LeaveLastOutSplit, content: np.ndarray, epsilon: float, delta: float, cohort: int,
                      rng: np.random.Generator, m: int = 600, max_factors: int = 24):
    """The two releases through the default mechanism's own arithmetic (``user-noise =
    distributed``: each device's statistic clipped, rounded and given its Skellam share, summed in
    the field; :meth:`~shared.secure_sum.mechanism.SecureStudyNoise.release_streamed`), over
    secure sums of at most ``cohort`` devices (``secure-groups``, ``secure-combine = sum``), and
    the served model. Returns the model and the user-level epsilon the plans give."""
    from server.mechanisms import mechanism_for
    from shared.config import resolve
    from shared.cooccurrence import cooccurrence_contribution

    n, devices = split.num_items, len(split.users)
    known = np.zeros(n, dtype=bool)
    for items in split.train_items:
        known[items] = True
    size = min(m, int(known.sum()))
    config = resolve(None, {"privacy": "user", "user-noise": "distributed", "user-epsilon": epsilon, "delta": delta,
                            "secure-groups": math.ceil(devices / cohort), "secure-combine": "sum"})
    noise = mechanism_for(config).study_noise(list(SHARES), [n, triangle_size(size)], devices)
    popularity, popularity_std = noise.release_streamed(0, (popularity_contribution(h, n) for h in split.train_items), n, rng)
    top = top_items(popularity, known, size)
    triangle, triangle_std = noise.release_streamed(1, (cooccurrence_contribution(h, top) for h in split.train_items), triangle_size(len(top)), rng)
    model, _ = fit_model(popularity, popularity_std, top, matrix_from_triangle(triangle, len(top)), triangle_std, content, known, max_factors, 0.3)
    return model, noise.epsilon(2)


def tower_noise_multiplier(release_stds: list[float], rate: float, rounds: int, epsilon: float, delta: float) -> float:
    """The smallest DP-FedAvg noise multiplier (to 1%, at least 0.05) whose rounds, composed
    with the releases, stay within ``epsilon`` at ``delta``."""
    def fits(multiplier: float) -> bool:
        return releases_and_rounds_epsilon(release_stds, multiplier, rate, rounds, delta) <= epsilon

    lo, hi = 0.5, 1.0  # bracket: fits(hi) and not fits(lo)
    while not fits(hi):
        lo, hi = hi, hi * 2.0
        if hi > 1e4:
            raise ValueError("no noise multiplier fits the budget: the releases alone spend it")
    while fits(lo):
        if lo < 0.05:
            return lo
        lo, hi = lo / 2.0, lo
    while hi / lo > 1.01:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def train_tower(adapter: ContentAdapter, split: LeaveLastOutSplit, settings: TowerSettings, noise_multiplier: float, rng: np.random.Generator) -> ContentAdapter:
    """DP-FedAvg rounds over the devices (Poisson sampling, clip, noise of ``noise_multiplier``
    times the clip on the sum, divided by the expected number sampled)."""
    from flwr.app import Array, ArrayRecord

    from server.mechanisms.dp_fedavg.noise import CentralDP, aggregate, flatten, poisson_sample

    population = len(split.users)
    mechanism = CentralDP(settings.clip_norm, noise_multiplier, min(1.0, settings.devices_per_round / population), population)
    for _ in range(settings.rounds):
        updates = []
        for device in poisson_sample(list(range(population)), mechanism.sample_rate, rng):
            history = split.train_items[device]
            targets = rng.choice(history, size=min(settings.targets, len(history)), replace=False)
            updates.append(adapter.update(history, targets, settings.temperature).ravel())
        current = ArrayRecord({"weights": Array(np.ascontiguousarray(adapter.weights))})
        noisy = aggregate(mechanism, current, [], updates, rng)
        step = flatten(noisy.arrays) - adapter.weights.ravel()
        adapter = adapter.with_weights(adapter.weights + settings.server_lr * step.reshape(adapter.weights.shape))
    return adapter


def evaluate(scores_of, split: LeaveLastOutSplit, users: np.ndarray) -> dict[str, np.ndarray]:
    """Per evaluated user: hit (HR@10), rank percentile and whether its item is cold."""
    cold = set(split.cold_items.tolist())
    hits, percentiles, is_cold = [], [], []
    for user in users.tolist():
        history, target = split.train_items[user], int(split.test_item[user])
        rank = rank_of(scores_of(history), target, history)
        hits.append(metrics_from_rank(rank)["hr@10"])
        percentiles.append(rank_percentile(rank, split.num_items, history, target))
        is_cold.append(target in cold)
    return {"hit": np.asarray(hits), "percentile": np.asarray(percentiles), "cold": np.asarray(is_cold, dtype=bool)}


def _row(population: int, seed: int, method: str, measured: dict[str, np.ndarray], epsilon: float, seconds: float, **extra) -> dict[str, Any]:
    hit, cold = measured["hit"], measured["cold"]
    return {
        "population": population, "seed": seed, "method": method, "user-level-epsilon": epsilon,
        "hr@10": float(hit.mean()), "hr@10-warm": float(hit[~cold].mean()) if (~cold).any() else float("nan"),
        "hr@10-cold": float(hit[cold].mean()) if cold.any() else float("nan"),
        "rank-percentile-cold": float(measured["percentile"][cold].mean()) if cold.any() else float("nan"),
        "evaluated-users": len(hit), "seconds": round(seconds, 1), **extra,
    }


def run_population(
    out: str | Path, populations: tuple[int, ...] = POPULATIONS, seeds: tuple[int, ...] = (0, 1, 2), epsilon: float = 8.0,
    delta: float = 1e-5, evaluate_on: str = "test", settings: TowerSettings = TowerSettings(), evaluated_users: int = 3000,
    data_root: str | Path | None = None, feature_cache: str | None = None, log=print, cohort: int = COHORT,
) -> list[dict[str, Any]]:
    """Every population, seed and method; writes results.csv (rows as they finish), and at the
    end results.md and population.png. Returns the rows."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_root = Path(data_root) if data_root else out / "data"
    full = split_budget(epsilon, delta, list(SHARES))
    half = [std * math.sqrt(2.0) for std in full]  # half the mu^2 budget
    rows: list[dict[str, Any]] = []
    paired: dict[tuple[str, str], dict[int, list[np.ndarray]]] = {}  # (compared, users) -> population -> per seed
    for population in populations:
        started = time.time()
        split, content = population_data(population, data_root, evaluate_on, feature_cache)
        log(f"[population {population}] data, split and content in {time.time() - started:.0f} s: {len(split.users)} devices")
        users = np.sort(np.random.default_rng(0).permutation(len(split.users))[: min(evaluated_users, len(split.users))])
        projection = content_projection(content, settings.components)
        rate = min(1.0, settings.devices_per_round / len(split.users))
        z = tower_noise_multiplier(half, rate, settings.rounds, epsilon, delta)
        for seed in seeds:
            rng = np.random.default_rng([seed, population])
            measured: dict[str, dict[str, np.ndarray]] = {}
            models = {}
            for method, stds in ((STATISTICS, full), (HALF, half)):
                begin = time.time()
                models[method] = release_statistics(split, content, stds, rng)
                measured[method] = evaluate(models[method].scores, split, users)
                rows.append(_row(population, seed, method, measured[method], gaussian_epsilon(stds, delta), time.time() - begin))
            begin = time.time()
            public = ContentAdapter(models[STATISTICS], projection, np.eye(projection.shape[1]), settings.weight)
            measured[WITH_CONTENT] = evaluate(public.scores, split, users)  # the tower before any device trained it
            rows.append(_row(population, seed, WITH_CONTENT, measured[WITH_CONTENT], gaussian_epsilon(full, delta), time.time() - begin))
            untrained = ContentAdapter(models[HALF], projection, np.eye(projection.shape[1]), settings.weight)
            for method, multiplier in ((TOWER, z), (NOISELESS, 0.0)):
                begin = time.time()
                tower = train_tower(untrained, split, settings, multiplier, rng)
                measured[method] = evaluate(tower.scores, split, users)
                spent = releases_and_rounds_epsilon(half, multiplier, rate, settings.rounds, delta) if multiplier else float("inf")
                rows.append(_row(population, seed, method, measured[method], spent, time.time() - begin,
                                 **{"noise-multiplier": multiplier, "sample-rate": rate, "rounds": settings.rounds,
                                    "tower-weights": projection.shape[1] ** 2}))
            begin = time.time()  # last, so the rows above draw from the generator as they always did
            model, spent = secure_statistics(split, content, epsilon, delta, cohort, rng)
            measured[SECURE] = evaluate(model.scores, split, users)
            rows.append(_row(population, seed, SECURE, measured[SECURE], spent, time.time() - begin,
                             **{"secure-groups": math.ceil(len(split.users) / cohort)}))
            for compared in COMPARED:
                difference = measured[TOWER]["hit"] - measured[compared]["hit"]
                for subset, keep in (("all", np.ones(len(difference), dtype=bool)), ("warm", ~measured[TOWER]["cold"])):
                    paired.setdefault((compared, subset), {}).setdefault(population, []).append(difference[keep])
            write_csv(out / "results.csv", rows)
            log(f"[population {population}, seed {seed}] " + ", ".join(f"{r['method']} HR@10 {r['hr@10']:.3f}" for r in rows[-6:]))
    write_summary(out, rows, paired, epsilon, delta, evaluate_on, settings, cohort)
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    names = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)


def difference_interval(differences: list[np.ndarray]) -> tuple[float, float]:
    """Mean per-user difference in hits (tower row minus statistics row, the same users and
    seed) and its 95% half-width, pooled over seeds (normal approximation)."""
    pooled = np.concatenate(differences)
    return float(pooled.mean()), float(1.96 * pooled.std(ddof=1) / math.sqrt(len(pooled))) if len(pooled) > 1 else float("nan")


def crossover(intervals: dict[int, tuple[float, float]]) -> int | None:
    """The smallest population from which on the tower row's lead is above zero at 95%."""
    winning = None
    for population in sorted(intervals, reverse=True):
        mean, half_width = intervals[population]
        if mean - half_width > 0:
            winning = population
        else:
            break
    return winning


def write_summary(out: Path, rows: list[dict[str, Any]], paired: dict[tuple[str, str], dict[int, list[np.ndarray]]], epsilon: float,
                  delta: float, evaluate_on: str, settings: TowerSettings, cohort: int = COHORT) -> None:
    intervals = {key: {p: difference_interval(d) for p, d in by_population.items()} for key, by_population in paired.items()}
    lines = [
        f"# Population study: user-level epsilon {epsilon:g} at delta {delta:g} ({evaluate_on} items)",
        "",
        "Server trusted to add the noise (central), except in the secure row: the default mechanism's arithmetic (devices' "
        f"Skellam shares in secure sums of at most {cohort} devices, summed; no party trusted). "
        "The same generator at every population (500 films, 10% cold). "
        f"Tower: {settings.components}x{settings.components} weights, {settings.rounds} rounds, "
        f"{settings.devices_per_round} devices per round expected, clip {settings.clip_norm:g}, server lr {settings.server_lr:g}, "
        f"temperature {settings.temperature:g}, weight {settings.weight:g}. Mean ± std over seeds "
        f"{', '.join(str(s) for s in sorted({r['seed'] for r in rows}))}.",
        "",
        "| devices | method | user-level epsilon | HR@10 | warm HR@10 | cold HR@10 | cold rank percentile | seconds per seed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for population in sorted({r["population"] for r in rows}):
        for method in METHODS:
            mine = [r for r in rows if r["population"] == population and r["method"] == method]
            if not mine:
                continue
            cells = [np.array([r[key] for r in mine]) for key in ("hr@10", "hr@10-warm", "hr@10-cold", "rank-percentile-cold", "seconds")]
            eps = mine[0]["user-level-epsilon"]
            lines.append(
                f"| {population} | {method} | {'inf' if eps == float('inf') else f'{eps:.2f}'} | "
                + " | ".join(f"{c.mean():.3f} ± {c.std():.3f}" for c in cells[:4]) + f" | {cells[4].mean():.0f} |"
            )
    for subset, who in (("all", "every evaluated user"), ("warm", "users whose item is warm")):
        for compared in COMPARED:
            lines += ["", f"Tower row minus `{compared}`, HR@10 over {who} (same users and seeds), with its 95% interval:", ""]
            lines += [f"- {p} devices: {m:+.4f} ± {h:.4f}" for p, (m, h) in sorted(intervals[(compared, subset)].items())]
        leads = {p: min((intervals[(c, subset)][p] for c in COMPARED), key=lambda mh: mh[0] - mh[1]) for p in intervals[(STATISTICS, subset)]}
        found = crossover(leads)
        lines += ["", f"Crossover over {who} (the tower row ahead of both at 95%, at that population and every larger one run): "
                  + (f"from {found} devices on." if found else "none in the populations run.")]
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _plot(out, rows, intervals, epsilon)


def _plot(out: Path, rows: list[dict[str, Any]], intervals: dict[tuple[str, str], dict[int, tuple[float, float]]], epsilon: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    populations = sorted({r["population"] for r in rows})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, style in zip(METHODS, ("-o", "-.o", "--o", "-s", ":^", "-d")):
        means = [np.mean([r["hr@10"] for r in rows if r["population"] == p and r["method"] == method]) for p in populations]
        stds = [np.std([r["hr@10"] for r in rows if r["population"] == p and r["method"] == method]) for p in populations]
        left.errorbar(populations, means, yerr=stds, fmt=style, label=method, capsize=3, markersize=4)
    left.set(xscale="log", xlabel="devices (users)", ylabel="HR@10 (mean ± std over seeds)", title=f"User-level epsilon {epsilon:g}")
    left.legend(fontsize=8)
    for (compared, subset), style in zip([(c, s) for s in ("all", "warm") for c in COMPARED], ("-s", "-.o", ":s", ":o")):
        means = [intervals[(compared, subset)][p][0] for p in populations]
        widths = [intervals[(compared, subset)][p][1] for p in populations]
        right.errorbar(populations, means, yerr=widths, fmt=style, capsize=3, label=f"minus {compared} ({subset} users)")
    right.axhline(0.0, color="grey", linestyle=":")
    right.set(xscale="log", xlabel="devices (users)", ylabel="HR@10 difference (95% interval)", title=f"{TOWER}, per user")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "population.png", dpi=110)
    plt.close(fig)
