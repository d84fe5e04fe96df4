"""``python -m simulations.cli`` runs every subcommand (a helper defined after the module's
``main()`` call once made ``deploy`` fail with a NameError there, not under ``fedmmrec``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_module_entry_point_runs_deploy_certs(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "deploy", "certs", "--out", str(tmp_path / "keys"), "--host", "localhost", "--nodes", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "1 SuperNode key pairs" in result.stdout
    assert not list((tmp_path / "keys").rglob("identity-key.pem"))  # the devices make their identity keys, not the server


def test_each_device_makes_its_identity_key_and_the_operator_writes_the_roster(tmp_path, capsys):
    from simulations.cli import main
    from shared.secure_sum.identity import identity_public_from_file, roster_from_file

    keys = []
    for k in range(2):
        assert main(["deploy", "identity", "--key", str(tmp_path / f"device-{k}" / "identity-key.pem")]) == 0
        keys.append(capsys.readouterr().out.strip())
    assert main(["deploy", "identity", "--key", str(tmp_path / "device-0" / "identity-key.pem")]) == 0
    assert capsys.readouterr().out.strip() == keys[0]  # kept, never replaced
    assert keys[0] == identity_public_from_file(tmp_path / "device-0" / "identity-key.pem")
    assert main(["deploy", "roster", "--out", str(tmp_path / "roster.json"), *keys]) == 0
    assert capsys.readouterr().out.strip() == f"fedmmrec: wrote the roster of 2 devices' identity keys to {tmp_path / 'roster.json'}"
    roster = roster_from_file(tmp_path / "roster.json")
    assert roster.keys == set(keys) and len(bytes.fromhex(roster.seed)) == 32  # and a fresh random seed for the graph
    assert main(["deploy", "roster", "--out", str(tmp_path / "r2.json"), keys[0], "xyz"]) == 2
    assert "roster: xyz: each key is the 64 hex characters `fedmmrec deploy identity` printed, once" in capsys.readouterr().err


def test_a_simulation_joins_the_ray_cluster_ray_address_names(monkeypatch):
    from simulations.engines.simulate import ray_init_args

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_init_args() == {"num_cpus": os.cpu_count() or 1}
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.7:6390")
    assert ray_init_args() == {"address": "10.0.0.7:6390"}  # no num_cpus: Ray refuses it when joining
