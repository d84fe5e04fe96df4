"""The default mode's device is numpy only: the ClientApp module imports no torch, and a whole
default-mode run (the secure sum's key agreement, three masked releases, unmasking, ranking)
runs every device message without importing torch or the item tower, through the real server
and ClientApp code in one fresh process (the in-process engine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from simulations.in_process import FIRST_NODE_ID, InProcessGrid

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: the pytest process has torch imported long ago.
SCRIPT = """
import builtins, json, sys
import client.client_app
at_import = sorted(m for m in ("torch", "opacus", "transformers", "torchvision") if m in sys.modules)
from simulations.simulate import read_summary, simulate

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
print(json.dumps({"at-import": at_import, "heavy": heavy, "calls": Watched.calls,
                  "evaluated": read_summary(run)["final"]["clients-evaluated"]}))
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
    # 12 devices: key agreement (2 stages), 3 releases x (masked input + unmasking), ranking
    assert found["calls"] == 12 * 9 and found["evaluated"] == 12


def test_the_in_process_engine_turns_a_raising_client_into_an_error_reply():
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def broken(msg, context):
        raise RuntimeError("disk full")

    grid = InProcessGrid(app, 2)
    assert list(grid.get_node_ids()) == [FIRST_NODE_ID, FIRST_NODE_ID + 1]
    message = Message(RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=FIRST_NODE_ID, message_type="train")
    (reply,) = grid.send_and_receive([message])
    assert reply.has_error() and "disk full" in reply.error.reason
    assert reply.metadata.src_node_id == FIRST_NODE_ID
