"""One command of the ``fedmmrec`` command line: its name, its help, its arguments and its handler."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Command:
    """A row of the command table. ``handle(args)`` returns the exit status; a command with
    ``subcommands`` is a group (``fedmmrec data synth``) and has no handler of its own."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    handle: Callable[[argparse.Namespace], int] | None = None
    subcommands: tuple["Command", ...] = ()

    def add_to(self, parsers: Any) -> None:
        """Add this command (and its subcommands) to an ``add_subparsers()`` object."""
        parser = parsers.add_parser(self.name, help=self.help)
        self.arguments(parser)
        if self.subcommands:
            inner = parser.add_subparsers(dest=f"{self.name}_command", required=True)
            for command in self.subcommands:
                command.add_to(inner)
        else:
            parser.set_defaults(handle=self.handle)


def overrides(pairs: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs as run-config overrides."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"fedmmrec: --set expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a run config key (see docs/run-config.md), repeatable",
    )
