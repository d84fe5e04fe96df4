"""The embedded dataset is deterministic and its modalities each carry part of the signal."""

from __future__ import annotations

import numpy as np

from shared.data import leave_last_out, load_dataset
from shared.data.synth import SynthConfig, generate


def test_same_seed_gives_identical_files(tmp_path):
    config = SynthConfig(users=5, items=30, seed=7)
    a, b = generate(tmp_path / "a", config), generate(tmp_path / "b", config)
    for name in ("items.csv", "interactions.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    for image in (a / "images").iterdir():
        assert image.read_bytes() == (b / "images" / image.name).read_bytes()


def test_cold_items_appear_only_as_held_out(small_dataset):
    dataset = load_dataset(small_dataset)
    split = leave_last_out(dataset)
    truth = np.load(small_dataset / "synth_truth.npz")
    designated_cold = set(np.flatnonzero(truth["cold"]).tolist())
    for items in split.train_items:
        assert not designated_cold & set(items.tolist())
    assert designated_cold <= set(split.cold_items.tolist())


def test_text_describes_colour_but_never_shape(small_dataset):
    dataset = load_dataset(small_dataset)
    truth = np.load(small_dataset / "synth_truth.npz")
    from shared.data.synth import COLOUR_WORDS, SHAPES

    colours = list(COLOUR_WORDS)
    for i, text in enumerate(dataset.descriptions):
        if not text:
            continue
        colour = colours[truth["attr_colour"][i]]
        assert any(word in text for word in COLOUR_WORDS[colour])
        assert not any(shape in text.lower().split() for shape in SHAPES)
