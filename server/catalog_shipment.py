"""Ship the public catalog's content matrix to deployed devices, once per device per run.

A device scores the catalog's content when it ranks with the released model and when it
computes its selection vote. A simulated device computes the matrix from the feature cache it
shares with the server; a deployed one (``deployment = true``) should need neither the
catalog's images nor the backbones (nor torch) to do so. So the server, which computed the
matrix from the public catalog once (the run keeps it in ``catalog.npz``), sends it with the
first message that carries the released model to a device, and its SHA-256 with every such
message. The device checks the hash, keeps the matrix in its state folder under that hash
(:mod:`client.catalog_content`) and says so in its reply; from then on the server sends that
device the hash alone. A device that lost its copy gets an error on the next message, and the
server sends the matrix again the time after (it only trusts a reply that says "held").

:class:`CatalogShipment` wraps the run's :class:`flwr.serverapp.Grid`, so the releases, the
secure sum's stages and the evaluation need not know about it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid

from server.replies import PULL_INTERVAL_S
from shared.checksums import content_sha256
from shared.messages import ARRAYS, CATALOG, CATALOG_CONTENT_KEY, CATALOG_HELD_KEY, CATALOG_SHA_KEY, CONFIG

RELEASED_MODEL_KEY = "content-weight"  # an array every released model carries (CooccurrenceModel.to_arrays)


def carries_released_model(message: Message) -> bool:
    """Whether the device will score the catalog's content for this message."""
    return ARRAYS in message.content.array_records and RELEASED_MODEL_KEY in message.content[ARRAYS]


class CatalogShipment(Grid):
    """``grid`` whose messages carrying the released model carry the catalog content's hash, and
    the content itself to devices that have not said they hold it."""

    def __init__(self, grid: Grid, content: np.ndarray) -> None:
        self.grid = grid
        self.content = np.ascontiguousarray(content, dtype=np.float64)
        self.digest = content_sha256(self.content)
        self.record = ArrayRecord({CATALOG_CONTENT_KEY: Array(self.content)})
        self.holders: set[int] = set()
        self.shipped: dict[int, int] = {}  # node -> times the content was sent to it

    def _prepare(self, message: Message) -> Message:
        if not carries_released_model(message):
            return message
        message.content[CONFIG][CATALOG_SHA_KEY] = self.digest
        node = message.metadata.dst_node_id
        if node not in self.holders:
            message.content[CATALOG] = self.record
            self.shipped[node] = self.shipped.get(node, 0) + 1
        return message

    def _note(self, reply: Message) -> Message:
        node = reply.metadata.src_node_id
        if reply.has_error():
            self.holders.discard(node)  # it may have lost its copy: send it again next time
        elif CATALOG in reply.content.config_records and reply.content[CATALOG].get(CATALOG_HELD_KEY) == self.digest:
            self.holders.add(node)
        return reply

    # -- what the server uses ------------------------------------------------------------
    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        sent = [self._prepare(m) for m in messages]
        return [self._note(r) for r in self.grid.send_and_receive(sent, timeout=timeout)]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages([self._prepare(m) for m in messages])

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._note(r) for r in self.grid.pull_messages(message_ids)]

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    @property
    def pull_interval(self) -> float:
        """The wrapped grid's wait between pulls (:func:`server.replies.send_and_collect` reads it)."""
        return float(getattr(self.grid, "pull_interval", PULL_INTERVAL_S))

    # -- the rest of Flower's Grid interface, unchanged ----------------------------------
    def set_run(self, run_id: int) -> None:
        self.grid.set_run(run_id)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)
