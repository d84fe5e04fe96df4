"""Commands that read a finished run directory (or its export): ``audit``, ``export``,
``explanations``, ``recommend``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from simulations.cli.command import Command


def _audit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir")
    parser.add_argument("--node-keys", default=None, help="folder of the SuperNodes' authorised public keys (*/node.pub): every signing key must be one")


def audit(args: argparse.Namespace) -> int:
    from server.audit import run_audit

    return run_audit(args.run_dir, args.node_keys)


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir")
    parser.add_argument("--out", required=True)
    parser.add_argument("--signing-key", default=None,
                        help="private key (PEM) to sign the export with: the deployment's export.key (fedmmrec deploy certs); default: the run's own export-key.pem, its public half written beside it as export-key.pub")


def export(args: argparse.Namespace) -> int:
    from server.export import EXPORT_KEY, export_run

    print(f"fedmmrec: wrote {export_run(args.run_dir, args.out, args.signing_key)} (signed with "
          f"{args.signing_key or Path(args.run_dir) / EXPORT_KEY}; devices trust its public key)")
    return 0


def _recommend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="folder written by fedmmrec export")
    parser.add_argument("--trusted-key", required=True,
                        help="the public key (PEM) this device trusts exports from: the deployment's export.pub, or a run's export-key.pub; an export it did not sign is refused")
    parser.add_argument("--history", default="", help="comma-separated item ids the user interacted with")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--user-state", default=None, help="the device's device-state.json (its trained embedding)")
    parser.add_argument("--explain", action="store_true", help="split each score into its exact parts and name the history items behind it")
    parser.add_argument("--json", action="store_true", help="print the recommendations (and explanations) as JSON")
    parser.add_argument("--new", default="", help="comma-separated item ids the user just interacted with: the user's vector is updated on the device first")
    parser.add_argument("--replay-buffer", type=int, default=200, help="past interactions the device replays with a new one (item tower)")


def recommend(args: argparse.Namespace) -> int:
    from client.exports import load_export
    from client.recommend import explanation_lines, rank

    history = [item.strip() for item in args.history.split(",") if item.strip()]
    new = [item.strip() for item in args.new.split(",") if item.strip()]
    model = load_export(args.model, args.trusted_key)
    if new:
        from client.online import OnlineUser

        if args.explain:
            raise ValueError("--new ranks with the updated vector; --explain explains the exported model: give one of them")
        user = OnlineUser(model, history, args.user_state, replay=args.replay_buffer)
        for item in new:
            user.observe(item)
        items = user.top(args.k)
    else:
        items = rank(model, history, args.k, args.user_state, explain=args.explain)
    if args.json:
        print(json.dumps([item.to_json() if args.explain else {"item": item.item, "score": item.score} for item in items], indent=2))
    else:
        print("\n".join(explanation_lines(items, model.titles)))
    return 0


def _explanations_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir")
    parser.add_argument("--users", type=int, default=0, help="first N users of the split (0: all)")


def explanations(args: argparse.Namespace) -> int:
    from simulations.studies.explanations import run_explanations, to_markdown

    print(to_markdown(run_explanations(args.run_dir, args.users)), end="")
    return 0


COMMANDS = (
    Command("audit", "audit a run's privacy ledger (exit 0 pass, 1 fail, 2 no run directory or ledger)", _audit_arguments, audit),
    Command("export", "write what a device needs to rank items (TorchScript + embeddings)", _export_arguments, export),
    Command("recommend", "rank the catalog from an export, with numpy only", _recommend_arguments, recommend),
    Command("explanations", "mean share of each part of the recommendations' scores, and a deletion check", _explanations_arguments, explanations),
)
