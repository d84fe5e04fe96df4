"""A real deployment on localhost: a TLS SuperLink with node authentication, three SuperNodes
with their own data and state folders as real processes, runs through ``flwr run``: a local-DP
round, a SuperNode restart, and the default mode's secure sum."""

from __future__ import annotations

import json
import os
import shutil
import stat

import numpy as np
import pytest

from client.state import STATE_FILE
from server.audit import audit
from shared.run_directory import read_ledger
from server.certificates import write_deployment_keys
from shared.checksums import content_sha256
from shared.privacy.accounting import total_steps
from simulations.deployment.localhost import LocalhostDeployment
from simulations.engines.flower_processes import alive


def test_deployment_keys_are_private_and_never_overwritten(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    keys = write_deployment_keys(tmp_path, ["localhost", "10.0.0.5"], 2)
    cert = x509.load_pem_x509_certificate(keys.superlink_certificate.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    ca = x509.load_pem_x509_certificate(keys.ca_certificate.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert load_ssh_public_key(keys.node_public_keys[1].read_bytes()).curve.name == "secp384r1"
    for private in [keys.superlink_key, tmp_path / "ca.key", keys.export_key, *keys.node_private_keys]:
        assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    before = keys.ca_certificate.read_bytes()
    with pytest.raises(FileExistsError, match="ca.crt"):
        write_deployment_keys(tmp_path, ["localhost"], 1)
    assert keys.ca_certificate.read_bytes() == before


def _device_steps(dep: LocalhostDeployment, k: int) -> int:
    state = json.loads((dep.state_dir(k) / STATE_FILE).read_text())
    return total_steps([tuple(step) for step in state["history"]])


def test_tls_superlink_with_node_auth_runs_rounds_and_refuses_an_unregistered_node(small_dataset, feature_cache, tmp_path):
    pids: list[int] = []
    # The catalog's features, as the operator computes them once (`fedmmrec features`): from the
    # session's cache, which other tests fill, instead of encoding the catalog again here.
    from shared.data import load_catalog
    from shared.features import load_or_compute_features

    load_or_compute_features(load_catalog(small_dataset), feature_cache, progress=False)
    (tmp_path / "deploy" / "catalog-features").mkdir(parents=True)
    for npz in feature_cache.glob("*.npz"):  # written atomically: never a partial file
        shutil.copyfile(npz, tmp_path / "deploy" / "catalog-features" / npz.name)
    with LocalhostDeployment(tmp_path / "deploy", small_dataset, nodes=3) as dep:
        dep.start()
        assert len(set(dep.node_ids)) == 3

        # A SuperNode whose key was never registered tries to join while the first run goes on.
        stranger = dep.start_unregistered_node()

        # One round: each message starts a fresh ClientApp process that imports torch (~10 s
        # each on 2 cores), so the round has no evaluation of its own; the final one asks all.
        result = dep.run({"run-id": "one-round", "num-server-rounds": 1, "fraction-train": 1.0, "fraction-evaluate": 0.0, "privacy": "local"})
        assert result.returncode == 0, result.output[-4000:]
        assert "deployment: 3 SuperNodes connected" in result.output
        assert "[round 1/1] trained 3 clients" in result.output and ", not evaluated, " in result.output
        run_dir = dep.work / "runs" / "one-round"
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [row["round"] for row in rows] == [1]
        assert [row["clients-trained"] for row in rows] == [3]
        assert "clients-evaluated" not in rows[-1] and "hr@10" not in rows[-1]

        code, log = dep.unregistered_node_outcome(stranger)
        assert code != 0, log
        assert "Failed to activate SuperNode" in log
        assert "No SuperNode found with the given public key" in dep.log_text("superlink")
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["final"]["clients-evaluated"] == 3
        assert summary["dataset"]["users"] == 3 and summary["dataset"]["interactions"] is None
        assert (run_dir / "checkpoints" / "final.pt").is_file()
        report = audit(run_dir, node_keys=dep.keys)  # every spend signed by an authorised SuperNode
        assert report.passed, report.failures
        assert report.figures["signed spend"].startswith("3 of 3 counted client-round entries signed by 3 device keys")
        from server.certificates import write_deployment_keys

        strangers = write_deployment_keys(dep.work / "other-keys", ["localhost"], 3)
        problems = audit(run_dir, node_keys=strangers.ca_certificate.parent).failures["spend-signed"]
        assert len(problems) == 3 and all("not one of the authorised SuperNodes'" in p for p in problems)
        from simulations.cli import main

        assert main(["audit", str(run_dir), "--node-keys", str(dep.keys)]) == 0
        assert main(["audit", str(run_dir), "--node-keys", str(strangers.ca_certificate.parent)]) == 1
        assert all(peak > 0 for peak in result.peak_pss_bytes.values())

        # Each device kept its data, features and privacy state in its own folders.
        steps_after_run = [_device_steps(dep, k) for k in range(3)]
        assert all(steps > 0 for steps in steps_after_run)
        assert all(any((dep.state_dir(k) / "features").glob("text-*.npz")) for k in range(3))

        # A SuperNode stopped and restarted signs on again with its key and its folders, and
        # takes part in the next run (which needs all three). Every message starts a fresh
        # ClientApp process that reads the device's state from its folder, so a spend that goes
        # on across processes is what each round above already did (and what
        # tests/test_device_state.py holds to exact figures).
        dep.restart_supernode(0)

        # The secure sum over real SuperNodes: three devices mask their noised statistics, the
        # server unmasks only the sum, each device signs its share with its SuperNode's key.
        # Two releases (no selection release) keep it to about 30 ClientApp processes.
        secure = dep.run({"run-id": "secure", "privacy": "user", "user-noise": "distributed", "selection-budget-share": 0.0})
        assert secure.returncode == 0, secure.output[-4000:]
        assert "[secure aggregation] 3 of 3 devices shared their keys" in secure.output
        secure_dir = dep.work / "runs" / "secure"
        releases = [e.body for e in read_ledger(secure_dir) if e.kind == "release"]
        assert [b["contributions"] for b in releases] == [3, 3]
        report = audit(secure_dir, node_keys=dep.keys)
        assert report.passed, report.failures
        assert {"secure-plan", "secure-shares", "secure-sum"} <= set(report.failures)
        # each device got the catalog's content matrix from the server and keeps it by its hash,
        # in the folders it had before: the restarted one too, beside its local-DP spend
        digest = content_sha256(np.load(secure_dir / "catalog.npz")["content"])
        assert all([p.name for p in (dep.state_dir(k) / "catalog").iterdir()] == [f"{digest}.npy"] for k in range(3))
        assert [_device_steps(dep, k) for k in range(3)] == steps_after_run  # the default mode spends no DP-SGD steps
        pids = dep.stop()
        assert dep.leftover_pids() == []
    assert pids and not any(alive(pid) for pid in pids)


def test_a_localhost_deployment_gives_its_devices_consent_to_central_noise_only_for_such_a_run(tmp_path):
    from simulations.deployment.report import device_consent

    assert device_consent({"user-noise": "central"}) == {"user-noise": "central"} and device_consent({}) == {}
    dep = LocalhostDeployment(tmp_path / "work", tmp_path / "data", nodes=2, node_settings=device_consent({"user-noise": "central"}))
    command = dep.supernode_command(1)
    assert command[command.index("--node-config") + 1].endswith(' roster="' + str(dep.keys / "roster.json") + '" user-noise="central"')
    plain = LocalhostDeployment(tmp_path / "work2", tmp_path / "data", nodes=2).supernode_command(1)
    assert "user-noise" not in plain[plain.index("--node-config") + 1]
