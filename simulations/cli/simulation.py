"""Commands that run the federation or its baselines: ``run``, ``train-pooled``, ``baseline``,
``features``."""

from __future__ import annotations

import argparse
import json
import sys

from simulations.cli.command import Command, add_set, overrides


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    add_set(parser)
    parser.add_argument("--verbose", action="store_true", help="show Flower's own log")
    parser.add_argument("--faults", default="", metavar="SPEC",
                        help='simulation only: partitions that misbehave, e.g. "nan:0 flip:1,2 crash:3 slow:4" (docs/faults.md); '
                             "runs on the ray engine")
    parser.add_argument("--engine", choices=["superlink", "ray", "in-process"], default=None,
                        help="superlink (default): flwr run against a SuperLink of its own, stopped after; "
                             "ray: flwr.simulation.run_simulation (deprecated in Flower 1.41; the default with --faults); "
                             "in-process: the devices called one after another in this process")


def run(args: argparse.Namespace) -> int:
    from shared.secure_sum.server import SecureAggregationAborted
    from simulations.engines.simulate import simulate

    engine = args.engine or ("ray" if args.faults else "superlink")
    try:
        simulate(overrides(args.set), quiet=not args.verbose, faults=args.faults, engine=engine)
    except KeyboardInterrupt:
        print("fedmmrec: interrupted; the run and every process it started are stopped (a run of rounds "
              "continues with --set resume=RUN_DIR; a run of releases starts anew, on what is left of each device's budget)",
              file=sys.stderr)
        return 130
    except SecureAggregationAborted as exc:  # the in-process engine; Flower's engines end without a summary
        print(f"fedmmrec: {exc} (the ledger records it; the devices' refusals are in the log above)", file=sys.stderr)
        return 1
    return 0


def _pooled_arguments(parser: argparse.ArgumentParser) -> None:
    add_set(parser)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.005)


def train_pooled(args: argparse.Namespace) -> int:
    from simulations.studies.pooled import train_pooled as pooled

    pooled(overrides(args.set), epochs=args.epochs, lr=args.lr)
    return 0


def train_central(args: argparse.Namespace) -> int:
    print("fedmmrec: train-central is now train-pooled (central means central DP); running train-pooled", file=sys.stderr)
    return train_pooled(args)


def _baseline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=["most-popular"])
    add_set(parser)


def baseline(args: argparse.Namespace) -> int:
    from shared.baselines import most_popular
    from shared.config import resolve
    from shared.data import load_dataset, split_for
    from shared.data.prepare import resolve_data_dir

    config = resolve(None, overrides(args.set))
    print(json.dumps(most_popular(split_for(load_dataset(resolve_data_dir(config)), config)), indent=2))
    return 0


def features(args: argparse.Namespace) -> int:
    from shared.config import resolve
    from shared.data import load_dataset
    from shared.data.prepare import resolve_data_dir
    from shared.features import load_or_compute_features

    config = resolve(None, overrides(args.set))
    cached = load_or_compute_features(load_dataset(resolve_data_dir(config)), config.data.feature_cache or None)
    print(f"fedmmrec: features for {cached.num_items} items cached")
    return 0


COMMANDS = (
    Command("run", "run the federated simulation (the main job)", _run_arguments, run),
    Command("train-pooled", "train the same model on all users' data pooled, without DP (baseline)", _pooled_arguments, train_pooled),
    Command("train-central", "old name of train-pooled (deprecated)", _pooled_arguments, train_central),
    Command("baseline", "non-learned baselines", _baseline_arguments, baseline),
    Command("features", "precompute the frozen backbones' item features", add_set, features),
)
