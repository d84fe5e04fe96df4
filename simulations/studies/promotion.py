"""``fedmmrec promotion-study``: how far can devices that lie about their input push a film nobody
watched into everyone's top 10, under the default secure sum, and what does bounding them cost?

The default mechanism (``privacy = user``, ``user-noise = distributed``) on a dataset (MovieLens-100K
by default), its three releases with the secure sum's arithmetic, in one process: each honest
device's statistic clipped to norm 1, scaled and rounded at random within the plan's bound
(:func:`shared.secure_sum.session.rounded_sparse`), the honest devices' Skellam shares (drawn as their sum: a sum of Skellam
variables is Skellam of the summed variance), all summed in Z_{2^32} as the unmasked sum is (the
masks cancel and are left out). The attackers are ``attackers`` devices drawn at random before
anything else; in the popularity release they mask, instead of their statistic, a vector that is
zero but for the target film (the known film with the fewest training interactions: on
MovieLens-100K one nobody in training watched), and in the selection release one that is zero but
for the candidate weighting that favours popularity most (weight 1, no content). Together they put
in as much as the server's plausibility check lets through (:mod:`shared.secure_sum.plausible`,
computed on the honest sum, which the study knows and a real attacker only estimates: the
strongest attack that is not aborted). In the co-occurrence release they send their honest
statistic.

Aggregations (``--groups``; :mod:`shared.secure_sum.groups`):

- ``G = 1``: today's default, one secure sum over every device, its plan the run's;
- ``G > 1``: the devices in a seeded random order cut into ``G`` groups, each its own secure sum
  planned for its own size (its noise alone gives the user-level guarantee; it tolerates the
  colluders some group may hold, :func:`shared.secure_sum.groups.group_colluders`), released as
  ``G`` times the median of the group sums (``trim = (G - 1) / 2``). While at most ``trim``
  groups hold an attacker, each coordinate stays within the honest groups' own spread.

Per row: the share of (evaluated) users whose top 10, the catalog outside their history, holds
the film; the film's rank in the popularity release; the candidate the selection release chose;
HR@10 over the whole catalog and the README's sampled HR@10 (99 negatives) under the run's
protocol (10% of the films held out of training; each seed draws both that split and the
noise). No setting was tuned: the mechanism's settings are the defaults, chosen earlier on
validation items.

The study draws its noise, rounding, attackers and groups from generators seeded by the row, so
its rows reproduce; the Flower path draws a device's noise from OS entropy, as a deployment must.

Writes ``results.csv`` and ``results.md`` to ``--out``; a row already in ``results.csv`` is not
run again, so an interrupted study resumes.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import parse_modalities, resolve
from shared.cooccurrence import CANDIDATES
from shared.data import load_dataset
from shared.data.split import split_for
from shared.features import load_or_compute_features
from shared.item_content import content_matrix
from shared.metrics import user_metrics
from shared.releases import DeviceView, Fit, ModelSettings, group_plan, planned_releases
from shared.secure_sum.groups import split_into_groups, trimmed_total, trimmed_total_std
from shared.secure_sum.plan import SecurePlan
from shared.secure_sum.plausible import noise_window, window_tail
from shared.secure_sum.quantise import from_field, to_field
from shared.secure_sum.session import rounded_sparse
from shared.secure_sum.skellam import skellam_noise

PUSHED_CANDIDATE = CANDIDATES.index((1.0, 0.0))
FIELD_TOP = 2**31 - 1  # the largest value the unmasked sum reads back as itself  # the weighting that favours popularity most
FIELDS = (
    "groups", "trim", "neighbours", "attackers", "seed", "users", "evaluated-users", "film", "film-training-users", "lists-with-film", "film-popularity-rank",
    "selected-candidate", "aborted", "hr@10-sampled", "ndcg@10-sampled", "hr@10", "user-level-epsilon",
)


@dataclass(frozen=True)
class Row:
    groups: int
    attackers: int
    seed: int

    @property
    def trim(self) -> int:
        return (self.groups - 1) // 2

    def key(self) -> tuple[str, str, str]:
        return (str(self.groups), str(self.attackers), str(self.seed))


def group_plans(config, sizes: list[int], dimensions: list[int]) -> list[SecurePlan]:
    """One plan per group, for its own size: the protocol's own
    (:func:`shared.releases.group_plan`, what a run with ``secure-groups`` plans), so the study
    measures the design a run would use."""
    grouped = config.replace(secure_groups=len(sizes))
    return [group_plan(grouped, sum(sizes), size, dimensions) for size in sizes]


def plausible_most(plan: SecurePlan, index: int, contributions: int) -> float:
    """The largest unmasked-sum norm (integers) the server lets through for release ``index`` of
    ``plan`` over ``contributions`` inputs: its plausibility check's line
    (:meth:`shared.secure_sum.server.SecureAggregation._check_plausible`)."""
    planned = plan.releases[index]
    variance = contributions * planned.share_variance
    return noise_window(variance, contributions, planned.bound, planned.dimension, window_tail(len(plan.releases)))[1]


def _window_headroom(honest: np.ndarray, most: float, coordinate: int) -> float:
    """The largest integer added to ``coordinate`` of ``honest`` that keeps the sum's norm at
    most ``most`` (0 if none fits)."""
    rest = float(np.dot(honest, honest)) - float(honest[coordinate]) ** 2
    if rest >= most**2:
        return 0.0
    amount = max(0.0, math.floor(math.sqrt(most**2 - rest) - float(honest[coordinate])))
    while amount > 0 and rest + (float(honest[coordinate]) + amount) ** 2 > most**2:
        amount -= 1.0  # the square root's rounding
    # The unmasked sum is read back as a signed 32-bit integer: past 2^31 - 1 the push would
    # wrap to a large negative value, so an attacker stops there.
    return float(min(amount, max(0.0, FIELD_TOP - float(honest[coordinate]))))


class PromotionStudy:
    """One dataset's split per seed, its honest devices, and the rows of the study over it."""

    def __init__(self, data: str, feature_cache: str | None, epsilon: float, evaluated: int = 0) -> None:
        self.data, self.epsilon, self.evaluated = data, epsilon, evaluated
        self.dataset = load_dataset(data)  # once: the splits and the features' loader both read it
        features = load_or_compute_features(self.dataset, feature_cache, progress=False)
        self.config = resolve(None, {"data-dir": data, "cold-start-items": 0.1, "user-epsilon": epsilon})
        self.content = content_matrix(
            features.text, features.text_mask, features.image, features.image_mask, parse_modalities(self.config.model.modalities)
        )

    def run(self, row: Row) -> dict[str, Any]:
        config = resolve(None, {"data-dir": self.data, "cold-start-items": 0.1, "user-epsilon": self.epsilon, "seed": row.seed})
        split = split_for(self.dataset, config.flat())
        n, rng = len(split.users), np.random.default_rng([row.seed, row.groups, row.attackers, 2026])
        known = np.ones(self.dataset.num_items, dtype=bool)
        known[split.held_out_items] = False
        counts = np.bincount(np.concatenate(split.train_items), minlength=self.dataset.num_items)
        film = int(np.flatnonzero(known)[np.argmin(counts[known])])
        attackers = set(rng.permutation(n)[: row.attackers].tolist())
        groups = split_into_groups(rng.permutation(n).tolist(), row.groups)
        fit = Fit(self.content, known, ModelSettings.of(config.flat()))
        releases = planned_releases(config)
        dimensions = [r.dimension(fit) for r in releases]
        plans = group_plans(config, [len(g) for g in groups], dimensions)
        aborted = 0
        for index, release in enumerate(releases):
            arrays = release.request(fit)
            target = {"popularity": film, "selection": PUSHED_CANDIDATE}.get(release.name)
            sums = []
            for plan, members in zip(plans, groups):
                planned = plan.releases[index]
                liars = [u for u in members if u in attackers and target is not None]
                honest = [u for u in members if u not in liars]
                total = np.zeros(planned.dimension, dtype=np.int64)
                for u in honest:  # streamed: a release's contributions are never all held at once
                    view = DeviceView(split.train_items[u], len(known), int(split.validation_item[u]), arrays, lambda: self.content)
                    where, values = rounded_sparse(release.contribution(view), planned, rng)
                    total[where] += values
                # The honest devices' Skellam shares, drawn as their sum (a sum of Skellam
                # variables is Skellam of the summed variance), and the field's arithmetic.
                total = from_field(to_field(total + skellam_noise(rng, planned.dimension, len(honest) * planned.share_variance)))
                most = plausible_most(plan, index, len(members))
                if liars:
                    total[target] += int(_window_headroom(total.astype(np.float64), most, target))
                if float(np.linalg.norm(total.astype(np.float64))) > most:
                    aborted += 1
                sums.append(total / planned.scale)
            group_std = max(p.releases[index].noise_std_of_sum(len(g)) for p, g in zip(plans, groups))  # sizes differ by one at most
            noise_std = group_std * trimmed_total_std(row.groups, row.trim)
            fit = release.post_process(fit, trimmed_total(np.asarray(sums), row.trim), noise_std)
        model = fit.model
        in_lists, per_user = 0, []
        ranked_users = np.random.default_rng([row.seed, 7]).permutation(n)[: self.evaluated] if 0 < self.evaluated < n else range(n)
        for u in ranked_users:
            scores = model.scores(split.train_items[u], self.content)
            ranked = scores.copy()
            ranked[split.train_items[u]] = -np.inf
            in_lists += int(film in np.argpartition(-ranked, 10)[:10])
            per_user.append(user_metrics(scores, int(split.test_item[u]), split.train_items[u], u, split.cold_items))
        popularity = fit.noisy["popularity"]
        return {
            "groups": row.groups, "trim": row.trim, "neighbours": max(p.neighbours for p in plans), "attackers": row.attackers, "seed": row.seed, "users": n, "film": film,
            "film-training-users": int(counts[film]), "evaluated-users": len(per_user), "lists-with-film": in_lists / len(per_user),
            "film-popularity-rank": int(np.count_nonzero(popularity[known] > popularity[film])) + 1,
            "selected-candidate": "popularity {:g}, content {:g}".format(model.popularity_weight, model.content_weight),
            "aborted": aborted,
            "hr@10-sampled": float(np.mean([m["hr@10-sampled"] for m in per_user])),
            "ndcg@10-sampled": float(np.mean([m["ndcg@10-sampled"] for m in per_user])),
            "hr@10": float(np.mean([m["hr@10"] for m in per_user])),
            # each group's sum alone (parallel composition: a user is in one group), at its planned minimum
            "user-level-epsilon": max(p.epsilon([p.honest_minimum * r.share_variance for r in p.releases]) for p in plans)
            if math.isfinite(self.epsilon) else float("inf"),
        }


def _read(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def summarise(rows: list[dict[str, str]]) -> str:
    """``results.md``: per (groups, attackers), mean and spread over seeds."""
    def cell(values: list[float], digits: int = 3) -> str:
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"

    keys = sorted({(int(r["groups"]), int(r["attackers"])) for r in rows})
    lines = [
        "| groups (median of) | attackers | seeds | lists with the film | film's popularity rank | selected weighting | "
        "releases aborted | hr@10-sampled | ndcg@10-sampled | hr@10 | user-level epsilon |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for groups, attackers in keys:
        mine = [r for r in rows if (int(r["groups"]), int(r["attackers"])) == (groups, attackers)]
        lines.append(
            f"| {groups} | {attackers} | {len(mine)} | {cell([float(r['lists-with-film']) for r in mine])} | "
            f"{', '.join(r['film-popularity-rank'] for r in mine)} | {'; '.join(sorted(set(r['selected-candidate'] for r in mine)))} | "
            f"{sum(int(r['aborted']) for r in mine)} | {cell([float(r['hr@10-sampled']) for r in mine])} | "
            f"{cell([float(r['ndcg@10-sampled']) for r in mine])} | {cell([float(r['hr@10']) for r in mine])} | {max(float(r['user-level-epsilon']) for r in mine):.2f} |"
        )
    return "\n".join(lines) + "\n"


def run_promotion(data: str, out: str, groups: list[int], attackers: list[int], seeds: list[int],
                  feature_cache: str | None = None, epsilon: float = 8.0, evaluated: int = 0, log=print) -> Path:
    """Every (groups, attackers, seed) row not yet in ``out/results.csv``; returns the folder."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "results.csv"
    settings = {"data": str(Path(data).resolve()), "epsilon": epsilon, "evaluated-users": evaluated}
    recorded = folder / "study.json"
    if recorded.exists() and json.loads(recorded.read_text(encoding="utf-8")) != settings:
        raise ValueError(f"{recorded}: its rows were made with {recorded.read_text(encoding='utf-8').strip()}, not {settings}: "
                         "use another --out")
    recorded.write_text(json.dumps(settings) + "\n", encoding="utf-8")
    done = {(r["groups"], r["attackers"], r["seed"]) for r in _read(table)}
    study = PromotionStudy(data, feature_cache, epsilon, evaluated)
    for g in groups:
        for a in attackers:
            for seed in seeds:
                row = Row(g, a, seed)
                if row.key() in done:
                    continue
                result = study.run(row)
                new = not table.exists()
                with table.open("a", newline="", encoding="utf-8") as f:
                    writer = csv.DictWriter(f, fieldnames=FIELDS)
                    if new:
                        writer.writeheader()
                    writer.writerow(result)
                log(f"[promotion] groups {g}, {a} attackers, seed {seed}: film in {result['lists-with-film']:.1%} of lists, "
                    f"HR@10 sampled {result['hr@10-sampled']:.3f}")
    (folder / "results.md").write_text(summarise(_read(table)), encoding="utf-8")
    plot(_read(table), folder / "promotion.png")
    return folder


def plot(rows: list[dict[str, str]], path: Path) -> None:
    """``promotion.png``: per number of attackers, the share of lists holding the film and the
    sampled HR@10 against the number of groups (mean over seeds, bars: the seeds' range)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (reach, quality) = plt.subplots(1, 2, figsize=(10, 4))
    for attackers in sorted({int(r["attackers"]) for r in rows}):
        mine = [r for r in rows if int(r["attackers"]) == attackers]
        groups = sorted({int(r["groups"]) for r in mine})
        for axis, key in ((reach, "lists-with-film"), (quality, "hr@10-sampled")):
            values = [[float(r[key]) for r in mine if int(r["groups"]) == g] for g in groups]
            means = [statistics.mean(v) for v in values]
            spread = [[m - min(v) for m, v in zip(means, values)], [max(v) - m for m, v in zip(means, values)]]
            axis.errorbar([str(g) for g in groups], means, yerr=spread, marker="o", capsize=3, label=f"{attackers} attackers")
    reach.set(xlabel="secure sums (median of)", ylabel="users' top-10 lists with the film", title="reach of the pushed film")
    quality.set(xlabel="secure sums (median of)", ylabel="HR@10, sampled", title="what the median costs")
    reach.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
