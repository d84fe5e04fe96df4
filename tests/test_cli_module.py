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
    keys = tmp_path / "keys"
    assert result.stdout.strip() == (
        f"fedmmrec: wrote {keys / 'ca.crt'}, {keys / 'superlink.crt'} (for localhost) and 1 SuperNode key pairs under {keys}; "
        f"each device's identity key (supernode-K/identity-key.pem) and the roster every device gets ({keys / 'roster.json'})"
    )
    from shared.secure_sum.identity import identity_public_from_file, roster_from_file

    assert roster_from_file(keys / "roster.json") == {identity_public_from_file(keys / "supernode-0" / "identity-key.pem")}


def test_a_simulation_joins_the_ray_cluster_ray_address_names(monkeypatch):
    from simulations.simulate import ray_init_args

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_init_args() == {"num_cpus": os.cpu_count() or 1}
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.7:6390")
    assert ray_init_args() == {"address": "10.0.0.7:6390"}  # no num_cpus: Ray refuses it when joining
