"""Deterministic synthetic multimodal catalog in the fedmmrec dataset format.

Why it exists: the main job and the tests need a dataset that ships with the code (the real
MovieLens pack may not be redistributed), and one whose structure we know, so that "the model
learned something" is checkable.

Every item has latent attributes. Its *image* (a rendered PNG) shows shape, colour, texture
and layout; its *description* (English text) tells theme, mood and colour. Users prefer some
attribute values; colour is seen by both modalities, shape and texture only by the image, theme
and mood only by the text. So each modality carries part of the preference signal and neither
alone carries all of it. Interactions come from a choice model (Gumbel-max over utility plus a
popularity bias). About 10% of items are cold: they never appear in training histories, only as
a user's last (held-out) interaction, where only content can rank them.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
COLOURS = {
    "red": (200, 40, 40),
    "green": (40, 150, 60),
    "blue": (40, 80, 200),
    "yellow": (230, 200, 30),
    "purple": (130, 50, 170),
    "orange": (240, 130, 20),
}
COLOUR_WORDS = {
    "red": ("crimson", "scarlet", "red"),
    "green": ("emerald", "green", "leafy green"),
    "blue": ("blue", "azure", "deep blue"),
    "yellow": ("golden", "yellow", "sunny yellow"),
    "purple": ("violet", "purple", "lilac"),
    "orange": ("orange", "amber", "tangerine"),
}
TEXTURES = ("solid", "stripes", "dots", "checks")
LAYOUTS = ("single", "pair", "grid")
THEMES = {
    "space": ("Sci-Fi", ("a crew drifting between distant stars", "astronauts stranded on a moon",
                         "a rogue satellite and its lonely engineer")),
    "ocean": ("Adventure", ("sailors crossing a stormy sea", "a diver searching a sunken wreck",
                            "a fishing village facing the tides")),
    "forest": ("Fantasy", ("wanderers lost in an ancient forest", "a ranger guarding old woodland",
                           "a hidden cabin among tall pines")),
    "city": ("Drama", ("strangers sharing a crowded apartment block", "a taxi driver working night shifts",
                       "rivals climbing a corporate tower")),
    "kitchen": ("Comedy", ("two chefs competing in a tiny restaurant", "a baker chasing a perfect recipe",
                           "a family feast that goes wrong")),
    "music": ("Musical", ("a band touring small clubs", "a violinist preparing for a concert",
                          "a singer writing her first album")),
    "sport": ("Action", ("an underdog team chasing the championship", "a boxer training for a comeback",
                         "a marathon runner pushing past the limit")),
    "history": ("War", ("soldiers holding a mountain pass", "a scribe in a medieval court",
                        "an empire on the eve of collapse")),
}
MOODS = {
    "cheerful": ("A cheerful, warm-hearted", "full of laughter and light", "Upbeat and funny"),
    "dark": ("A dark, brooding", "haunted by loss and menace", "Grim and unsettling"),
    "calm": ("A calm, contemplative", "quiet, slow and gentle", "Peaceful and reflective"),
    "tense": ("A tense, gripping", "with danger around every corner", "Suspenseful and fast"),
}
TITLE_ADJ = ("Silent", "Golden", "Broken", "Hidden", "Last", "Burning", "Frozen", "Wild",
             "Electric", "Crooked", "Lonely", "Bright", "Hollow", "Secret", "Endless", "Little")
TITLE_NOUN = ("Harbor", "Signal", "Garden", "Promise", "River", "Machine", "Crown", "Letter",
              "Orchard", "Horizon", "Lantern", "Bridge", "Echo", "Winter", "Circus", "Mirror")

ATTRIBUTES = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "texture": TEXTURES,
    "layout": LAYOUTS,
    "theme": tuple(THEMES),
    "mood": tuple(MOODS),
}
# How strongly each attribute drives preferences (layout is mostly decoration).
ATTRIBUTE_WEIGHT = {"shape": 1.0, "colour": 1.0, "texture": 0.6, "layout": 0.2, "theme": 1.0, "mood": 0.7}


@dataclass(frozen=True)
class SynthConfig:
    """Size and randomness of the generated catalog; the defaults give the main job's dataset."""

    users: int = 100
    items: int = 500
    seed: int = 0
    image_size: int = 96
    mean_interactions: float = 30.0
    min_interactions: int = 8
    cold_fraction: float = 0.1
    missing_text_fraction: float = 0.05
    missing_image_fraction: float = 0.05
    popularity_weight: float = 0.6
    preference_scale: float = 4.0
    care_probability: float = 0.6


def _render_image(rng: np.random.Generator, attrs: dict[str, str], size: int):
    """Draw the item's shape(s) in its colour and texture on a lightly noisy background."""
    from PIL import Image, ImageDraw

    background = tuple(int(v) for v in rng.integers(215, 250, size=3))
    img = Image.new("RGB", (size, size), background)
    colour = COLOURS[attrs["colour"]]
    jitter = rng.integers(-25, 26, size=3)
    colour = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(colour, jitter))
    n_shapes = {"single": 1, "pair": 2, "grid": 4}[attrs["layout"]]
    if n_shapes == 1:
        boxes = [(0.15, 0.15, 0.85, 0.85)]
    elif n_shapes == 2:
        boxes = [(0.05, 0.25, 0.48, 0.72), (0.52, 0.25, 0.95, 0.72)]
    else:
        boxes = [(x, y, x + 0.4, y + 0.4) for y in (0.07, 0.53) for x in (0.07, 0.53)]
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for x0, y0, x1, y1 in boxes:
        shift = rng.uniform(-0.03, 0.03, size=2)
        box = [v * size for v in (x0 + shift[0], y0 + shift[1], x1 + shift[0], y1 + shift[1])]
        _draw_shape(draw, attrs["shape"], box)
    fill = Image.new("RGB", (size, size), colour)
    pattern = Image.new("L", (size, size), 255)
    pdraw = ImageDraw.Draw(pattern)
    step = max(4, size // 12)
    if attrs["texture"] == "stripes":
        for k in range(-size, size, step):
            pdraw.line([(k, 0), (k + size, size)], fill=0, width=max(1, step // 3))
    elif attrs["texture"] == "dots":
        for y in range(0, size, step):
            for x in range(0, size, step):
                r = step // 4
                pdraw.ellipse([x, y, x + r * 2, y + r * 2], fill=0)
    elif attrs["texture"] == "checks":
        for y in range(0, size, step):
            for x in range(0, size, step):
                if (x // step + y // step) % 2:
                    pdraw.rectangle([x, y, x + step - 1, y + step - 1], fill=0)
    light = tuple(min(255, int(c * 0.45 + 140)) for c in colour)
    textured = Image.composite(fill, Image.new("RGB", (size, size), light), pattern)
    img.paste(textured, (0, 0), mask)
    noise = rng.integers(-8, 9, size=(size, size, 3))
    arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _draw_shape(draw, shape: str, box: list[float]) -> None:
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    if shape == "circle":
        draw.ellipse(box, fill=255)
    elif shape == "square":
        draw.rectangle([cx - rx * 0.85, cy - ry * 0.85, cx + rx * 0.85, cy + ry * 0.85], fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=255)
    elif shape == "star":
        points = []
        for k in range(10):
            radius = 1.0 if k % 2 == 0 else 0.45
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + rx * radius * math.cos(angle), cy + ry * radius * math.sin(angle)))
        draw.polygon(points, fill=255)
    elif shape == "cross":
        w, h = rx * 0.35, ry * 0.35
        draw.rectangle([cx - w, y0, cx + w, y1], fill=255)
        draw.rectangle([x0, cy - h, x1, cy + h], fill=255)


def _describe(rng: np.random.Generator, attrs: dict[str, str]) -> str:
    """An English description from theme, mood and colour (never shape or texture)."""
    opener, mood_phrase, mood_short = MOODS[attrs["mood"]]
    _, plots = THEMES[attrs["theme"]]
    plot = plots[int(rng.integers(len(plots)))]
    colour_word = COLOUR_WORDS[attrs["colour"]][int(rng.integers(3))]
    templates = (
        f"{opener} story about {plot}, {mood_phrase}. Shot in {colour_word} tones throughout.",
        f"{mood_short}: {plot}. The {colour_word} palette of every scene sets the tone.",
        f"This film follows {plot}. {mood_short}, and bathed in {colour_word} light.",
        f"{opener} tale of {plot}. Critics remember its {colour_word} imagery and a story {mood_phrase}.",
    )
    return templates[int(rng.integers(len(templates)))]


def generate(out_dir: str | Path, config: SynthConfig = SynthConfig()) -> Path:
    """Write items.csv, interactions.csv and images/ to ``out_dir``; return the folder.

    Deterministic: the same config gives byte-identical CSVs and images.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    names = list(ATTRIBUTES)
    n_items, n_users = config.items, config.users
    item_attr_idx = {a: rng.integers(len(ATTRIBUTES[a]), size=n_items) for a in names}
    popularity = rng.normal(0.0, 1.0, size=n_items)
    has_text = rng.random(n_items) >= config.missing_text_fraction
    has_image = rng.random(n_items) >= config.missing_image_fraction
    has_text[~has_text & ~has_image] = True  # every item keeps at least one modality
    cold = np.zeros(n_items, dtype=bool)
    cold[rng.permutation(n_items)[: int(round(config.cold_fraction * n_items))]] = True

    item_rows = []
    for i in range(n_items):
        attrs = {a: ATTRIBUTES[a][item_attr_idx[a][i]] for a in names}
        item_id = f"i{i:05d}"
        image_rel = ""
        if has_image[i]:
            image_rel = f"images/{item_id}.png"
            _render_image(rng, attrs, config.image_size).save(out / image_rel, optimize=False)
        description = _describe(rng, attrs) if has_text[i] else ""
        title = f"The {TITLE_ADJ[rng.integers(len(TITLE_ADJ))]} {TITLE_NOUN[rng.integers(len(TITLE_NOUN))]}"
        genre = THEMES[attrs["theme"]][0]
        item_rows.append([item_id, title, str(int(rng.integers(1950, 2021))), genre, description, image_rel])

    # Users: each cares about some attributes and, within one, likes one or two of its values
    # (plus a small dense taste), so a few dozen interactions reveal the preference.
    utility = np.zeros((n_users, n_items))
    for a in names:
        n_values = len(ATTRIBUTES[a])
        liked = np.zeros((n_users, n_values))
        for u in range(n_users):
            liked[u, rng.choice(n_values, size=int(rng.integers(1, 3)), replace=False)] = 1.0
        prefs = liked + 0.3 * rng.normal(0.0, 1.0, size=(n_users, n_values))
        cares = rng.random(n_users) < config.care_probability
        utility += (ATTRIBUTE_WEIGHT[a] * config.preference_scale * cares)[:, None] * prefs[:, item_attr_idx[a]]
    utility += config.popularity_weight * popularity[None, :]

    inter_rows = []
    base_time = 1_600_000_000
    for u in range(n_users):
        count = max(config.min_interactions, int(rng.poisson(config.mean_interactions)))
        count = min(count, int((~cold).sum()) - 1)
        gumbel = rng.gumbel(size=n_items)
        noisy = utility[u] + gumbel
        warm_scores = np.where(cold, -np.inf, noisy)
        history = list(np.argsort(-warm_scores)[: count - 1])
        rng.shuffle(history)
        # Last (held-out) choice: over the whole catalog, cold items included.
        last_scores = utility[u] + rng.gumbel(size=n_items)
        last_scores[history] = -np.inf
        history.append(int(np.argmax(last_scores)))
        t = base_time + int(rng.integers(0, 86_400 * 30))
        for i in history:
            t += int(rng.integers(60, 86_400))
            rating = int(np.clip(np.round(3 + utility[u, i] / 2 + rng.normal(0, 0.5)), 1, 5))
            inter_rows.append([f"u{u:04d}", f"i{i:05d}", str(rating), str(t)])

    # The ground truth behind the data (attributes, utilities), for oracle checks; not part of
    # the dataset format and ignored by the loader.
    np.savez_compressed(
        out / "synth_truth.npz",
        utility=utility.astype(np.float32),
        cold=cold,
        **{f"attr_{a}": item_attr_idx[a] for a in names},
    )
    with (out / "items.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item_id", "title", "year", "genres", "description", "image"])
        writer.writerows(item_rows)
    with (out / "interactions.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "rating", "timestamp"])
        writer.writerows(inter_rows)
    return out
