"""The ``fedmmrec`` command line.

    fedmmrec run [--set KEY=VALUE ...] [--engine superlink|ray|in-process]   federated DP simulation (one client per user)
    fedmmrec train-pooled [--set KEY=VALUE]   the same model on pooled data, not private
    fedmmrec baseline most-popular [--set ...]
    fedmmrec data synth --out DIR [--users N --items M --seed S]
    fedmmrec data movielens-100k --zip ml-100k.zip --out DIR [--posters DIR] [--plots CSV]
    fedmmrec features [--set data-dir=DIR]    precompute the backbone feature cache
    fedmmrec audit RUN_DIR                    check the run's privacy ledger; exit 0 pass, 1 fail, 2 nothing to audit
    fedmmrec explanations RUN_DIR [--users N]  what drives the recommendations; deletion check
    fedmmrec streaming-study --out DIR [--data DIR] [--weeks N]  prequential study over time
    fedmmrec population-study --out DIR [--populations 250,1000,5000,20000,50000]  statistics vs device-trained tower
    fedmmrec bench [--out bench.json]         overheads side by side with their floors
    fedmmrec experiment CONFIG.toml           a grid of settings x seeds; results table and plots
    fedmmrec export RUN_DIR --out DIR [--signing-key KEY]   what devices rank with, signed
    fedmmrec recommend --model DIR --trusted-key PUB --history ID[,ID...] [--k 10] [--user-state FILE] [--explain] [--json]
    fedmmrec deploy certs --out DIR --host HOST [--host ...] --nodes N   CA, SuperLink TLS, node keys
    fedmmrec deploy identity --key PATH                                 on a device: its identity key; prints the public half
    fedmmrec deploy roster --out FILE KEY [KEY ...]                     the roster of the devices' identity keys
    fedmmrec deploy devices --data DIR --out DIR --devices N             one dataset folder per device
    fedmmrec deploy localhost --work DIR [--nodes 3] [--set KEY=VALUE]   TLS SuperLink + N SuperNodes here
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
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
    from shared.content_adapter import TowerSettings

    parser = argparse.ArgumentParser(prog="fedmmrec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the federated simulation (the main job)")
    _add_set(run)
    run.add_argument("--verbose", action="store_true", help="show Flower's own log")
    run.add_argument("--faults", default="", metavar="SPEC",
                     help='simulation only: partitions that misbehave, e.g. "nan:0 flip:1,2 crash:3 slow:4" (docs/faults.md); '
                          "runs on the ray engine")
    run.add_argument("--engine", choices=["superlink", "ray", "in-process"], default=None,
                     help="superlink (default): flwr run against a SuperLink of its own, stopped after; "
                          "ray: flwr.simulation.run_simulation (deprecated in Flower 1.41; the default with --faults); "
                          "in-process: the devices called one after another in this process")

    for name, text in (("train-pooled", "train the same model on all users' data pooled, without DP (baseline)"),
                       ("train-central", "old name of train-pooled (deprecated)")):
        pooled = sub.add_parser(name, help=text)
        _add_set(pooled)
        pooled.add_argument("--epochs", type=int, default=10)
        pooled.add_argument("--lr", type=float, default=0.005)

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
    ml = data_sub.add_parser("movielens-100k", help="convert the official GroupLens ml-100k.zip (MD5-checked) into our format")
    ml.add_argument("--zip", required=True, help="ml-100k.zip as downloaded from GroupLens")
    ml.add_argument("--out", required=True)
    ml.add_argument("--posters", default=None, help="folder of <item_id>.jpg|.jpeg|.png posters (image modality)")
    ml.add_argument("--plots", default=None, help="CSV with item_id (or movie_id) and description (text modality)")
    ml.add_argument("--md5", default=None, help="expected MD5 of the zip; default: the official ml-100k.zip's")

    audit = sub.add_parser("audit", help="audit a run's privacy ledger (exit 0 pass, 1 fail, 2 no run directory or ledger)")
    audit.add_argument("run_dir")
    audit.add_argument("--node-keys", default=None, help="folder of the SuperNodes' authorised public keys (*/node.pub): every signing key must be one")

    bench = sub.add_parser("bench", help="measure our overheads side by side with their floors (minutes)")
    bench.add_argument("--out", default="bench.json")
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--parts", default="", help="comma-separated: quality,communication,features,dp,clients,scale,movielens,online,secure")

    experiment = sub.add_parser("experiment", help="run (or resume) a grid of settings x seeds")
    experiment.add_argument("config")
    experiment.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="run config key for every setting, over the grid's base (e.g. data-dir=DIR)")

    export = sub.add_parser("export", help="write what a device needs to rank items (TorchScript + embeddings)")
    export.add_argument("run_dir")
    export.add_argument("--out", required=True)
    export.add_argument("--signing-key", default=None,
                        help="private key (PEM) to sign the export with: the deployment's export.key (fedmmrec deploy certs); default: the run's own export-key.pem, its public half written beside it as export-key.pub")

    rec = sub.add_parser("recommend", help="rank the catalog from an export, with numpy only")
    rec.add_argument("--model", required=True, help="folder written by fedmmrec export")
    rec.add_argument("--trusted-key", required=True,
                     help="the public key (PEM) this device trusts exports from: the deployment's export.pub, or a run's export-key.pub; an export it did not sign is refused")
    rec.add_argument("--history", default="", help="comma-separated item ids the user interacted with")
    rec.add_argument("--k", type=int, default=10)
    rec.add_argument("--user-state", default=None, help="the device's device-state.json (its trained embedding)")
    rec.add_argument("--explain", action="store_true", help="split each score into its exact parts and name the history items behind it")
    rec.add_argument("--json", action="store_true", help="print the recommendations (and explanations) as JSON")
    rec.add_argument("--new", default="", help="comma-separated item ids the user just interacted with: the user's vector is updated on the device first")
    rec.add_argument("--replay-buffer", type=int, default=200, help="past interactions the device replays with a new one (item tower)")

    explanations = sub.add_parser("explanations", help="mean share of each part of the recommendations' scores, and a deletion check")
    explanations.add_argument("run_dir")
    explanations.add_argument("--users", type=int, default=0, help="first N users of the split (0: all)")

    stream = sub.add_parser("streaming-study", help="the user-level mechanism week by week on a timeline: frozen, retrain, online")
    stream.add_argument("--data", default="", help="dataset folder (default: $FEDMMREC_MOVIELENS or ../shared/data/movielens-100k-mm)")
    stream.add_argument("--out", required=True)
    stream.add_argument("--epsilon", type=float, default=8.0, help="total user-level epsilon over the whole timeline")
    stream.add_argument("--weeks", type=int, default=0, help="weeks to advance (0: to the end of the data)")
    stream.add_argument("--seeds", default="0,1,2")
    stream.add_argument("--feature-cache", default="")
    stream.add_argument("--item-model", default="factors", choices=("factors", "ease"), help="what the releases become (run config item-model)")
    stream.add_argument("--ease-lambda", type=float, default=2.0, help="item-model ease: the ridge penalty (run config ease-lambda)")
    stream.add_argument("--cold-weight", type=float, default=1.0, help="multiplier on new films' content-placed term (run config cold-weight)")

    population = sub.add_parser("population-study", help="the statistics against a DP-FedAvg-trained tower at growing populations")
    population.add_argument("--out", required=True)
    population.add_argument("--populations", default="250,1000,5000,20000,50000", help="devices (synthetic users), comma-separated")
    population.add_argument("--seeds", default="0,1,2")
    population.add_argument("--epsilon", type=float, default=8.0, help="user-level epsilon of every private row (delta 1e-5)")
    population.add_argument("--evaluate-on", default="test", choices=("test", "validation"), help="validation: choose the tower's settings")
    population.add_argument("--evaluated-users", type=int, default=3000, help="users ranked per population (the same for every row)")
    population.add_argument("--data-root", default="", help="where the generated datasets go (default: OUT/data)")
    population.add_argument("--feature-cache", default="")
    population.add_argument("--rounds", type=int, default=TowerSettings.rounds, help="DP-FedAvg rounds of the tower")
    population.add_argument("--devices-per-round", type=int, default=TowerSettings.devices_per_round, help="expected devices per round")
    population.add_argument("--server-lr", type=float, default=TowerSettings.server_lr)
    population.add_argument("--tower-weight", type=float, default=TowerSettings.weight, help="the tower term's weight in the score")

    features = sub.add_parser("features", help="precompute the frozen backbones' item features")
    _add_set(features)

    deploy = sub.add_parser("deploy", help="a real deployment: keys, device folders, or all of it on localhost")
    deploy_sub = deploy.add_subparsers(dest="deploy_command", required=True)
    certs = deploy_sub.add_parser("certs", help="CA, SuperLink TLS certificate and SuperNode EC key pairs")
    ident = deploy_sub.add_parser("identity", help="on a device: make its identity key for the secure sum (kept if there) and print its public half")
    ident.add_argument("--key", required=True, help="where the device keeps it, e.g. STATE_DIR/identity-key.pem (node config identity-key)")
    roster = deploy_sub.add_parser("roster", help="the operator: write the roster of the devices' identity public keys (node config roster)")
    roster.add_argument("--out", required=True)
    roster.add_argument("keys", nargs="+", help="the public keys the devices printed (64 hex characters each)")
    certs.add_argument("--out", required=True)
    certs.add_argument("--host", action="append", required=True, help="SuperLink hostname or IP (repeatable; all go into the certificate)")
    certs.add_argument("--nodes", type=int, required=True, help="SuperNode key pairs to create")
    devices = deploy_sub.add_parser("devices", help="split a dataset into one folder per device (catalog + that user's interactions)")
    devices.add_argument("--data", required=True)
    devices.add_argument("--out", required=True)
    devices.add_argument("--devices", type=int, required=True)
    devices.add_argument("--copy-images", action="store_true", help="copy images/ into each folder instead of linking it")
    local = deploy_sub.add_parser("localhost", help="run a TLS SuperLink and N authenticated SuperNodes here, one run, then stop them")
    local.add_argument("--work", required=True, help="folder for keys, device folders, state, logs and runs")
    local.add_argument("--nodes", type=int, default=3)
    local.add_argument("--data", default="", help="dataset to split over the devices; default: the embedded synthetic data")
    _add_set(local)
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
        from server.secure_release import SecureAggregationAborted
        from simulations.simulate import simulate

        engine = args.engine or ("ray" if args.faults else "superlink")
        try:
            simulate(_overrides(args.set), quiet=not args.verbose, faults=args.faults, engine=engine)
        except KeyboardInterrupt:
            print("fedmmrec: interrupted; the run and every process it started are stopped (a run of rounds "
                  "continues with --set resume=RUN_DIR; a run of releases starts anew, on what is left of each device's budget)",
                  file=sys.stderr)
            return 130
        except SecureAggregationAborted as exc:  # the in-process engine; Flower's engines end without a summary
            print(f"fedmmrec: {exc} (the ledger records it; the devices' refusals are in the log above)", file=sys.stderr)
            return 1
        return 0
    if args.command in ("train-pooled", "train-central"):
        from simulations.pooled import train_pooled

        if args.command == "train-central":
            print("fedmmrec: train-central is now train-pooled (central means central DP); running train-pooled",
                  file=sys.stderr)
        train_pooled(_overrides(args.set), epochs=args.epochs, lr=args.lr)
        return 0
    if args.command == "baseline":
        from shared.baselines import most_popular
        from shared.config import resolve
        from shared.data import load_dataset, split_for
        from shared.data.prepare import resolve_data_dir

        config = resolve(None, _overrides(args.set))
        print(json.dumps(most_popular(split_for(load_dataset(resolve_data_dir(config)), config)), indent=2))
        return 0
    if args.command == "data" and args.data_command == "synth":
        from shared.data.synth import SynthConfig, generate

        out = generate(args.out, SynthConfig(users=args.users, items=args.items, seed=args.seed))
        print(f"fedmmrec: wrote {out}")
        return 0
    if args.command == "data" and args.data_command == "movielens-100k":
        from shared.data.movielens import OFFICIAL_MD5, convert_movielens_100k

        out = convert_movielens_100k(args.zip, args.out, args.posters, args.plots, args.md5 or OFFICIAL_MD5)
        return _dispatch(argparse.Namespace(command="data", data_command="check", path=str(out)))
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
    if args.command == "deploy":
        return _deploy(args)
    if args.command == "audit":
        from server.audit import run_audit

        return run_audit(args.run_dir, args.node_keys)
    if args.command == "experiment":
        from simulations.experiment import run_experiment

        run_experiment(args.config, base=_overrides(args.set))
        return 0
    if args.command == "export":
        from server.export import EXPORT_KEY, export_run

        print(f"fedmmrec: wrote {export_run(args.run_dir, args.out, args.signing_key)} (signed with "
              f"{args.signing_key or Path(args.run_dir) / EXPORT_KEY}; devices trust its public key)")
        return 0
    if args.command == "recommend":
        from client.exports import load_export
        from client.recommend import explanation_lines, rank

        history = [item.strip() for item in args.history.split(",") if item.strip()]
        new = [item.strip() for item in args.new.split(",") if item.strip()]
        export = load_export(args.model, args.trusted_key)
        if new:
            from client.online import OnlineUser

            if args.explain:
                raise ValueError("--new ranks with the updated vector; --explain explains the exported model: give one of them")
            user = OnlineUser(export, history, args.user_state, replay=args.replay_buffer)
            for item in new:
                user.observe(item)
            items = user.top(args.k)
        else:
            items = rank(export, history, args.k, args.user_state, explain=args.explain)
        if args.json:
            print(json.dumps([item.to_json() if args.explain else {"item": item.item, "score": item.score} for item in items], indent=2))
        else:
            print("\n".join(explanation_lines(items, export.titles)))
        return 0
    if args.command == "streaming-study":
        import os

        from simulations.streaming import run_streaming

        data = args.data or os.environ.get("FEDMMREC_MOVIELENS", "../shared/data/movielens-100k-mm")
        seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
        run_streaming(
            data, args.out, epsilon=args.epsilon, weeks=args.weeks, seeds=seeds, feature_cache=args.feature_cache or None,
            item_model=args.item_model, ease_lambda=args.ease_lambda, cold_weight=args.cold_weight,
        )
        print(f"fedmmrec: wrote {args.out}/results.csv, results.md, streaming.png")
        return 0
    if args.command == "population-study":
        from shared.content_adapter import TowerSettings
        from simulations.population import run_population

        try:
            populations = tuple(int(p) for p in args.populations.split(",") if p.strip())
            seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
        except ValueError:
            raise SystemExit("fedmmrec: --populations and --seeds take comma-separated integers")
        if not populations or min(populations) < 10 or args.rounds < 1 or args.devices_per_round < 1 or args.evaluated_users < 1:
            raise SystemExit("fedmmrec: populations of at least 10 devices, and positive --rounds, --devices-per-round, --evaluated-users")
        settings = TowerSettings(rounds=args.rounds, devices_per_round=args.devices_per_round, server_lr=args.server_lr, weight=args.tower_weight)
        run_population(
            args.out, populations, seeds, epsilon=args.epsilon, evaluate_on=args.evaluate_on, settings=settings,
            evaluated_users=args.evaluated_users, data_root=args.data_root or None, feature_cache=args.feature_cache or None,
        )
        print(f"fedmmrec: wrote {args.out}/results.csv, results.md, population.png")
        return 0
    if args.command == "explanations":
        from simulations.explanations import run_explanations, to_markdown

        print(to_markdown(run_explanations(args.run_dir, args.users)), end="")
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
        features = load_or_compute_features(load_dataset(resolve_data_dir(config)), config.data.feature_cache or None)
        print(f"fedmmrec: features for {features.num_items} items cached")
        return 0
    raise SystemExit(f"fedmmrec: unknown command {args.command}")


def _deploy(args: argparse.Namespace) -> int:
    if args.deploy_command == "certs":
        from server.certificates import write_deployment_keys

        keys = write_deployment_keys(args.out, args.host, args.nodes)
        print(f"fedmmrec: wrote {keys.ca_certificate}, {keys.superlink_certificate} (for {', '.join(args.host)}) "
              f"and {len(keys.node_public_keys)} SuperNode key pairs under {args.out}")
        return 0
    if args.deploy_command == "identity":
        from shared.secure_sum.identity import load_or_create_identity, public_hex

        print(public_hex(load_or_create_identity(args.key)))
        return 0
    if args.deploy_command == "roster":
        from shared.secure_sum.identity import write_roster

        bad = [k for k in args.keys if len(k) != 64 or any(c not in "0123456789abcdef" for c in k)]
        if bad or len(set(args.keys)) != len(args.keys):
            raise ValueError(f"roster: {bad[0] if bad else 'a key given twice'}: each key is the 64 hex characters "
                             "`fedmmrec deploy identity` printed, once")
        print(f"fedmmrec: wrote the roster of {len(args.keys)} devices' identity keys to {write_roster(args.out, args.keys)}")
        return 0
    if args.deploy_command == "devices":
        from shared.data.devices import write_device_folders

        folders = write_device_folders(args.data, args.out, args.devices, link_images=not args.copy_images)
        print(f"fedmmrec: wrote {len(folders)} device folders under {args.out}")
        return 0
    from simulations.deployment_report import deploy_localhost

    report = deploy_localhost(args.work, args.nodes, args.data, _overrides(args.set))
    return 0 if report["run-returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
