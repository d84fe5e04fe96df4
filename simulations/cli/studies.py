"""Commands that run studies over the product: ``experiment``, ``streaming-study``,
``population-study``, ``promotion-study``, ``bench``."""

from __future__ import annotations

import argparse
import os

from simulations.cli.command import Command, overrides


def _experiment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="run config key for every setting, over the grid's base (e.g. data-dir=DIR)")


def experiment(args: argparse.Namespace) -> int:
    from simulations.studies.experiment import run_experiment

    run_experiment(args.config, base=overrides(args.set))
    return 0


def _streaming_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="", help="dataset folder (default: $FEDMMREC_MOVIELENS or ../shared/data/movielens-100k-mm)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--epsilon", type=float, default=8.0, help="total user-level epsilon over the whole timeline")
    parser.add_argument("--weeks", type=int, default=0, help="weeks to advance (0: to the end of the data)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--feature-cache", default="")
    parser.add_argument("--item-model", default="factors", choices=("factors", "ease"), help="what the releases become (run config item-model)")
    parser.add_argument("--ease-lambda", type=float, default=2.0, help="item-model ease: the ridge penalty (run config ease-lambda)")
    parser.add_argument("--cold-weight", type=float, default=1.0, help="multiplier on new films' content-placed term (run config cold-weight)")
    parser.add_argument("--user-noise", default="distributed", choices=("distributed", "central"),
                        help="whose noise each release has, as the run config's user-noise: the secure sum's (devices' Skellam shares, "
                             "the default) or the server's Gaussian")


def streaming_study(args: argparse.Namespace) -> int:
    from simulations.studies.streaming import run_streaming

    data = args.data or os.environ.get("FEDMMREC_MOVIELENS", "../shared/data/movielens-100k-mm")
    seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    run_streaming(
        data, args.out, epsilon=args.epsilon, weeks=args.weeks, seeds=seeds, feature_cache=args.feature_cache or None,
        item_model=args.item_model, ease_lambda=args.ease_lambda, cold_weight=args.cold_weight, user_noise=args.user_noise,
    )
    print(f"fedmmrec: wrote {args.out}/results.csv, results.md, streaming.png")
    return 0


def _population_arguments(parser: argparse.ArgumentParser) -> None:
    from shared.content_adapter import TowerSettings

    parser.add_argument("--out", required=True)
    parser.add_argument("--populations", default="250,1000,5000,20000,50000", help="devices (synthetic users), comma-separated")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epsilon", type=float, default=8.0, help="user-level epsilon of every private row (delta 1e-5)")
    parser.add_argument("--evaluate-on", default="test", choices=("test", "validation"), help="validation: choose the tower's settings")
    parser.add_argument("--evaluated-users", type=int, default=3000, help="users ranked per population (the same for every row)")
    parser.add_argument("--cohort", type=int, default=10_000, help="the secure row: most devices in one secure sum (larger populations are cut into cohorts, summed)")
    parser.add_argument("--data-root", default="", help="where the generated datasets go (default: OUT/data)")
    parser.add_argument("--feature-cache", default="")
    parser.add_argument("--rounds", type=int, default=TowerSettings.rounds, help="DP-FedAvg rounds of the tower")
    parser.add_argument("--devices-per-round", type=int, default=TowerSettings.devices_per_round, help="expected devices per round")
    parser.add_argument("--server-lr", type=float, default=TowerSettings.server_lr)
    parser.add_argument("--tower-weight", type=float, default=TowerSettings.weight, help="the tower term's weight in the score")


def population_study(args: argparse.Namespace) -> int:
    from shared.content_adapter import TowerSettings
    from simulations.studies.population import run_population

    try:
        populations = tuple(int(p) for p in args.populations.split(",") if p.strip())
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError:
        raise SystemExit("fedmmrec: --populations and --seeds take comma-separated integers")
    if not populations or min(populations) < 10 or args.rounds < 1 or args.devices_per_round < 1 or args.evaluated_users < 1 or args.cohort < 10:
        raise SystemExit("fedmmrec: populations of at least 10 devices, a --cohort of at least 10, and positive --rounds, "
                         "--devices-per-round, --evaluated-users")
    settings = TowerSettings(rounds=args.rounds, devices_per_round=args.devices_per_round, server_lr=args.server_lr, weight=args.tower_weight)
    run_population(
        args.out, populations, seeds, epsilon=args.epsilon, evaluate_on=args.evaluate_on, settings=settings,
        evaluated_users=args.evaluated_users, data_root=args.data_root or None, feature_cache=args.feature_cache or None,
        cohort=args.cohort,
    )
    print(f"fedmmrec: wrote {args.out}/results.csv, results.md, population.png")
    return 0


def _promotion_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", default="", help="dataset folder (default: $FEDMMREC_MOVIELENS or ../shared/data/movielens-100k-mm)")
    parser.add_argument("--groups", default="1,3,5", help="secure sums per release, combined by their median (1: today's one sum)")
    parser.add_argument("--attackers", default="0,1,9", help="devices that mask a crafted input instead of their statistic")
    parser.add_argument("--seeds", default="0,1,2", help="each seed draws the split's held-out films and the noise")
    parser.add_argument("--epsilon", type=float, default=8.0, help="user-level epsilon (delta 1e-5)")
    parser.add_argument("--evaluated-users", type=int, default=0, help="users ranked per row, the same for every row of a seed (0: all)")
    parser.add_argument("--feature-cache", default="")


def promotion_study(args: argparse.Namespace) -> int:
    from simulations.studies.promotion import run_promotion

    data = args.data or os.environ.get("FEDMMREC_MOVIELENS", "../shared/data/movielens-100k-mm")
    try:
        groups, attackers, seeds = ([int(v) for v in text.split(",") if v.strip()] for text in (args.groups, args.attackers, args.seeds))
    except ValueError:
        raise SystemExit("fedmmrec: --groups, --attackers and --seeds take comma-separated integers")
    if not groups or not seeds or min(groups) < 1 or min(attackers, default=0) < 0 or any(g % 2 == 0 for g in groups) or args.evaluated_users < 0:
        raise SystemExit("fedmmrec: --groups takes odd numbers of at least 1 (a median), --attackers and --evaluated-users numbers of at least 0")
    try:
        run_promotion(data, args.out, groups, attackers, seeds, feature_cache=args.feature_cache or None, epsilon=args.epsilon,
                      evaluated=args.evaluated_users)
    except ValueError as exc:
        raise SystemExit(f"fedmmrec: {exc}")
    print(f"fedmmrec: wrote {args.out}/results.csv, results.md")
    return 0


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="bench.json")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", default="", help="comma-separated: quality,communication,features,dp,clients,scale,movielens,online,secure; "
                        "secure-scale (the secure default from 100 to 3,000 devices and one device up to 10^5: tens of minutes) runs only when named")


def bench(args: argparse.Namespace) -> int:
    from simulations.bench.overheads import run_bench

    run_bench(args.out, args.repeats, tuple(p for p in args.parts.split(",") if p))
    return 0


COMMANDS = (
    Command("experiment", "run (or resume) a grid of settings x seeds", _experiment_arguments, experiment),
    Command("streaming-study", "the user-level mechanism week by week on a timeline: frozen, retrain, online", _streaming_arguments, streaming_study),
    Command("population-study", "the statistics against a DP-FedAvg-trained tower at growing populations", _population_arguments, population_study),
    Command("promotion-study", "devices that lie about their input against one secure sum and the median of group sums", _promotion_arguments, promotion_study),
    Command("bench", "measure our overheads side by side with their floors (minutes)", _bench_arguments, bench),
)
