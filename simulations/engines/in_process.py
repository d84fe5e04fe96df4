"""The in-process engine: the real ServerApp logic and the real ClientApp in one Python
process, devices answered one after another, no Ray and no worker processes.

What it is for: runs whose question is what the server and the devices compute, not how
messages travel (the audit's tests of a lying server, the default mode's studies, the check
that a default-mode device never imports torch). Every message goes through the ClientApp's
own ``__call__`` (its mods included) with one :class:`flwr.app.Context` per device kept across
the run, exactly as a SuperNode keeps it; a handler that raises becomes an error reply, as
Flower's simulation engine makes it. What it does not have: concurrency, round timeouts (a
reply is never late) and Flower's transport. ``fedmmrec run`` and the studies use Flower's
simulation engine; this one is chosen with ``engine="in-process"`` in
:func:`simulations.engines.simulate.simulate`.
"""

from __future__ import annotations

import copy
import secrets
import uuid
from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

SERVER_NODE_ID = 0
FIRST_NODE_ID = 1_000  # device K has node id FIRST_NODE_ID + K (partition K)
CLIENT_APP_RAISED_EXCEPTION = 2  # flwr's ErrorCode.CLIENT_APP_RAISED_EXCEPTION


class InProcessGrid(Grid):
    """A :class:`flwr.serverapp.Grid` whose ``num_nodes`` devices are ``client_app`` called in
    this process; device K reads partition K (``node_config["partition-id"]``)."""

    def __init__(self, client_app: ClientApp, num_nodes: int) -> None:
        self.client_app = client_app
        self.run_id = secrets.randbits(63)  # a fresh id per run, as a SuperLink gives (devices key what they answered by it)
        self.contexts = {
            FIRST_NODE_ID + k: Context(
                run_id=self.run_id, node_id=FIRST_NODE_ID + k,
                node_config={"partition-id": k, "num-partitions": num_nodes}, state=RecordDict(), run_config={},
            )
            for k in range(num_nodes)
        }
        self._replies: dict[str, Message] = {}
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = self.run_id, SERVER_NODE_ID, 1

    # -- what the server uses ------------------------------------------------------------
    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return list(self.pull_messages(self.push_messages(messages)))

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = str(uuid.uuid4())
            message.metadata.__dict__["_message_id"] = message_id
            self._replies[message_id] = self._deliver(message)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(message_id) for message_id in message_ids if message_id in self._replies]

    # -- the device side -----------------------------------------------------------------
    def _deliver(self, message: Message) -> Message:
        node = message.metadata.dst_node_id
        if node not in self.contexts:
            raise ValueError(f"no device with node id {node}")
        received = copy.deepcopy(message)  # the device works on its own copy, as after transport
        TaskIdentity.node_id = node  # the device's process builds its reply
        try:
            reply = self.client_app(received, self.contexts[node])
        except Exception as exc:  # noqa: BLE001 - Flower turns any ClientApp exception into an error reply
            reply = Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(exc)}:<'{exc}'>"), reply_to=received)
        finally:
            TaskIdentity.node_id = SERVER_NODE_ID
        reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())
        return reply

    # -- the rest of Flower's Grid interface ---------------------------------------------
    def set_run(self, run) -> None:  # one run per grid
        pass

    @property
    def run(self):
        """An empty run record (no FAB, no SuperLink): this engine runs code already imported."""
        from flwr.supercore.run import Run

        return Run.create_empty(self.run_id)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)
