"""The ``fedmmrec`` command line: a table of commands, each a parser and a handler (:data:`USAGE`).

A new command is a :class:`~simulations.cli.command.Command` (name, help, arguments, handler)
in the module of its kind, listed in that module's ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import sys

from shared.data import DatasetError
from simulations.cli import data, deploy, run_outputs, simulation, studies
from simulations.cli.command import Command

USAGE = """The ``fedmmrec`` command line.

    fedmmrec run [--set KEY=VALUE ...] [--engine superlink|ray|in-process]   federated DP simulation (one client per user)
    fedmmrec train-pooled [--set KEY=VALUE]   the same model on pooled data, not private
    fedmmrec baseline most-popular [--set ...]
    fedmmrec features [--set data-dir=DIR]    precompute the backbone feature cache
    fedmmrec data synth --out DIR [--users N --items M --seed S]
    fedmmrec data movielens-100k --zip ml-100k.zip --out DIR [--posters DIR] [--plots CSV]
    fedmmrec data check DIR
    fedmmrec audit RUN_DIR                    check the run's privacy ledger; exit 0 pass, 1 fail, 2 nothing to audit
    fedmmrec export RUN_DIR --out DIR [--signing-key KEY]   what devices rank with, signed
    fedmmrec recommend --model DIR --trusted-key PUB --history ID[,ID...] [--k 10] [--user-state FILE] [--explain] [--json]
    fedmmrec explanations RUN_DIR [--users N]  what drives the recommendations; deletion check
    fedmmrec experiment CONFIG.toml           a grid of settings x seeds; results table and plots
    fedmmrec streaming-study --out DIR [--data DIR] [--weeks N]  prequential study over time
    fedmmrec population-study --out DIR [--populations 250,1000,5000,20000,50000]  statistics vs device-trained tower
    fedmmrec promotion-study --out DIR [--groups 1,3,5] [--attackers 0,1,9]  lying devices vs the secure sum
    fedmmrec bench [--out bench.json]         overheads side by side with their floors
    fedmmrec deploy certs --out DIR --host HOST [--host ...] --nodes N   CA, SuperLink TLS, node keys
    fedmmrec deploy identity --key PATH                                 on a device: its identity key; prints the public half
    fedmmrec deploy roster --out FILE KEY [KEY ...]                     the roster of the devices' identity keys
    fedmmrec deploy devices --data DIR --out DIR --devices N             one dataset folder per device
    fedmmrec deploy localhost --work DIR [--nodes 3] [--set KEY=VALUE]   TLS SuperLink + N SuperNodes here
"""

COMMANDS: tuple[Command, ...] = (*simulation.COMMANDS, *data.COMMANDS, *run_outputs.COMMANDS, *studies.COMMANDS, *deploy.COMMANDS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedmmrec", description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_to(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handle(args)
    except (DatasetError, ValueError, FileExistsError) as exc:
        print(f"fedmmrec: error: {exc}", file=sys.stderr)
        return 2


__all__ = ["COMMANDS", "build_parser", "main"]
