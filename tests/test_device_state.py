"""Device state on disk: a restarted client remembers its privacy spend and user embedding;
a corrupt or foreign state file is an error and is left untouched."""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client.client_app import train
from client.state import STATE_FILE, DeviceStateError
from shared.config import resolve
from shared.models.recommender import model_spec
from shared.models.recommender import ItemTower
from shared.privacy.accounting import total_steps


def _context(small_dataset, state_dir, partition: int = 0) -> Context:
    node_config = {"data-dir": str(small_dataset), "partition-id": partition, "state-dir": str(state_dir)}
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def _train_message(feature_cache, server_round: int) -> Message:
    config = resolve(None, {"feature-cache": str(feature_cache), "local-epochs": 1, "privacy": "local"})
    torch.manual_seed(0)
    arrays = ArrayRecord(ItemTower(model_spec(config)).state_dict())
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({**config, "server-round": server_round})})
    return Message(content, dst_node_id=7, message_type="train")


def test_restarted_device_keeps_its_spend_and_refuses_bad_state(small_dataset, feature_cache, tmp_path, monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    # What Flower sets in a ClientApp process before it builds messages.
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 7)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    state_dir = tmp_path / "device"
    first = train(_train_message(feature_cache, 1), _context(small_dataset, state_dir))
    saved = json.loads((state_dir / STATE_FILE).read_text())
    steps_one = int(first.content["metrics"]["steps"])
    assert total_steps(saved["history"]) == steps_one and saved["epsilon"] > 0

    # A new Context is what a restarted SuperNode gets: empty node state, same state folder.
    second = train(_train_message(feature_cache, 2), _context(small_dataset, state_dir))
    saved_two = json.loads((state_dir / STATE_FILE).read_text())
    assert total_steps(saved_two["history"]) == steps_one + int(second.content["metrics"]["steps"])
    assert second.content["metrics"]["epsilon"] > first.content["metrics"]["epsilon"]
    assert saved_two["user-embedding"] != saved["user-embedding"]  # training continued from it

    with pytest.raises(DeviceStateError, match="state of user"):
        train(_train_message(feature_cache, 3), _context(small_dataset, state_dir, partition=1))

    (state_dir / STATE_FILE).write_text('{"format": "fedmmrec-device-state/1", "hist')
    with pytest.raises(DeviceStateError, match=f"{STATE_FILE}: corrupt device state"):
        train(_train_message(feature_cache, 3), _context(small_dataset, state_dir))
    assert (state_dir / STATE_FILE).read_text().endswith('"hist')  # left as it was


def test_a_device_with_a_replay_buffer_trains_on_its_new_interactions_and_a_bounded_replay(small_dataset, feature_cache, tmp_path, monkeypatch):
    """Node setting ``replay-buffer``: after its first round a device trains each round on what
    it has not trained on yet plus at most N of the older interactions; its spend composes."""
    import csv
    import shutil

    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 7)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    folder = tmp_path / "device-data"
    shutil.copytree(small_dataset, folder)
    state_dir = tmp_path / "device"

    def context():
        node_config = {"data-dir": str(folder), "partition-id": 0, "state-dir": str(state_dir), "replay-buffer": 5}
        return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})

    first = train(_train_message(feature_cache, 1), context())
    everything = int(first.content["metrics"]["num-examples"])
    second = train(_train_message(feature_cache, 2), context())  # a restarted device: nothing new yet
    assert everything > 5 and int(second.content["metrics"]["num-examples"]) == 5
    rows = list(csv.DictReader((folder / "interactions.csv").open(encoding="utf-8")))
    user = rows[0]["user_id"]
    mine = {r["item_id"] for r in rows if r["user_id"] == user}
    items = [r["item_id"] for r in csv.DictReader((folder / "items.csv").open(encoding="utf-8")) if r["item_id"] not in mine]
    last = max(int(r["timestamp"]) for r in rows)
    with (folder / "interactions.csv").open("a", encoding="utf-8", newline="") as handle:
        csv.DictWriter(handle, fieldnames=list(rows[0])).writerows(
            [{"user_id": user, "item_id": item, "rating": "4", "timestamp": str(last + k + 1)} for k, item in enumerate(items[:4])]
        )
    third = train(_train_message(feature_cache, 3), context())
    # Four new interactions, the newest now held out for evaluation, the one held out before now a
    # training example: four examples not trained on yet, plus five replayed.
    assert int(third.content["metrics"]["num-examples"]) == 4 + 5
    saved = json.loads((state_dir / STATE_FILE).read_text())
    assert len(saved["trained-items"]) == everything + 4
    assert third.content["metrics"]["epsilon"] > second.content["metrics"]["epsilon"] > first.content["metrics"]["epsilon"]
