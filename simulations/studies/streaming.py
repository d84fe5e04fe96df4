"""``fedmmrec streaming-study``: the user-level mechanism on a timeline, week by week (prequential).

MovieLens-100K in time order. The model is first released from the interactions before the
start week; then the timeline advances a week at a time. Each week, every user active in it is
first **predicted**: its first interaction of the week is ranked against the catalog as it
stands that week (every film that has appeared by the week's end, the user's history
excluded) from its history before the week, which its device folds into its own vector at once
(:mod:`client.online`); then the week is **trained on**. Films entering the catalog are scored
from their content (the model's content maps) the week they appear. Three ways to follow time,
under the same privacy mode and the same total user-level budget:

- ``frozen``: one release (popularity, co-occurrence) at the start spends the whole budget;
  nothing is released again (devices still update their own vectors as they go);
- ``retrain``: a release from scratch every week over everything so far, each spending an
  equal share, so the cumulative epsilon reaches the budget at the last week;
- ``online``: the same weekly releases, but each week's model is fitted to the running average
  of every release so far (new statistics combined with the old: less noise, some lag).

Every release is the one ``privacy = user`` makes (:mod:`shared.cooccurrence`): each device's
unit-norm statistics of its history, the server's clip to norm 1, Gaussian noise from split
budgets composed exactly in Gaussian DP (the cumulative epsilon is printed per week). The
devices and the server are simulated in one process (the releases' arithmetic, not Flower's
transport: 943 devices x 3 settings x every week would be hours of Flower on 2 cores). The
selection release is not used (``popularity-weight`` fixed at 0.3, no content similarity).
``item_model``, ``ease_lambda`` and ``cold_weight`` are the run config's keys of the same names
(``fedmmrec experiment`` chooses them on validation items): how the releases become the model,
and how far films placed from their content (the week's new films) are pushed into lists.

Per week and mode it counts, besides HR@10 and NDCG@10, how often a new film (one that entered
the catalog that week) reaches a user's top 10 (``new-film-slots``: top-10 positions held by new
films over the week's predicted users; ``lists-with-new-film``: users with at least one) and how
often a new film the user did pick was among them (``new-film-hits`` of ``new-films``).

Writes ``results.csv``, ``results.md`` and ``streaming.png`` (HR@10 over the weeks, and the
cumulative epsilon) to ``--out``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.cooccurrence import fit_model, matrix_from_triangle, triangle_size
from shared.item_content import content_matrix
from shared.data import load_dataset
from shared.features import load_or_compute_features
from shared.metrics import metrics_from_rank, rank_of
from shared.releases import DeviceView, Fit, ModelSettings, planned_releases

WEEK_S = 7 * 24 * 3600
MODES = ("frozen", "retrain", "online")
POPULARITY_SHARE = 0.1
# The releases each week makes: popularity and co-occurrence (no selection vote: popularity
# weight 0.3, no content similarity), from the one list of releases.
STUDY_RELEASES = tuple(planned_releases({"selection-budget-share": 0.0}))


@dataclass
class Timeline:
    users: np.ndarray  # per interaction, time-sorted
    items: np.ndarray
    times: np.ndarray
    start: float  # first prediction week's start
    weeks: int

    def before(self, t: float) -> np.ndarray:
        return self.times < t

    def week(self, k: int) -> tuple[float, float]:
        begin = self.start + k * WEEK_S
        return begin, begin + WEEK_S


def timeline(dataset, warmup_share: float, weeks: int) -> Timeline:
    """Interactions in time order; prediction starts when ``warmup_share`` of them are past."""
    order = np.argsort(dataset.inter_time, kind="stable")
    users, items, times = dataset.inter_user[order], dataset.inter_item[order], dataset.inter_time[order].astype(float)
    start = float(times[int(len(times) * warmup_share)])
    available = int(math.floor((times[-1] - start) / WEEK_S))
    return Timeline(users, items, times, start, min(weeks, available) if weeks else available)


def _histories(line: Timeline, until: float, num_users: int) -> list[np.ndarray]:
    mask = line.before(until)
    out: list[list[int]] = [[] for _ in range(num_users)]
    for u, i in zip(line.users[mask].tolist(), line.items[mask].tolist()):
        out[u].append(i)
    return [np.unique(np.asarray(h, dtype=np.int64)) for h in out]


def _release(histories: list[np.ndarray], num_items: int, noise, first: int, rng, fit: Fit):
    """One popularity + co-occurrence release over the devices' histories, each contribution
    what :data:`shared.releases.RELEASES` has a device send, the noise the mechanism's
    (``noise``: its :class:`~server.mechanisms.releases.StudyNoise`, releases ``first`` and
    ``first + 1`` of its list): (noisy popularity, its std, top items, noisy co-occurrence
    matrix, its std)."""
    popularity_release, cooccurrence_release = STUDY_RELEASES

    def contributions(release, arrays):
        for history in histories:  # every device takes part, an empty history with a zero statistic
            yield release.contribution(DeviceView(history, num_items, -1, arrays, _no_content))

    popularity, popularity_std = noise.release(first, contributions(popularity_release, {}), num_items, rng)
    fit = popularity_release.post_process(fit, popularity, popularity_std)
    top = fit.top_items
    triangle, cooccurrence_std = noise.release(
        first + 1, contributions(cooccurrence_release, cooccurrence_release.request(fit)), cooccurrence_release.dimension(fit), rng
    )
    return popularity, popularity_std, top, matrix_from_triangle(triangle, len(top)), cooccurrence_std


def _no_content() -> np.ndarray:
    raise AssertionError("the popularity and co-occurrence statistics read no catalog content")


def run_streaming(
    data_dir: str | Path, out: str | Path, epsilon: float = 8.0, delta: float = 1e-5, weeks: int = 0,
    warmup_share: float = 0.5, m: int = 600, max_factors: int = 24, seeds: tuple[int, ...] = (0, 1, 2),
    feature_cache: str | None = None, log=print, item_model: str = "factors", ease_lambda: float = 2.0,
    cold_weight: float = 1.0, user_noise: str = "distributed",
) -> list[dict[str, Any]]:
    """Run every mode over the timeline once per seed (the seed draws the noise); write the
    results; return the rows (one per seed, week and mode). ``user_noise``: the registered
    release mechanism whose noise and accounting each release has (``distributed``, the secure
    sum's, the default; ``central``, the server's Gaussian)."""
    from server.mechanisms import mechanism_for
    from shared.config import resolve

    mechanism = mechanism_for(resolve(None, {"privacy": "user", "user-noise": user_noise, "user-epsilon": epsilon, "delta": delta,
                                             "cooccurrence-items": m, "max-factors": max_factors, "selection-budget-share": 0.0}))
    if item_model not in ("factors", "ease"):
        raise ValueError(f"item-model {item_model!r}: choose factors or ease")
    if not (cold_weight >= 0 and ease_lambda > 0):
        raise ValueError("cold-weight must be at least 0 and ease-lambda positive")
    model = {"item_model": item_model, "ease_lambda": ease_lambda, "cold_weight": cold_weight}
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        rows += _run_seed(data_dir, mechanism, weeks, warmup_share, m, max_factors, seed, feature_cache, log, model)
    write_results(Path(out), rows, epsilon, delta, {**model, "mechanism": mechanism.name})
    return rows


def _run_seed(data_dir, mechanism, weeks, warmup_share, m, max_factors, seed, feature_cache, log, model_settings) -> list[dict[str, Any]]:
    dataset = load_dataset(data_dir)
    features = load_or_compute_features(dataset, feature_cache, progress=False)
    content = content_matrix(features.text, features.text_mask, features.image, features.image_mask)
    line = timeline(dataset, warmup_share, weeks)
    n_items, n_users = dataset.num_items, dataset.num_users
    first_seen = np.full(n_items, np.inf)
    np.minimum.at(first_seen, line.items, line.times)
    releases = line.weeks  # one per week for retrain and online: before weeks 0 .. W-1
    dimensions = [n_items, triangle_size(min(m, n_items))]  # the most a week's releases hold
    noise = {
        "frozen": mechanism.study_noise([POPULARITY_SHARE, 1 - POPULARITY_SHARE], dimensions, n_users),
        "weekly": mechanism.study_noise([POPULARITY_SHARE / releases, (1 - POPULARITY_SHARE) / releases] * releases, dimensions * releases, n_users),
    }
    settings = ModelSettings.of(mechanism.config)
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    models: dict[str, Any] = {}
    sums: dict[str, Any] = {}
    for week in range(line.weeks):
        begin, end = line.week(week)
        histories = _histories(line, begin, n_users)
        known = first_seen < begin
        for mode in MODES:
            if mode == "frozen" and week > 0:
                spent = noise["frozen"].epsilon(2)
            else:
                plan, first = (noise["frozen"], 0) if mode == "frozen" else (noise["weekly"], 2 * week)
                popularity, popularity_std, top, matrix, cooccurrence_std = _release(
                    histories, n_items, plan, first, rng, Fit(content, known, settings)
                )
                pair = fit_std = (popularity_std, cooccurrence_std)
                if mode == "online":
                    total = sums.setdefault("online", {"popularity": np.zeros(n_items), "matrix": np.zeros((n_items, n_items)),
                                                       "count": np.zeros((n_items, n_items)), "releases": 0})
                    total["popularity"] += popularity
                    total["matrix"][np.ix_(top, top)] += matrix
                    total["count"][np.ix_(top, top)] += 1
                    total["releases"] += 1
                    covered = total["count"][np.ix_(top, top)]
                    popularity = total["popularity"] / total["releases"]
                    matrix = total["matrix"][np.ix_(top, top)] / np.maximum(covered, 1)
                    fit_std = (pair[0] / math.sqrt(total["releases"]), pair[1] / math.sqrt(max(covered.min(), 1)))
                models[mode], _ = fit_model(
                    popularity, fit_std[0], top, matrix, fit_std[1], content, known, max_factors, 0.3, **model_settings
                )
                spent = plan.epsilon(first + 2)
            rows.append({"seed": seed, "week": week, "mode": mode, "user-level-epsilon": spent,
                         **_predict(models[mode], line, begin, end, histories, first_seen)})
        log(f"[seed {seed}, week {week + 1}/{line.weeks}] " + ", ".join(
            f"{r['mode']} HR@10 {r['hr@10']:.3f} (eps {r['user-level-epsilon']:.2f})" for r in rows[-3:]
        ) + f"; {rows[-1]['users']} users, {rows[-1]['new-films']} picked a new film")
    return rows


def _predict(model, line: Timeline, begin: float, end: float, histories: list[np.ndarray], first_seen: np.ndarray) -> dict[str, Any]:
    """HR@10 and NDCG@10 of each active user's first interaction of the week."""
    in_week = (line.times >= begin) & (line.times < end)
    targets: dict[int, int] = {}
    for u, i in zip(line.users[in_week].tolist(), line.items[in_week].tolist()):
        targets.setdefault(u, i)
    unavailable = first_seen >= end  # not in the catalog yet
    entered = first_seen >= begin  # new this week (and, below, available by its end)
    hits, ndcgs, new_hits, new, slots, lists = [], [], [], 0, 0, 0
    for u, target in targets.items():
        history = histories[u]
        if target in set(history.tolist()):
            continue  # a re-rating, not a next item
        scores = model.scores(history)
        scores[unavailable] = -np.inf
        metrics = metrics_from_rank(rank_of(scores, target, history))
        listed = scores.copy()
        listed[history] = -np.inf
        top10 = np.argpartition(-listed, 10)[:10]
        listed_new = int(np.count_nonzero(entered[top10] & np.isfinite(listed[top10])))
        slots += listed_new
        lists += listed_new > 0
        hits.append(metrics["hr@10"])
        ndcgs.append(metrics["ndcg@10"])
        if first_seen[target] >= begin:  # a film that entered the catalog this week
            new += 1
            new_hits.append(metrics["hr@10"])
    return {
        "users": len(hits),
        "hr@10": float(np.mean(hits)) if hits else float("nan"),
        "ndcg@10": float(np.mean(ndcgs)) if ndcgs else float("nan"),
        "new-films": new,
        "hr@10-new-films": float(np.mean(new_hits)) if new_hits else float("nan"),
        "new-film-hits": int(sum(new_hits)),
        "new-film-slots": slots,
        "lists-with-new-film": lists,
    }


def write_results(out: Path, rows: list[dict[str, Any]], epsilon: float, delta: float, model: dict[str, Any] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"# Streaming study: user-level DP, total epsilon {epsilon:g} at delta {delta:g}",
        "",
        "Model: " + (", ".join(f"{k.replace('_', '-')} {v}" for k, v in model.items()) if model else "the defaults") + ".",
        "",
        f"Seeds {', '.join(str(x) for x in sorted({r['seed'] for r in rows}))}; figures are the mean over seeds "
        "(± their std) of each seed's mean over predictions (every active user, every week).",
        "",
        "| mode | weeks | predictions per seed | HR@10 | NDCG@10 | HR@10 on new films (n) | new films in top-10 lists, per seed (lists with one) | new-film hits per seed | epsilon after week 1 | epsilon at the end |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mode in MODES:
        per_seed = []
        for seed in sorted({r["seed"] for r in rows}):
            mine = [r for r in rows if r["mode"] == mode and r["seed"] == seed]
            weights = np.array([r["users"] for r in mine], dtype=float)
            new = [(r["hr@10-new-films"], r["new-films"]) for r in mine if r["new-films"]]
            per_seed.append((
                np.average([r["hr@10"] for r in mine], weights=weights),
                np.average([r["ndcg@10"] for r in mine], weights=weights),
                sum(h * n for h, n in new) / sum(n for _, n in new) if new else float("nan"),
                sum(n for _, n in new), int(weights.sum()), len(mine), mine[0]["user-level-epsilon"], mine[-1]["user-level-epsilon"],
                sum(int(r["new-film-slots"]) for r in mine), sum(int(r["lists-with-new-film"]) for r in mine),
                sum(int(r["new-film-hits"]) for r in mine),
            ))
        hr, ndcg, new_hr = (np.array([p[j] for p in per_seed]) for j in range(3))
        first = per_seed[0]
        lines.append(
            f"| {mode} | {first[5]} | {first[4]} | {hr.mean():.3f} ± {hr.std():.3f} | {ndcg.mean():.3f} ± {ndcg.std():.3f} | "
            f"{new_hr.mean():.3f} ({first[3]}) | {', '.join(str(p[8]) for p in per_seed)} ({', '.join(str(p[9]) for p in per_seed)}) | "
            f"{', '.join(str(p[10]) for p in per_seed)} | {first[6]:.2f} | {first[7]:.2f} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _plot(out, rows, epsilon)


def _plot(out: Path, rows: list[dict[str, Any]], epsilon: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for mode, style in zip(MODES, ("-o", "-s", "-^")):
        weeks = sorted({r["week"] for r in rows if r["mode"] == mode})
        hr = [np.mean([r["hr@10"] for r in rows if r["mode"] == mode and r["week"] == w]) for w in weeks]
        eps = [rows[[r["mode"] == mode and r["week"] == w for r in rows].index(True)]["user-level-epsilon"] for w in weeks]
        top.plot([w + 1 for w in weeks], hr, style, label=mode, markersize=4)
        bottom.plot([w + 1 for w in weeks], eps, style, label=mode, markersize=4)
    top.set(ylabel="HR@10 (mean over seeds)", title="Predict each week's next items, then train on the week")
    top.legend(loc="best")
    bottom.axhline(epsilon, color="grey", linestyle=":", linewidth=1)
    bottom.annotate(f"budget {epsilon:g}", (1, epsilon), textcoords="offset points", xytext=(2, -12), fontsize=8, color="grey")
    bottom.set(xlabel="week", ylabel="cumulative user-level epsilon")
    fig.tight_layout()
    fig.savefig(out / "streaming.png", dpi=110)
    plt.close(fig)
