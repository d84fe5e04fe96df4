"""ClientApp: what a device does with each message, by the task it names (:mod:`client.tasks`).

- ``privacy = user`` (the default): one bounded statistic of the device's history per release
  (masked with its noise share under the secure sum), and ranking with the released model.
  numpy only: the device never imports torch, so it starts fast and stays small; deployed, it
  gets the catalog's content matrix from the server (``receive_catalog``), not from images.
- the item tower's modes: DP-SGD training and ranking in :mod:`client.tower`, imported on the
  first message that needs it.

Handlers read top to bottom: resolve the request, answer its task.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.catalog_content import receive_catalog
from client.mods import private_state_guard
from client.request import DeviceRequest
from client.tasks import handler

app = ClientApp(mods=[private_state_guard, receive_catalog])


@app.train()
def train(msg: Message, context: Context) -> Message:
    request = DeviceRequest.of(msg)
    return handler("train", request)(msg, context, request)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    request = DeviceRequest.of(msg)
    return handler("evaluate", request)(msg, context, request)
