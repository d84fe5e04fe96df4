"""What a device does with each task a message names: one table per message type.

A message's config is resolved once into a :class:`DeviceRequest` (the task, the round and
the run settings the server sent, typed and checked as :func:`shared.config.resolve` checks a
run's); the handler its task names answers it. The tasks come from the mechanisms' own lists:
one per release of :data:`shared.releases.RELEASES` (a bounded statistic), one per stage of
the secure sum (:data:`shared.messages.SECURE_STAGES`), the ranking with a released model, and
the item tower's training and evaluation (a message with no task). A mechanism with new device
behaviour adds its handler here, under its task's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flwr.app import Context, Message

from shared.config import DEFAULTS, RunConfig, resolve
from shared.messages import RANK_TASK, ROUND_KEY, SECURE_STAGES, TASK_KEY, message_config
from shared.releases import RELEASES

TOWER_TASK = ""  # a message that names no task: the item tower's modes (DP-SGD training, ranking with the tower)


@dataclass(frozen=True)
class DeviceRequest:
    """One message's request, resolved once: ``settings`` are the run settings the server sent
    (:meth:`shared.config.RunConfig.device_settings`), typed; ``sent``: the message's config as
    it came (what the tower's handlers and the secure stages read beside the settings)."""

    task: str
    server_round: int
    settings: RunConfig
    sent: dict[str, Any]

    @classmethod
    def of(cls, msg: Message) -> "DeviceRequest":
        sent = message_config(msg)
        settings = resolve(None, {key: value for key, value in sent.items() if key in DEFAULTS})
        return cls(str(sent.get(TASK_KEY, TOWER_TASK)), int(sent.get(ROUND_KEY, 0)), settings, sent)


Handler = Callable[[Message, Context, DeviceRequest], Message]


def _data(context: Context, request: DeviceRequest):
    from client.local_data import local_data

    return local_data(dict(context.node_config), request.settings)


def _restored(context: Context, request: DeviceRequest):
    from client.state import restore_device_state

    data = _data(context, request)
    restore_device_state(context, request.settings, data.user_id)
    return data


def train_tower(msg: Message, context: Context, request: DeviceRequest) -> Message:
    from client import tower  # torch: imported on the first message that needs it

    return tower.train(msg, context, request.sent, _restored(context, request))


def evaluate_tower(msg: Message, context: Context, request: DeviceRequest) -> Message:
    from client import tower

    return tower.evaluate(msg, context, request.sent, _restored(context, request))


def send_statistic(msg: Message, context: Context, request: DeviceRequest) -> Message:
    """``privacy = user, user-noise = central``: the bounded statistic in the clear."""
    from client.state import pseudonym
    from client.statistics import statistic_reply

    return statistic_reply(msg, _restored(context, request), request.task, pseudonym(context), dict(context.node_config))


def secure_stage(msg: Message, context: Context, request: DeviceRequest) -> Message:
    """``user-noise = distributed``: one stage of the secure sum, masked with this device's noise share."""
    from client.secure_sum import stage_reply
    from client.state import identity, pseudonym, signing_key_path
    from shared.privacy.spend_signature import device_key

    data = _restored(context, request)
    key_path = signing_key_path(context, request.settings)
    key = device_key(key_path) if key_path is not None else None
    return stage_reply(msg, context, data, request.task, pseudonym(context), identity(context), key)


def rank_with_released_model(msg: Message, context: Context, request: DeviceRequest) -> Message:
    """Rank the catalog with the released item model and this device's own history."""
    from client.ranking import ranking_reply
    from client.statistics import scores

    data = _data(context, request)
    return ranking_reply(msg, context, data, scores(msg, data, dict(context.node_config)))


TRAIN_TASKS: dict[str, Handler] = {
    TOWER_TASK: train_tower,
    **{release.name: send_statistic for release in RELEASES},
    **{stage: secure_stage for stage in SECURE_STAGES},
}
EVALUATE_TASKS: dict[str, Handler] = {TOWER_TASK: evaluate_tower, RANK_TASK: rank_with_released_model}


def handler(table: dict[str, Handler], request: DeviceRequest) -> Handler:
    """The task's handler; a task this device does not know is an error that names the known ones."""
    if request.task not in table:
        raise ValueError(f"unknown task {request.task!r}; this device answers {', '.join(repr(t) for t in table)}")
    return table[request.task]
