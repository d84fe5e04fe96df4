"""On the device, between rounds: a new interaction changes the user's own vector at once.

Nothing is sent and nothing is spent: the user's vector is private post-processing of public
(released or exported) item parameters and the device's own history. So the next
recommendation reflects what the user just did without waiting for a round.

- Under the user-level model the user's vector is its history times the released item factors
  (:meth:`CooccurrenceModel.user_vector`): a new interaction adds that item's factor, exactly,
  and the content profile moves with it.
- Under the item tower the user's vector is an embedding fitted to the item embeddings: a new
  interaction takes a few BPR steps on it (item embeddings fixed), over the new item and
  examples replayed from the device's bounded buffer of past interactions, so the vector
  follows the new taste without forgetting the old (experience replay).

:class:`ReplayBuffer` keeps at most ``replay-buffer`` past interactions (a node setting): the
most recent half as they come, the rest a uniform reservoir sample of everything older, so a
device with a long history keeps a bounded, representative memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from client.exports import Export, exported_model_of, load_export
from shared.explain import Explanation

DEFAULT_REPLAY = 200  # node config "replay-buffer" overrides it


@dataclass
class ReplayBuffer:
    """A bounded memory of past interactions: recent ones kept in order, older ones sampled."""

    capacity: int = DEFAULT_REPLAY
    recent: list[int] = field(default_factory=list)
    reservoir: list[int] = field(default_factory=list)
    seen_older: int = 0  # how many items have left ``recent`` (the reservoir's population)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def __post_init__(self) -> None:
        if self.capacity < 2:
            raise ValueError(f"replay-buffer must be at least 2 (got {self.capacity})")

    def add(self, item: int) -> None:
        self.recent.append(int(item))
        if len(self.recent) > self.capacity // 2:
            self._retire(self.recent.pop(0))

    def _retire(self, item: int) -> None:
        """Reservoir sampling (Vitter's algorithm R): each older item stays with equal chance."""
        self.seen_older += 1
        room = self.capacity - self.capacity // 2
        if len(self.reservoir) < room:
            self.reservoir.append(item)
        else:
            slot = int(self.rng.integers(self.seen_older))
            if slot < room:
                self.reservoir[slot] = item

    def items(self) -> list[int]:
        return self.reservoir + self.recent

    def __len__(self) -> int:
        return len(self.reservoir) + len(self.recent)


def round_examples(train_items: np.ndarray, trained: set[int], replay: int, seed: int) -> np.ndarray:
    """What a device trains on in a round: with ``replay-buffer`` (node config) N > 0, the
    interactions it has not trained on yet and at most N of the older ones, drawn uniformly
    (experience replay: bounded work per round, old taste not forgotten); with 0 (the
    default), all of its interactions. The DP accounting follows: the sample rate is the
    batch over the examples of the round."""
    items = np.asarray(train_items, dtype=np.int64)
    if replay <= 0 or not trained:
        return items
    new = items[~np.isin(items, list(trained))]
    old = items[np.isin(items, list(trained))]
    if len(old) > replay:
        old = np.sort(np.random.default_rng(seed).choice(old, size=replay, replace=False))
    return np.concatenate([new, old])


class OnlineUser:
    """One device's user over an export: ``observe`` a new interaction, then ``top`` at once."""

    def __init__(
        self,
        model_dir: "str | Path | Export",
        history: list[str],
        user_state: str | Path | None = None,
        replay: int = DEFAULT_REPLAY,
        steps: int = 5,
        lr: float = 0.05,
        seed: int = 0,
    ) -> None:
        self.export: Export = model_dir if isinstance(model_dir, Export) else load_export(model_dir)
        self.model = exported_model_of(self.export)
        self.index = {item: i for i, item in enumerate(self.export.ids)}
        self.history: list[int] = []
        self.buffer = ReplayBuffer(replay, rng=np.random.default_rng(seed))
        self.rng = np.random.default_rng(seed + 1)
        self.steps, self.lr = steps, lr
        for item in history:
            self._remember(self._lookup(item))
        self.user = self.model.user(self.history, user_state, required=False)

    def _lookup(self, item: str) -> int:
        if item not in self.index:
            raise ValueError(f"unknown item id {item!r}: not in the export's catalog")
        return self.index[item]

    def _remember(self, index: int) -> None:
        self.history.append(index)
        self.buffer.add(index)

    def observe(self, item: str) -> None:
        """A new interaction: update the user's vector now (nothing leaves the device)."""
        index = self._lookup(item)
        self._remember(index)
        self.user = self.model.updated(self.user, self.history, index, self)

    def scores(self) -> np.ndarray:
        scores = np.asarray(self.model.scores(self.user, self.history), dtype=np.float64).copy()
        scores[self.history] = -np.inf
        return scores

    def top(self, k: int = 10) -> list[Explanation]:
        scores = self.scores()
        best = np.argpartition(-scores, k)[:k] if k < len(scores) else np.arange(len(scores))
        best = best[np.argsort(-scores[best], kind="stable")]
        return [Explanation(self.export.ids[i], float(scores[i]), {}) for i in best]
