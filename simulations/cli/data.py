"""``fedmmrec data``: make, convert and check a dataset folder (items.csv, interactions.csv, images/)."""

from __future__ import annotations

import argparse

from simulations.cli.command import Command


def _synth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)


def synth(args: argparse.Namespace) -> int:
    from shared.data.synth import SynthConfig, generate

    out = generate(args.out, SynthConfig(users=args.users, items=args.items, seed=args.seed))
    print(f"fedmmrec: wrote {out}")
    return 0


def check(args: argparse.Namespace) -> int:
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


def _movielens_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--zip", required=True, help="ml-100k.zip as downloaded from GroupLens")
    parser.add_argument("--out", required=True)
    parser.add_argument("--posters", default=None, help="folder of <item_id>.jpg|.jpeg|.png posters (image modality)")
    parser.add_argument("--plots", default=None, help="CSV with item_id (or movie_id) and description (text modality)")
    parser.add_argument("--md5", default=None, help="expected MD5 of the zip; default: the official ml-100k.zip's")


def movielens_100k(args: argparse.Namespace) -> int:
    from shared.data.movielens import OFFICIAL_MD5, convert_movielens_100k

    out = convert_movielens_100k(args.zip, args.out, args.posters, args.plots, args.md5 or OFFICIAL_MD5)
    return check(argparse.Namespace(path=str(out)))


COMMANDS = (
    Command("data", "datasets", subcommands=(
        Command("synth", "generate the synthetic multimodal dataset", _synth_arguments, synth),
        Command("check", "validate a dataset folder", lambda parser: parser.add_argument("path"), check),
        Command("movielens-100k", "convert the official GroupLens ml-100k.zip (MD5-checked) into our format", _movielens_arguments, movielens_100k),
    )),
)
