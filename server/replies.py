"""One round's train messages and replies: send, file declines, validate, log, and turn each
reply into its ledger entry."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, Message
from flwr.serverapp import Grid

from server.validation import train_reply_problem
from shared.messages import is_decline, server_messages, spend_entry
from shared.privacy.ledger import canonical

MESSAGE_TIMEOUT_S = 3600.0
PULL_INTERVAL_S = 3.0  # what Flower's gRPC grid waits between pulls; its in-memory grid says its own
FIRST_PULL_WAIT_S = 0.1  # then doubled up to the grid's interval: a quick stage is not held 3 s


class Deadline:
    """When the server stops waiting for replies: ``seconds`` after the messages went out, on
    the monotonic clock."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def passed(self, waiting: int) -> bool:
        """Whether to stop waiting; ``waiting``: the replies still missing."""
        return time.monotonic() >= self.end


class RoundDeadline(Deadline):
    """A round's deadline for its train replies (``round-timeout``): a class of its own so that
    a test can put an event in its place and leave every other wait as it is
    (tests/test_reliability.py: the deadline passes once every client but the straggler has
    answered, on any machine's speed)."""


def send_and_collect(
    grid: Grid, messages: Iterable[Message], timeout: float = MESSAGE_TIMEOUT_S, deadline: type[Deadline] = Deadline
) -> list[Message]:
    """Flower's ``Grid.send_and_receive`` with its deadline made explicit: push the messages,
    then pull until every reply is in or ``deadline(timeout)``, counted from the end of the
    push as Flower counts it, has passed.

    Between pulls it waits 0.1 s, then twice as long each time up to the grid's own interval
    (3 s over gRPC, as Flower's grid waits). With Flower's fixed 3 s, a stage of the secure
    sum whose devices answer within a second still waits up to 3 s past its last reply; a long
    round still pulls once every 3 s after its first six pulls."""
    waiting = set(grid.push_messages(list(messages)))
    end, received = deadline(timeout), []
    ceiling = float(getattr(grid, "pull_interval", PULL_INTERVAL_S))
    wait = min(FIRST_PULL_WAIT_S, ceiling)
    while waiting:
        replies = list(grid.pull_messages(waiting))
        received += replies
        waiting -= {reply.metadata.reply_to_message_id for reply in replies}
        if not waiting or end.passed(len(waiting)):
            break
        time.sleep(wait)
        wait = min(2 * wait, ceiling)
    return received


def ok_replies(replies) -> list[Message]:
    good = []
    for reply in replies:
        if reply.has_error():
            print(f"  node {reply.metadata.src_node_id}: error: {reply.error.reason}", flush=True)
        else:
            good.append(reply)
    return good


def rejected_entry(reply: Message, reason: str, server_round: int) -> tuple[str, int, dict[str, Any]]:
    """A rejected reply's ledger entry. Its privacy spend is real (the client trained), so it
    is a client-round entry when its accounting fields are readable; else a bare record."""
    node = reply.metadata.src_node_id
    try:
        entry = {**spend_entry(reply), "rejected": reason}
        canonical(entry)  # finite and serialisable, or the whole round's transaction would fail
        return ("client-round", server_round, entry)
    except (KeyError, TypeError, ValueError):
        return ("client-rejected", server_round, {"client": node, "reason": reason})


@dataclass
class TrainReplies:
    """One round's train replies: who was asked, who trained, who declined at their cap, whose
    reply was rejected (and why), and how many never answered (crashed or too late)."""

    expected: ArrayRecord
    timeout: float
    asked: list[int] = field(default_factory=list)
    trained: list[Message] = field(default_factory=list)
    declined: list[Message] = field(default_factory=list)
    rejected: list[tuple[Message, str]] = field(default_factory=list)
    failed: int = 0

    def add(self, grid: Grid, messages: list[Message]) -> list[Message]:
        """Send ``messages``; file the replies; return this batch's declines."""
        self.asked += [m.metadata.dst_node_id for m in messages]
        received = send_and_collect(grid, messages, self.timeout, RoundDeadline) if messages else []
        answered = ok_replies(received)  # logs error replies (crashed clients)
        self.failed += len(messages) - len(answered)
        if len(received) < len(messages):
            print(f"  {len(messages) - len(received)} clients did not answer within {self.timeout:g} s: dropped", flush=True)
        declined = [r for r in answered if is_decline(r)]
        for reply in declined:
            print(f"  client {reply.metadata.src_node_id} declined: its next round would exceed epsilon-cap", flush=True)
        self.declined += declined
        for reply in answered:
            if reply in declined:
                continue
            problem = train_reply_problem(reply, self.expected)
            if problem is None:
                self.trained.append(reply)
            else:
                print(f"  client {reply.metadata.src_node_id} rejected: {problem}", flush=True)
                self.rejected.append((reply, problem))
        return declined


def collect_train(
    grid: Grid,
    messages: list[Message],
    all_nodes: list[int],
    replace_declined: bool,
    rng: random.Random,
    arrays: ArrayRecord,
    settings: dict[str, Any],
    server_round: int,
    timeout: float = 0.0,
) -> TrainReplies:
    """Send the round's messages; in place of each client that declines, ask one not yet asked.

    Replacement keeps the round's size when clients run out of budget. It is off under central
    DP, whose accounting assumes Poisson sampling and no second draw.
    """
    replies = TrainReplies(expected=arrays, timeout=float(timeout) or MESSAGE_TIMEOUT_S)
    declined = replies.add(grid, messages)
    while replace_declined and declined:
        pool = sorted(set(all_nodes) - set(replies.asked))
        if not pool:
            break
        substitutes = rng.sample(pool, min(len(declined), len(pool)))
        print(f"  asking {len(substitutes)} other clients in place of those that declined", flush=True)
        declined = replies.add(grid, server_messages(substitutes, arrays, settings, server_round))
    return replies
