"""The item tower's modes on the device (``privacy = local / central / both / none``): train
the tower and the private user embedding under DP-SGD, and rank with them.

Kept apart from :mod:`client.client_app` so that torch (and Opacus) are imported only by a
device whose mode trains a model: the default mode's device computes numpy statistics only.
The reply carries the item tower's arrays and metrics only; the user embedding and the
accountant history stay in the node state.
"""

from __future__ import annotations

import dataclasses
import json
import math

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message

from client.local_data import LocalData
from client.online import round_examples
from client.ranking import ranking_reply
from client.state import (
    identity,
    load_history,
    load_trained_items,
    load_user_embedding,
    pseudonym,
    save_device_state,
    signing_key_path,
    who,
)
from shared.models.recommender import model_spec
from shared.training import train_config
from shared.array_values import nbytes
from shared.messages import (
    ARRAYS,
    ROUND_KEY,
    PrivacyRecord,
    TrainMetrics,
    decline_reply,
    train_reply,
    untrained_reply,
    update_norm,
)
from shared.models.recommender import Recommender, item_tower_state
from shared.privacy.accounting import epsilon_of, history_to_json
from shared.privacy.spend_signature import device_key, public_pem, sign
from shared.training import planned_round, projected_epsilon, refit_user, train_local

torch.set_num_threads(1)  # one simulated client per core; no oversubscription


def _seed(config: dict, context: Context) -> int:
    """Seed of this client's work in this round: by run seed, round and client, so runs repeat."""
    return int(config["seed"]) * 1_000_003 + int(config[ROUND_KEY]) * 7919 + who(context)


def _model(msg: Message, context: Context, config: dict, num_items: int) -> Recommender:
    """Global item tower from the message, this user's embedding from the node state."""
    model = Recommender(model_spec(config, num_items), num_users=1)
    model.item_tower.load_state_dict(msg.content[ARRAYS].to_torch_state_dict())
    user = load_user_embedding(context)
    if user is not None:
        model.users.weight.data.copy_(user)
    return model


def train(msg: Message, context: Context, config: dict, data: LocalData) -> Message:
    """One round of DP-SGD on this device's history (or a decline at its epsilon cap)."""
    tc, history = train_config(config), load_history(context)
    cap = float(config["epsilon-cap"])
    if tc.dp and cap > 0 and projected_epsilon(history, len(data.train_items), tc) > cap:
        return _decline(msg, history, len(data.train_items), tc, pseudonym(context), identity(context))
    # Seeded by partition (simulation) so runs repeat; by node id on a device. The seed is set
    # before the model is built: a first-round user embedding must not depend on which other
    # clients this worker process served before.
    seed = _seed(config, context)
    torch.manual_seed(seed)
    model = _model(msg, context, config, data.num_items)
    # DP noise: seeded in a simulation (runs repeat); from OS entropy on a real device, where
    # the server knows every seed above and could otherwise regenerate the noise.
    noise_seed = None if data.on_device else seed
    examples = round_examples(data.train_items, load_trained_items(context), int(context.node_config.get("replay-buffer", 0)), seed)
    result = train_local(model, data.catalog, examples, tc, history, seed, unavailable=data.held_out_items, noise_seed=noise_seed)
    save_device_state(context, config, data.user_id, model.users.weight, result.history, result.epsilon, set(examples.tolist()))

    arrays = ArrayRecord(item_tower_state(model))
    metrics = TrainMetrics(
        num_examples=result.num_examples,
        train_loss=result.loss,
        epsilon=result.epsilon,
        steps=result.steps,
        sample_rate=result.sample_rate,
        bytes_sent=nbytes(arrays),
    )
    privacy = _privacy(result.history, tc, pseudonym(context), identity(context))
    norm = update_norm(msg.content[ARRAYS], arrays)
    # A non-finite update is the server's to reject (validation); its norm cannot be signed as JSON.
    privacy = dataclasses.replace(privacy, update_norm=norm if math.isfinite(norm) else -1.0)
    return train_reply(msg, arrays, metrics, _signed(privacy, metrics, context, config))


def evaluate(msg: Message, context: Context, config: dict, data: LocalData) -> Message:
    """Rank the catalog with the global tower and this device's user embedding."""
    if load_user_embedding(context) is None:  # never trained: no user representation to rank with
        return untrained_reply(msg)
    model = _model(msg, context, config, data.num_items).eval()
    refit_steps = int(config["eval-refit-steps"])
    if refit_steps:
        scores = refit_user(
            model, data.catalog, data.train_items, refit_steps, _seed(config, context), unavailable=data.held_out_items
        ).numpy()
    else:
        scores = model.score_all(0, data.catalog).numpy()
    return ranking_reply(msg, context, data, scores)


def _signed(privacy: PrivacyRecord, metrics: TrainMetrics, context: Context, config: dict) -> ConfigRecord:
    """The privacy record, signed with the device's key (its SuperNode's ``auth-key``, else a
    key kept with its state); without either, it goes unsigned."""
    record = privacy.record()
    key_path = signing_key_path(context, config)
    if key_path is None:
        return record
    key = device_key(key_path)
    fields = {**dict(metrics.record()), **dict(record), "round": int(config[ROUND_KEY]), "client": privacy.client_id,
              "history": json.loads(privacy.history)}
    record["signature"] = sign(key, fields)
    record["public-key"] = public_pem(key)
    return record


def _privacy(history, tc, client_id: str, identity: str) -> PrivacyRecord:
    """Accounting metadata for the server's privacy ledger (no data)."""
    return PrivacyRecord(
        client_id=client_id,
        identity=identity,
        history=history_to_json(history),
        noise_multiplier=tc.noise_multiplier if tc.dp else 0.0,
        clip_norm=tc.clip_norm,
        batch_size=tc.batch_size,
        poisson=bool(tc.dp),
        accountant=tc.accountant,
        delta=tc.delta,
    )


def _decline(msg: Message, history, n: int, tc, client_id: str, identity: str) -> Message:
    """Reply without training: the next round would push this client past its epsilon cap."""
    rate, _ = planned_round(n, tc)
    metrics = TrainMetrics(
        num_examples=n, train_loss=0.0, epsilon=epsilon_of(history, tc.delta, tc.accountant), steps=0,
        sample_rate=rate, bytes_sent=0, declined=True,
    )
    return decline_reply(msg, metrics, _privacy(history, tc, client_id, identity))
