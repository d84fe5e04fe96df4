"""What a device does with each message: the handler its task names, in the table of the
mechanism its settings name.

A message's config is resolved once into a :class:`~client.request.DeviceRequest`; the
mechanism registry (:data:`server.mechanisms.MECHANISMS`, light: no torch, no server state)
says which mechanism the settings select, and that mechanism's ``train_tasks()`` or
``evaluate_tasks()`` which handler answers the task. A mechanism with device behaviour of its
own brings its handlers in its own folder; this module holds the item tower's, which import
torch only when called.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message

from client.request import DeviceRequest, request_data
from server.mechanisms import mechanism_class  # the registry only: numpy and Flower, no torch

Handler = Callable[[Message, Context, DeviceRequest], Message]


def train_tower(msg: Message, context: Context, request: DeviceRequest) -> Message:
    from client import tower  # torch: imported on the first message that needs it

    return tower.train(msg, context, request.sent, request_data(context, request))


def evaluate_tower(msg: Message, context: Context, request: DeviceRequest) -> Message:
    from client import tower

    return tower.evaluate(msg, context, request.sent, request_data(context, request))


def handler(message_type: str, request: DeviceRequest) -> Handler:
    """The handler of ``request``'s task for a ``train`` or ``evaluate`` message; a task the
    selected mechanism does not know is an error that names the ones it does."""
    mechanism = mechanism_class(request.settings.flat())
    table = mechanism.train_tasks() if message_type == "train" else mechanism.evaluate_tasks()
    if request.task not in table:
        raise ValueError(
            f"task {request.task!r} is not one of mechanism {mechanism.name}'s {message_type} tasks: {', '.join(repr(t) for t in table)}"
        )
    return table[request.task]
