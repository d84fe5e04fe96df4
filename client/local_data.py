"""Find this device's data: one ClientApp, two ways to find it.

- Deployment: ``node_config["data-dir"]`` is the device's own dataset folder (same format as
  any dataset; its interactions are this user's). A mode that trains the item tower needs the
  catalog's backbone features, cached on the device in ``node_config["feature-cache"]`` or else
  ``<state-dir>/features``, so they are computed once per catalog and survive SuperNode
  restarts; the default mode needs neither them nor the images (the server ships the content
  matrix: :mod:`client.catalog_content`).
- Simulation: ``node_config["partition-id"]`` picks user ``k`` of the split of the dataset
  folder the server names in its config (one SuperNode per user).

Loaded once per process (simulation actors serve many rounds and users). The catalog features
are read (or computed) on first use only, come from the on-disk cache and are shared by all
partitions. They stay numpy arrays: torch is imported only when a mode trains or ranks with the
item tower (``LocalData.catalog``), so a device in the default mode never loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.data import load_dataset, split_for
from shared.features import ItemFeatures, load_or_compute_features

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LocalData:
    """What one device trains and evaluates on (item indices into the public catalog)."""

    user_id: str
    num_items: int  # the public catalog's size (items.csv)
    train_items: np.ndarray
    test_item: int
    cold_items: frozenset[int]
    held_out_items: np.ndarray  # cold-start protocol: items that do not exist at training time
    on_device: bool = False  # a real device (its own data-dir), not a simulated partition
    validation_item: int = -1  # the most recent training interaction (for on-device validation)
    data_dir: str = ""
    feature_cache: str = ""

    @property
    def features(self) -> ItemFeatures:
        """The public catalog's backbone features (numpy), loaded on first use, shared per process."""
        return _features(self.data_dir, self.feature_cache, _data_version(self.data_dir))

    @property
    def catalog(self) -> dict[str, torch.Tensor]:
        """The catalog as the item tower's input tensors (torch is imported here, on first use)."""
        return _catalog_tensors(self.features, tuple(int(i) for i in self.held_out_items))


def _data_version(data_dir: str) -> tuple:
    """What tells the cache that the data has grown: the CSVs' sizes and modification times
    (a device appends new interactions between rounds; a simulated one may be continued on
    grown data in the same worker process)."""
    out = []
    for name in ("items.csv", "interactions.csv"):
        try:
            stat = (Path(data_dir) / name).stat()
            out.append((stat.st_size, stat.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def _load_split(data_dir: str, cold_fraction: float = 0.0, seed: int = 0, evaluate_on: str = "test", time_cut: float = 0.0):
    return _load_split_version(data_dir, cold_fraction, seed, evaluate_on, time_cut, _data_version(data_dir))


@lru_cache(maxsize=4)
def _load_split_version(data_dir: str, cold_fraction: float, seed: int, evaluate_on: str, time_cut: float, version: tuple):
    dataset = load_dataset(data_dir, check_images=False, need_images=False)  # the features' loader needs them, when used
    split = split_for(dataset, {"cold-start-items": cold_fraction, "seed": seed, "evaluate-on": evaluate_on, "time-cut": time_cut})
    cold_items = frozenset(int(i) for i in split.cold_items)
    return dataset, split, cold_items


@lru_cache(maxsize=4)
def _features(data_dir: str, cache_dir: str, version: tuple) -> ItemFeatures:
    return load_or_compute_features(load_dataset(data_dir), cache_dir or None, progress=False)


_TENSORS: dict[tuple[int, tuple[int, ...]], tuple[ItemFeatures, dict]] = {}


def _catalog_tensors(features: ItemFeatures, held_out: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """One set of tensors per loaded catalog and hold-out (kept with the features they view)."""
    key = (id(features), held_out)
    if key not in _TENSORS or _TENSORS[key][0] is not features:
        from shared.models.recommender import catalog_tensors

        if len(_TENSORS) >= 4:
            _TENSORS.clear()
        _TENSORS[key] = (features, catalog_tensors(features, np.asarray(held_out, dtype=np.int64)))
    return _TENSORS[key][1]


def _device_cache_dir(node_config: dict) -> str:
    """A device's feature cache: its own, never the server's path (which means nothing here)."""
    if node_config.get("feature-cache"):
        return str(node_config["feature-cache"])
    if node_config.get("state-dir"):
        return str(Path(str(node_config["state-dir"])) / "features")
    return ""


def deployed(node_config: Mapping[str, Any]) -> bool:
    """A real device: its node config names its own dataset folder (a simulated one has a partition)."""
    return "data-dir" in node_config


def local_data(node_config: dict, server_config: Mapping[str, Any]) -> LocalData:
    """Resolve the device's data from its node config, else from the server's dataset + partition."""
    on_device = deployed(node_config)
    if on_device:  # the cold-start hold-out is a simulation protocol: a device's folder is used as it is
        data_dir, partition = str(node_config["data-dir"]), int(node_config.get("partition-id", 0))
        cache_dir, cold = _device_cache_dir(node_config), (0.0, 0, "test", 0.0)
    else:
        data_dir, partition = str(server_config["data-dir"]), int(node_config["partition-id"])
        cache_dir = str(server_config.get("feature-cache", ""))
        cold = (
            float(server_config.get("cold-start-items", 0.0)), int(server_config.get("seed", 0)),
            str(server_config.get("evaluate-on", "test")), float(server_config.get("time-cut", 0.0)),
        )
    dataset, split, cold_items = _load_split(data_dir, *cold)
    if not 0 <= partition < len(split.users):
        raise ValueError(
            f"{data_dir}: partition {partition} out of range: the dataset has {len(split.users)} "
            f"users with enough interactions; run with num-supernodes={len(split.users)}"
        )
    return LocalData(
        user_id=dataset.user_ids[split.users[partition]],
        num_items=dataset.num_items,
        train_items=split.train_items[partition],
        test_item=int(split.test_item[partition]),
        # A device sees only its own interactions, so it cannot tell which items nobody has
        # trained on: cold-item metrics exist in simulations only.
        cold_items=frozenset() if on_device else cold_items,
        held_out_items=split.held_out_items,
        on_device=on_device,
        validation_item=int(split.validation_item[partition]) if len(split.validation_item) else -1,
        data_dir=data_dir,
        feature_cache=cache_dir,
    )
