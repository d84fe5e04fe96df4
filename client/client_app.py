"""ClientApp: train the item tower and the private user embedding under DP-SGD; evaluate locally.

Handlers read top to bottom: load, train (or rank), reply. The reply carries the item tower's
arrays and metrics only; the user embedding and accountant history stay in the node state.
"""

from __future__ import annotations

import dataclasses
import json
import math

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from client.local_data import local_data
from client.mods import private_state_guard
from client.online import round_examples
from client.state import (
    load_history,
    load_trained_items,
    load_user_embedding,
    pseudonym,
    restore_device_state,
    save_device_state,
    signing_key_path,
)
from client.secure_sum import stage_reply
from client.statistics import scores as released_model_scores
from client.statistics import statistic_reply
from shared.config import model_spec, train_config
from shared.messages import (
    ARRAYS,
    ROUND_KEY,
    SECURE_STAGES,
    TASK_KEY,
    PrivacyRecord,
    TrainMetrics,
    decline_reply,
    evaluation_reply,
    message_config,
    train_reply,
    untrained_reply,
    update_norm,
)
from shared.metrics import (
    metrics_from_rank,
    rank_of,
    rank_percentile,
    sampled_metrics,
    sampled_rng,
)
from shared.models.recommender import Recommender, item_tower_state
from shared.privacy.accounting import epsilon_of, history_to_json
from shared.privacy.spend_signature import device_key, public_pem, sign
from shared.training import planned_round, projected_epsilon, refit_user, train_local

torch.set_num_threads(1)  # one simulated client per core; no oversubscription

app = ClientApp(mods=[private_state_guard])


def _who(context: Context) -> int:
    """This client's index: its partition in a simulation (so runs repeat), its node id on a device."""
    return int(context.node_config.get("partition-id", context.node_id % 100_003))


def _seed(config: dict, context: Context) -> int:
    """Seed of this client's work in this round: by run seed, round and client, so runs repeat."""
    return int(config["seed"]) * 1_000_003 + int(config[ROUND_KEY]) * 7919 + _who(context)


def _model(msg: Message, context: Context, config: dict, num_items: int) -> Recommender:
    """Global item tower from the message, this user's embedding from the node state."""
    model = Recommender(model_spec(config, num_items), num_users=1)
    model.item_tower.load_state_dict(msg.content[ARRAYS].to_torch_state_dict())
    user = load_user_embedding(context)
    if user is not None:
        model.users.weight.data.copy_(user)
    return model


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = message_config(msg)
    data = local_data(dict(context.node_config), config)
    if config.get(TASK_KEY):  # privacy = user: one bounded statistic per release, no training
        restore_device_state(context, config, data.user_id)
        task = str(config[TASK_KEY])
        if task in SECURE_STAGES:  # user-noise = distributed: masked, with this device's noise share
            key_path = signing_key_path(context, config)
            key = device_key(key_path) if key_path is not None else None
            return stage_reply(msg, context, data, task, pseudonym(context), _identity(context), key)
        return statistic_reply(msg, data, task, pseudonym(context))
    restore_device_state(context, config, data.user_id)
    tc, history = train_config(config), load_history(context)
    cap = float(config["epsilon-cap"])
    if tc.dp and cap > 0 and projected_epsilon(history, len(data.train_items), tc) > cap:
        return _decline(msg, history, len(data.train_items), tc, pseudonym(context), _identity(context))
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
        bytes_sent=sum(int(a.numpy().nbytes) for a in arrays.values()),
    )
    privacy = _privacy(result.history, tc, pseudonym(context), _identity(context))
    norm = update_norm(msg.content[ARRAYS], arrays)
    # A non-finite update is the server's to reject (validation); its norm cannot be signed as JSON.
    privacy = dataclasses.replace(privacy, update_norm=norm if math.isfinite(norm) else -1.0)
    return train_reply(msg, arrays, metrics, _signed(privacy, metrics, context, config))


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


def _identity(context: Context) -> str:
    """Who this device is to the server, apart from its pseudonym: its simulated partition, or
    its Flower node id (bound to the key it authenticates with) on a real device. The server
    keeps spend under it, so a device that lost its state cannot start a fresh budget."""
    if "partition-id" in context.node_config and "data-dir" not in context.node_config:
        return f"partition-{int(context.node_config['partition-id'])}"
    return f"node-{context.node_id}"


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


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    config = message_config(msg)
    data = local_data(dict(context.node_config), config)
    if config["privacy"] == "user":  # the released model and this device's own history
        return _ranking_reply(msg, context, data, released_model_scores(msg, data))
    restore_device_state(context, config, data.user_id)
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
    return _ranking_reply(msg, context, data, scores)


def _ranking_reply(msg: Message, context: Context, data, scores) -> Message:
    """Metrics of this device's held-out item under ``scores`` (full ranking and sampled)."""
    rank = rank_of(scores, data.test_item, data.train_items)
    sampled = sampled_metrics(scores, data.test_item, data.train_items, sampled_rng(_who(context)))
    cold = data.test_item in data.cold_items
    return evaluation_reply(
        msg,
        {
            "rank": rank,
            "rank-percentile": rank_percentile(rank, data.num_items, data.train_items, data.test_item),
            "cold": int(cold),
            **metrics_from_rank(rank),
            **sampled,
        },
    )
