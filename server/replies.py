"""One round's train messages and replies: send, file declines, validate, log, and turn each
reply into its ledger entry."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, Message
from flwr.serverapp import Grid

from server.validation import train_reply_problem
from shared.messages import is_decline, server_messages, spend_entry
from shared.privacy.ledger import canonical

MESSAGE_TIMEOUT_S = 3600.0
PULL_INTERVAL_S = 3.0  # what Flower's gRPC grid waits between pulls; its in-memory grid says its own


class RoundDeadline:
    """When a round stops waiting for its train replies: ``seconds`` after its messages went
    out (``round-timeout``). The round loop's one clock, kept in one place so that a test can
    put an event in its place (tests/test_reliability.py: the deadline passes once every
    client but the straggler has answered, on any machine's speed)."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def passed(self, waiting: int) -> bool:
        """Whether to stop waiting; ``waiting``: the replies still missing."""
        return time.monotonic() >= self.end


def send_and_collect(grid: Grid, messages: list[Message], timeout: float) -> list[Message]:
    """Flower's ``Grid.send_and_receive`` with its deadline made explicit: push the messages,
    then pull until every reply is in or the :class:`RoundDeadline` has passed."""
    waiting = set(grid.push_messages(messages))
    deadline, received = RoundDeadline(timeout), []
    while waiting:
        replies = list(grid.pull_messages(waiting))
        received += replies
        waiting -= {reply.metadata.reply_to_message_id for reply in replies}
        if not waiting or deadline.passed(len(waiting)):
            break
        time.sleep(getattr(grid, "pull_interval", PULL_INTERVAL_S))
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
        received = send_and_collect(grid, messages, self.timeout) if messages else []
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
