"""``privacy = user`` on the device: send a bounded statistic of its history, rank with the
released model. The user's own vector is computed here from its history and never sent.

The statistic is computed exactly as :mod:`shared.cooccurrence` defines it (unit L2 norm over
all of the user's interactions); the server clips it again, so a device that sends more gains
nothing and weakens no one's guarantee.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message

from client.catalog_content import catalog_content
from client.local_data import LocalData
from client.request import DeviceRequest, request_data
from shared.config import parse_modalities
from shared.item_model import CooccurrenceModel
from shared.messages import ARRAYS, CONTRIBUTION_KEY, contribution_reply, message_config
from shared.releases import DeviceView, release_named


def run_modalities(msg: Message) -> tuple[str, ...]:
    return parse_modalities(message_config(msg).get("modalities", "text,image"))


def contribution(msg: Message, data: LocalData, task: str, node_config: dict) -> np.ndarray:
    """This device's contribution to release ``task`` (:data:`shared.releases.RELEASES`)."""
    release = release_named(task)
    arrays = {key: value.numpy() for key, value in msg.content.array_records.get(ARRAYS, {}).items()}
    view = DeviceView(
        data.train_items, data.num_items, data.validation_item, arrays,
        lambda: catalog_content(msg, node_config, data, run_modalities(msg)),
    )
    return release.contribution(view)


def statistic_reply(msg: Message, data: LocalData, task: str, client_id: str, node_config: dict) -> Message:
    """The reply carrying this device's contribution to release ``task``."""
    vector = contribution(msg, data, task, node_config).astype(np.float32)
    arrays = ArrayRecord({CONTRIBUTION_KEY: Array(vector)})
    return contribution_reply(msg, arrays, len(data.train_items), int(vector.nbytes), client_id, task)


def released_model(msg: Message) -> CooccurrenceModel:
    return CooccurrenceModel.from_arrays({key: value.numpy() for key, value in msg.content[ARRAYS].items()})


def scores(msg: Message, data: LocalData, node_config: dict) -> np.ndarray:
    """Every catalog item's score for this device's user under the released model."""
    model = released_model(msg)
    content = catalog_content(msg, node_config, data, run_modalities(msg)) if model.content_weight else None
    return model.scores(data.train_items, content)


def send_statistic(msg: Message, context: Context, request: DeviceRequest) -> Message:
    """The task handler of ``privacy = user, user-noise = central``: the bounded statistic of
    release ``request.task``, in the clear (the server adds the noise). A real device sends it
    only where its own node config says ``user-noise = central``: the server's settings alone
    cannot switch a device from the secure sum to handing over its statistic."""
    from client.local_data import deployed
    from client.state import pseudonym

    if deployed(context.node_config) and str(context.node_config.get("user-noise", "distributed")) != "central":
        from shared.secure_sum.session import ProtocolRefusal

        raise ProtocolRefusal(
            "the server asks for this device's statistic in the clear (user-noise = central); its node config does not allow "
            "it (user-noise = central there): refusing"
        )
    return statistic_reply(msg, request_data(context, request), request.task, pseudonym(context), dict(context.node_config))
