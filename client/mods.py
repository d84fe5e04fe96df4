"""Client mods: checks every reply passes before it leaves the device.

``private_state_guard`` compares every array in an outgoing reply with the device-private
arrays in the node state (the user embedding) and refuses to send a reply that contains one:
a programming error that would leak the private representation becomes an error reply, never
a message carrying it.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from shared.array_values import values
from client.state import USER_KEY


def private_state_guard(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    reply = call_next(msg, context)
    if reply.has_error() or USER_KEY not in context.state.array_records:
        return reply
    private = [values(a) for a in context.state.array_records[USER_KEY].values()]
    for record_name, record in reply.content.array_records.items():
        for key, array in record.items():
            value = values(array)
            if key.startswith("users") or any(
                value.shape == p.shape and np.array_equal(value, p) for p in private
            ):
                raise RuntimeError(
                    f"refusing to send reply: array {record_name}/{key} is the private user embedding"
                )
    return reply
