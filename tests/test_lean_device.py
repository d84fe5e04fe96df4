"""The default mode's device is numpy only: the ClientApp module imports no torch, and a whole
default-mode run (the secure sum's key agreement, three masked releases, unmasking, ranking)
runs every device message without importing torch or the item tower, through the real server
and ClientApp code in one fresh process (the in-process engine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from simulations.engines.in_process import FIRST_NODE_ID, InProcessGrid

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: the pytest process has torch imported long ago.
SCRIPT = """
import builtins, json, sys
import client.client_app
at_import = sorted(m for m in ("torch", "opacus", "transformers", "torchvision") if m in sys.modules)
scorer_at_import = "shared.cooccurrence" in sys.modules  # the device scores with it
from simulations.engines.simulate import read_summary, simulate

real_import, asked = builtins.__import__, set()

def recording(name, globals=None, locals=None, fromlist=(), level=0):
    asked.add(name)
    asked.update(f"{name}.{part}" for part in (fromlist or ()))
    return real_import(name, globals, locals, fromlist, level)

class Watched:
    calls = 0
    def __call__(self, message, context):
        Watched.calls += 1
        builtins.__import__ = recording
        try:
            return client.client_app.app(message, context)
        finally:
            builtins.__import__ = real_import

data, cache, runs = sys.argv[1:4]
run = simulate({"data-dir": data, "feature-cache": cache, "run-dir": runs, "run-id": "lean"}, client_app=Watched(), engine="in-process")
heavy = sorted(n for n in asked if n.split(".")[0] in ("torch", "opacus", "transformers", "torchvision") or n == "client.tower")
modules = sorted(n for n in asked if n in sys.modules)  # the server loaded torch here: see what these load alone
print(json.dumps({"at-import": at_import, "scorer-at-import": scorer_at_import, "heavy": heavy, "calls": Watched.calls, "modules": modules,
                  "evaluated": read_summary(run)["final"]["clients-evaluated"]}))
"""

# Every module a device message imported (already loaded or not), imported alone in a fresh
# interpreter: a device path through a module that needs torch fails here even though the
# server, in the same process above, had loaded torch first.
ALONE = """
import importlib, json, sys
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
print(json.dumps(sorted(m for m in ("torch", "opacus", "transformers", "torchvision") if m in sys.modules)))
"""


def test_a_default_mode_device_never_imports_torch(small_dataset, feature_cache, tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(small_dataset), str(feature_cache), str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["at-import"] == []
    assert found["heavy"] == []
    assert found["scorer-at-import"]  # so "at-import" above covers the scoring module's imports too
    alone = subprocess.run([sys.executable, "-c", ALONE, json.dumps(found["modules"])], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert json.loads(alone.stdout.strip().splitlines()[-1]) == []
    # 12 devices: key agreement (2 stages), 3 releases x (masked input, confirmation, unmasking), ranking
    assert found["calls"] == 12 * 12 and found["evaluated"] == 12


def test_the_in_process_engine_turns_a_raising_client_into_an_error_reply():
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def broken(msg, context):
        raise RuntimeError("disk full")

    other = InProcessGrid(app, 2).run_id
    grid = InProcessGrid(app, 2)
    assert list(grid.get_node_ids()) == [FIRST_NODE_ID, FIRST_NODE_ID + 1]
    # an empty run record (no FAB, no SuperLink) with a fresh id each run, as a SuperLink gives
    assert grid.run.run_id == grid.run_id != other and grid.run.fab_id == ""
    message = Message(RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=FIRST_NODE_ID, message_type="train")
    (reply,) = grid.send_and_receive([message])
    assert reply.has_error() and "disk full" in reply.error.reason
    assert reply.metadata.src_node_id == FIRST_NODE_ID


def _model_message(node: int) -> "Message":
    """A message carrying a (tiny) released model: what makes a device score the catalog."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

    arrays = ArrayRecord({"content-weight": Array(np.asarray([1.0]))})
    return Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"x": 1})}), dst_node_id=node, message_type="evaluate")


def test_the_catalog_content_is_shipped_once_kept_by_hash_and_shipped_again_when_lost(tmp_path):
    import numpy as np
    from flwr.app import Array, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    import client.catalog_content as on_device
    from server.catalog_shipment import CatalogShipment
    from shared.checksums import content_sha256
    from shared.messages import CATALOG

    app = ClientApp(mods=[on_device.receive_catalog])

    @app.evaluate()
    def score(msg, context):  # what ranking does with it: read the content the message names
        content = on_device.catalog_content(msg, dict(context.node_config), None, ("text", "image"))
        return Message(RecordDict({"metrics": MetricRecord({"total": float(content.sum())})}), reply_to=msg)

    content = np.arange(12.0).reshape(3, 4) / 7.0
    grid = InProcessGrid(app, 1)
    node = FIRST_NODE_ID
    grid.contexts[node].node_config["state-dir"] = str(tmp_path / "state")
    shipment = CatalogShipment(grid, content)
    stored = tmp_path / "state" / "catalog" / f"{content_sha256(content)}.npy"

    def ask() -> Message:
        (reply,) = shipment.send_and_receive([_model_message(node)])
        return reply

    first = ask()
    assert not first.has_error() and first.content["metrics"]["total"] == content.sum()
    assert first.content[CATALOG]["held"] == shipment.digest and shipment.holders == {node}
    assert np.array_equal(np.load(stored), content)
    on_device._HELD.clear()  # a fresh ClientApp process, as a SuperNode starts for each message
    assert ask().content["metrics"]["total"] == content.sum() and shipment.shipped == {node: 1}  # the hash alone

    stored.unlink()  # the device lost its copy
    on_device._HELD.clear()
    lost = ask()
    assert lost.has_error() and "holds no catalog content with SHA-256" in lost.error.reason and shipment.holders == set()
    assert ask().content["metrics"]["total"] == content.sum() and shipment.shipped == {node: 2}

    np.save(stored, content + 1.0)  # changed on the device: refused, removed, shipped again, repaired
    on_device._HELD.clear()
    changed = ask()
    assert changed.has_error() and "changed on the device" in changed.error.reason and not stored.exists()
    assert ask().content["metrics"]["total"] == content.sum() and shipment.shipped == {node: 3}
    assert np.array_equal(np.load(stored), content) and shipment.holders == {node}
    stored.write_bytes(stored.read_bytes()[:100])  # truncated (a power cut mid-write)
    on_device._HELD.clear()
    assert ask().has_error() and not stored.exists()
    assert ask().content["metrics"]["total"] == content.sum() and shipment.shipped == {node: 4}
    assert sorted(p.name for p in stored.parent.iterdir()) == [stored.name]  # no temporary file left

    stray = stored.parent / f".{shipment.digest}.123.npy"  # a temporary a power cut left behind
    stray.write_bytes(b"half")
    newer = np.arange(8.0).reshape(2, 4)  # the next catalog replaces this one on disk
    newer_shipment = CatalogShipment(grid, newer)
    (reply,) = newer_shipment.send_and_receive([_model_message(node)])
    assert reply.content["metrics"]["total"] == newer.sum()
    assert sorted(p.name for p in stored.parent.iterdir()) == [f"{content_sha256(newer)}.npy"]

    grid.contexts[node].node_config["catalog-max-mb"] = 0.0001  # 100 bytes: the 8x4 matrix ships as 256 bytes of values + a 128-byte .npy header
    big = CatalogShipment(grid, np.ones((8, 4)))
    (refused,) = big.send_and_receive([_model_message(node)])
    assert refused.has_error() and "is 384 bytes, over this device's catalog-max-mb (100 bytes): refused" in refused.error.reason
    assert sorted(p.name for p in stored.parent.iterdir()) == [f"{content_sha256(newer)}.npy"]  # nothing written
    grid.contexts[node].node_config["catalog-max-mb"] = "many"
    (refused,) = CatalogShipment(grid, np.ones((2, 2))).send_and_receive([_model_message(node)])
    assert refused.has_error() and "catalog-max-mb = 'many': must be a positive number of megabytes" in refused.error.reason
    del grid.contexts[node].node_config["catalog-max-mb"]

    forged = _model_message(node)  # content that does not match the hash it comes with
    forged.content["config"]["catalog-sha256"] = shipment.digest
    forged.content[CATALOG] = CatalogShipment(grid, content * 2).record
    (refused,) = grid.send_and_receive([forged])
    assert refused.has_error() and "does not match its SHA-256" in refused.error.reason
    as_float32 = _model_message(node)  # the same values in another type: not the matrix the hash names
    as_float32.content["config"]["catalog-sha256"] = shipment.digest
    as_float32.content[CATALOG] = CatalogShipment(grid, content).record
    as_float32.content[CATALOG]["content"] = Array(content.astype(np.float32))
    (refused,) = grid.send_and_receive([as_float32])
    assert refused.has_error() and "not a float64 matrix" in refused.error.reason

    outside = tmp_path / "outside.npy"  # a "hash" that is a path: never opened
    np.save(outside, content)
    crafted = _model_message(node)
    crafted.content["config"]["catalog-sha256"] = "../../outside"
    (refused,) = grid.send_and_receive([crafted])
    assert refused.has_error() and "is not a SHA-256 (64 hex digits)" in refused.error.reason


def test_a_deployed_default_mode_device_needs_neither_images_nor_features(small_dataset, feature_cache, tmp_path, monkeypatch):
    """Twelve devices with their own folders (items.csv and their interactions, no images/) and
    state folders run the default mode against the real server in deployment mode: none of them
    loads catalog features; each gets the content matrix once and keeps it under its hash."""
    import shutil

    import numpy as np

    import client.catalog_content as on_device
    import client.client_app
    import client.local_data
    from server.federation import run_federated
    from shared.checksums import content_sha256
    from shared.config import resolve
    from shared.data.devices import write_device_folders
    from shared.messages import CATALOG
    from simulations.engines.simulate import read_summary

    def no_features(*args, **kwargs):
        raise AssertionError("a deployed default-mode device loaded the catalog's features")

    monkeypatch.setattr(client.local_data, "load_or_compute_features", no_features)
    on_device._HELD.clear()
    folders = write_device_folders(small_dataset, tmp_path / "devices", 12)
    for folder in folders:
        if (folder / "images").exists():
            (folder / "images").unlink() if (folder / "images").is_symlink() else shutil.rmtree(folder / "images")
    carried = {"content": 0, "hash": 0}

    def device(message, context):
        carried["content"] += CATALOG in message.content.array_records
        carried["hash"] += "catalog-sha256" in message.content["config"]
        return client.client_app.app(message, context)

    from shared.secure_sum.identity import provision

    identities, roster = provision([tmp_path / f"state-{k}" for k in range(12)], tmp_path / "roster.json")  # each device's own key
    grid = InProcessGrid(device, 12)
    for k, node in enumerate(grid.get_node_ids()):
        grid.contexts[node].node_config.clear()
        grid.contexts[node].node_config.update({"data-dir": str(folders[k]), "state-dir": str(tmp_path / f"state-{k}"),
                                                "identity-key": str(identities[k]), "roster": str(roster)})
    config = resolve(None, {"data-dir": str(small_dataset), "feature-cache": str(feature_cache), "run-dir": str(tmp_path / "runs"),
                            "run-id": "deployed", "deployment": True, "min-nodes": 12, "secure-roster": str(roster)})
    run_federated(grid, config)
    run = tmp_path / "runs" / "deployed"
    assert read_summary(run)["final"]["clients-evaluated"] == 12
    content = np.load(run / "catalog.npz")["content"]
    digest = content_sha256(content)
    for k in range(12):
        assert [p.name for p in (tmp_path / f"state-{k}" / "catalog").iterdir()] == [f"{digest}.npy"]
        assert np.array_equal(np.load(tmp_path / f"state-{k}" / "catalog" / f"{digest}.npy"), content)
    # the selection release's masked input and the ranking carry the model: the hash each time,
    # the matrix once per device
    assert carried == {"content": 12, "hash": 24}
