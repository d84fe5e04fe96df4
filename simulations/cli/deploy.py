"""``fedmmrec deploy``: a real deployment's keys, roster and device folders, or all of it on localhost."""

from __future__ import annotations

import argparse

from simulations.cli.command import Command, add_set, overrides


def _certs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True)
    parser.add_argument("--host", action="append", required=True, help="SuperLink hostname or IP (repeatable; all go into the certificate)")
    parser.add_argument("--nodes", type=int, required=True, help="SuperNode key pairs to create")


def certs(args: argparse.Namespace) -> int:
    from server.certificates import write_deployment_keys

    keys = write_deployment_keys(args.out, args.host, args.nodes)
    print(f"fedmmrec: wrote {keys.ca_certificate}, {keys.superlink_certificate} (for {', '.join(args.host)}) "
          f"and {len(keys.node_public_keys)} SuperNode key pairs under {args.out}")
    return 0


def _identity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", required=True, help="where the device keeps it, e.g. STATE_DIR/identity-key.pem (node config identity-key)")


def identity(args: argparse.Namespace) -> int:
    from shared.secure_sum.identity import load_or_create_identity, public_hex

    print(public_hex(load_or_create_identity(args.key)))
    return 0


def _roster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True)
    parser.add_argument("keys", nargs="+", help="the public keys the devices printed (64 hex characters each)")


def roster(args: argparse.Namespace) -> int:
    from shared.secure_sum.identity import write_roster

    bad = [k for k in args.keys if len(k) != 64 or any(c not in "0123456789abcdef" for c in k)]
    if bad or len(set(args.keys)) != len(args.keys):
        raise ValueError(f"roster: {bad[0] if bad else 'a key given twice'}: each key is the 64 hex characters "
                         "`fedmmrec deploy identity` printed, once")
    print(f"fedmmrec: wrote the roster of {len(args.keys)} devices' identity keys to {write_roster(args.out, args.keys)}")
    return 0


def _devices_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--copy-images", action="store_true", help="copy images/ into each folder instead of linking it")


def devices(args: argparse.Namespace) -> int:
    from shared.data.devices import write_device_folders

    folders = write_device_folders(args.data, args.out, args.devices, link_images=not args.copy_images)
    print(f"fedmmrec: wrote {len(folders)} device folders under {args.out}")
    return 0


def _localhost_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work", required=True, help="folder for keys, device folders, state, logs and runs")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--data", default="", help="dataset to split over the devices; default: the embedded synthetic data")
    add_set(parser)


def localhost(args: argparse.Namespace) -> int:
    from simulations.deployment.report import deploy_localhost

    report = deploy_localhost(args.work, args.nodes, args.data, overrides(args.set))
    return 0 if report["run-returncode"] == 0 else 1


COMMANDS = (
    Command("deploy", "a real deployment: keys, device folders, or all of it on localhost", subcommands=(
        Command("certs", "CA, SuperLink TLS certificate and SuperNode EC key pairs", _certs_arguments, certs),
        Command("identity", "on a device: make its identity key for the secure sum (kept if there) and print its public half", _identity_arguments, identity),
        Command("roster", "the operator: write the roster of the devices' identity public keys (node config roster)", _roster_arguments, roster),
        Command("devices", "split a dataset into one folder per device (catalog + that user's interactions)", _devices_arguments, devices),
        Command("localhost", "run a TLS SuperLink and N authenticated SuperNodes here, one run, then stop them", _localhost_arguments, localhost),
    )),
)
