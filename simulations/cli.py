"""The ``fedmmrec`` command line.

    fedmmrec run [--set KEY=VALUE ...]        federated DP simulation (one client per user)
    fedmmrec train-central [--set KEY=VALUE]  the same model, central and not private
    fedmmrec baseline most-popular [--set ...]
    fedmmrec data synth --out DIR [--users N --items M --seed S]
    fedmmrec features [--set data-dir=DIR]    precompute the backbone feature cache
    fedmmrec audit RUN_DIR                    check the run's privacy ledger; exit 0 pass, 1 fail
    fedmmrec bench [--out bench.json]         overheads side by side with their floors
    fedmmrec experiment CONFIG.toml           a grid of settings x seeds; results table and plots
    fedmmrec export RUN_DIR --out DIR         TorchScript item tower + item embeddings for devices
    fedmmrec recommend --model DIR --history ID[,ID...] [--k 10] [--user-state FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from shared.data import DatasetError


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"fedmmrec: --set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a run config key (see the README's table), repeatable",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedmmrec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the federated simulation (the main job)")
    _add_set(run)
    run.add_argument("--verbose", action="store_true", help="show Flower's own log")

    central = sub.add_parser("train-central", help="train the same model centrally, without DP")
    _add_set(central)
    central.add_argument("--epochs", type=int, default=10)
    central.add_argument("--lr", type=float, default=0.005)

    baseline = sub.add_parser("baseline", help="non-learned baselines")
    baseline.add_argument("name", choices=["most-popular"])
    _add_set(baseline)

    data = sub.add_parser("data", help="datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth", help="generate the synthetic multimodal dataset")
    synth.add_argument("--out", required=True)
    synth.add_argument("--users", type=int, default=100)
    synth.add_argument("--items", type=int, default=500)
    synth.add_argument("--seed", type=int, default=0)
    check = data_sub.add_parser("check", help="validate a dataset folder")
    check.add_argument("path")

    audit = sub.add_parser("audit", help="audit a run's privacy ledger (exit 0 pass, 1 fail)")
    audit.add_argument("run_dir")

    bench = sub.add_parser("bench", help="measure our overheads side by side with their floors (minutes)")
    bench.add_argument("--out", default="bench.json")
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--parts", default="", help="comma-separated: quality,communication,features,dp,clients,scale")

    experiment = sub.add_parser("experiment", help="run (or resume) a grid of settings x seeds")
    experiment.add_argument("config")

    export = sub.add_parser("export", help="write what a device needs to rank items (TorchScript + embeddings)")
    export.add_argument("run_dir")
    export.add_argument("--out", required=True)

    rec = sub.add_parser("recommend", help="rank the catalog from an export, with numpy only")
    rec.add_argument("--model", required=True, help="folder written by fedmmrec export")
    rec.add_argument("--history", default="", help="comma-separated item ids the user interacted with")
    rec.add_argument("--k", type=int, default=10)
    rec.add_argument("--user-state", default=None, help="the device's device-state.json (its trained embedding)")

    features = sub.add_parser("features", help="precompute the frozen backbones' item features")
    _add_set(features)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (DatasetError, ValueError, FileExistsError) as exc:
        print(f"fedmmrec: error: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from simulations.simulate import simulate

        simulate(_overrides(args.set), quiet=not args.verbose)
        return 0
    if args.command == "train-central":
        from simulations.central import train_central

        train_central(_overrides(args.set), epochs=args.epochs, lr=args.lr)
        return 0
    if args.command == "baseline":
        from shared.baselines import most_popular
        from shared.config import resolve
        from shared.data import leave_last_out, load_dataset
        from shared.data.prepare import resolve_data_dir

        config = resolve(None, _overrides(args.set))
        print(json.dumps(most_popular(leave_last_out(load_dataset(resolve_data_dir(config)))), indent=2))
        return 0
    if args.command == "data" and args.data_command == "synth":
        from shared.data.synth import SynthConfig, generate

        out = generate(args.out, SynthConfig(users=args.users, items=args.items, seed=args.seed))
        print(f"fedmmrec: wrote {out}")
        return 0
    if args.command == "data" and args.data_command == "check":
        from shared.data import leave_last_out, load_dataset

        dataset = load_dataset(args.path)
        split = leave_last_out(dataset)
        print(
            f"fedmmrec: {args.path}: {dataset.num_items} items, {dataset.num_users} users, "
            f"{dataset.num_interactions} interactions; {len(split.users)} users evaluable, "
            f"{len(split.cold_items)} cold items; "
            f"{sum(1 for d in dataset.descriptions if not d)} without description, "
            f"{sum(1 for p in dataset.image_paths if p is None)} without image"
        )
        return 0
    if args.command == "audit":
        from server.audit import run_audit

        return run_audit(args.run_dir)
    if args.command == "experiment":
        from simulations.experiment import run_experiment

        run_experiment(args.config)
        return 0
    if args.command == "export":
        from server.export import export_run

        print(f"fedmmrec: wrote {export_run(args.run_dir, args.out)}")
        return 0
    if args.command == "recommend":
        from client.recommend import recommend

        history = [item.strip() for item in args.history.split(",") if item.strip()]
        for rank, (item, score) in enumerate(recommend(args.model, history, args.k, args.user_state), start=1):
            print(f"{rank:3d}  {item}  {score:.4f}")
        return 0
    if args.command == "bench":
        from simulations.bench import run_bench

        run_bench(args.out, args.repeats, tuple(p for p in args.parts.split(",") if p))
        return 0
    if args.command == "features":
        from shared.config import resolve
        from shared.data import load_dataset
        from shared.data.prepare import resolve_data_dir
        from shared.features import load_or_compute_features

        config = resolve(None, _overrides(args.set))
        features = load_or_compute_features(load_dataset(resolve_data_dir(config)), config["feature-cache"] or None)
        print(f"fedmmrec: features for {features.num_items} items cached")
        return 0
    raise SystemExit(f"fedmmrec: unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
