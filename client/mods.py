"""Client mods: checks every reply passes before it leaves the device.

``private_state_guard`` compares every array in an outgoing reply with the device-private
arrays in the node state (the user embedding) and refuses to send a reply that contains one:
a programming error that would leak the private representation becomes an error reply, never
a message carrying it. With ``FEDMMREC_TRACE_DIR`` set (tests), it also records the SHA-256 of
the private embedding each round, so a test can check independently, on the server side, that
no received array matches it.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from client.state import USER_KEY

TRACE_ENV = "FEDMMREC_TRACE_DIR"


def array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def private_state_guard(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    reply = call_next(msg, context)
    if reply.has_error() or USER_KEY not in context.state.array_records:
        return reply
    private = [a.numpy() for a in context.state.array_records[USER_KEY].values()]
    for record_name, record in reply.content.array_records.items():
        for key, array in record.items():
            value = array.numpy()
            if key.startswith("users") or any(
                value.shape == p.shape and np.array_equal(value, p) for p in private
            ):
                raise RuntimeError(
                    f"refusing to send reply: array {record_name}/{key} is the private user embedding"
                )
    trace_dir = os.environ.get(TRACE_ENV)
    if trace_dir:
        row = {"node": context.node_id, "type": msg.metadata.message_type, "private": [array_sha256(p) for p in private]}
        with open(os.path.join(trace_dir, f"client-{os.getpid()}.jsonl"), "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
    return reply
