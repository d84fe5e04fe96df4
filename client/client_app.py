"""ClientApp: what a device does with each message, by the run's mode.

- ``privacy = user`` (the default): one bounded statistic of the device's history per release
  (masked with its noise share under the secure sum), and ranking with the released model.
  numpy only: the device never imports torch, so it starts fast and stays small; deployed, it
  gets the catalog's content matrix from the server (``receive_catalog``), not from images.
- the item tower's modes: DP-SGD training and ranking in :mod:`client.tower`, imported on the
  first message that needs it.

Handlers read top to bottom: load, answer, reply.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client.catalog_content import receive_catalog
from client.local_data import local_data
from client.mods import private_state_guard
from client.ranking import ranking_reply
from client.secure_sum import stage_reply
from client.state import identity, pseudonym, restore_device_state, signing_key_path
from client.statistics import scores as released_model_scores
from client.statistics import statistic_reply
from shared.messages import RANK_TASK, SECURE_STAGES, TASK_KEY, message_config
from shared.privacy.spend_signature import device_key

app = ClientApp(mods=[private_state_guard, receive_catalog])


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = message_config(msg)
    data = local_data(dict(context.node_config), config)
    restore_device_state(context, config, data.user_id)
    if not config.get(TASK_KEY):  # a mode that trains the item tower
        from client import tower

        return tower.train(msg, context, config, data)
    task = str(config[TASK_KEY])  # privacy = user: one bounded statistic per release, no training
    if task in SECURE_STAGES:  # user-noise = distributed: masked, with this device's noise share
        key_path = signing_key_path(context, config)
        key = device_key(key_path) if key_path is not None else None
        return stage_reply(msg, context, data, task, pseudonym(context), identity(context), key)
    return statistic_reply(msg, data, task, pseudonym(context), dict(context.node_config))


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    config = message_config(msg)
    data = local_data(dict(context.node_config), config)
    if config.get(TASK_KEY) == RANK_TASK:  # the released model and this device's own history
        return ranking_reply(msg, context, data, released_model_scores(msg, data, dict(context.node_config)))
    restore_device_state(context, config, data.user_id)
    from client import tower

    return tower.evaluate(msg, context, config, data)
