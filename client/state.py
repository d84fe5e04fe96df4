"""Device-private state that persists across rounds: the user embedding and the DP history.

Kept in the node's ``context.state`` (Flower keeps it for the node across rounds). It is never
put into a reply: only the item tower travels.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context

from shared.privacy import History, history_from_json, history_to_json

USER_KEY = "private-user"
PRIVACY_KEY = "privacy"


def load_user_embedding(context: Context):
    """The stored user embedding tensor [1, dim], or None before the first training round."""
    if USER_KEY not in context.state.array_records:
        return None
    return context.state.array_records[USER_KEY].to_torch_state_dict()["weight"]


def save_user_embedding(context: Context, weight) -> None:
    context.state[USER_KEY] = ArrayRecord({"weight": weight.detach().clone()})


def load_history(context: Context) -> History:
    if PRIVACY_KEY not in context.state.config_records:
        return []
    return history_from_json(str(context.state.config_records[PRIVACY_KEY]["history"]))


def save_history(context: Context, history: History, epsilon: float) -> None:
    context.state[PRIVACY_KEY] = ConfigRecord({"history": history_to_json(history), "epsilon": float(epsilon)})
