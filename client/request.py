"""One message's request as the device reads it: resolved once, typed, and the device's data for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flwr.app import Context, Message

from shared.config import DEFAULTS, RunConfig, resolve
from shared.messages import ROUND_KEY, TASK_KEY, TOWER_TASK, message_config


@dataclass(frozen=True)
class DeviceRequest:
    """``settings``: the run settings the server sent (:meth:`shared.config.RunConfig.device_settings`),
    typed and checked as :func:`shared.config.resolve` checks a run's; ``sent``: the message's
    config as it came (what the tower's handlers and the secure stages read beside them)."""

    task: str
    server_round: int
    settings: RunConfig
    sent: dict[str, Any]

    @classmethod
    def of(cls, msg: Message) -> "DeviceRequest":
        sent = message_config(msg)
        settings = resolve(None, {key: value for key, value in sent.items() if key in DEFAULTS})
        return cls(str(sent.get(TASK_KEY, TOWER_TASK)), int(sent.get(ROUND_KEY, 0)), settings, sent)


def request_data(context: Context, request: DeviceRequest, restore: bool = True):
    """The device's data for this request (:func:`client.local_data.local_data`), and, with
    ``restore``, its private state brought back from its state folder into the node state."""
    from client.local_data import local_data
    from client.state import restore_device_state

    data = local_data(dict(context.node_config), request.settings)
    if restore:
        restore_device_state(context, request.settings, data.user_id)
    return data
