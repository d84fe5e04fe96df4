"""Load and validate a dataset in the fedmmrec format.

The format (documented in the README) is a folder with:

- ``items.csv``: ``item_id,title,year,genres,description,image`` (genres ``|``-separated;
  ``image`` relative to the folder, may be empty; ``description`` may be empty),
- ``interactions.csv``: ``user_id,item_id,rating,timestamp`` (Unix seconds),
- ``images/`` holding the item images.

Why strict validation: a federated run takes minutes to hours and its ledger and checkpoints
are written as it goes, so a bad row must fail *before* training, with the file, the line and
the problem named. An empty description or image is not an error: it is a missing modality
that the model handles with a learned placeholder.
"""

from __future__ import annotations

import csv
import filecmp
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAX_FIELD_CHARS = 16 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000  # a 6,300 x 6,300 poster; decoding costs ~3 bytes a pixel
ITEM_COLUMNS = ("item_id", "title", "year", "genres", "description", "image")
INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "timestamp")


class DatasetError(ValueError):
    """A dataset file is missing, malformed, or inconsistent; the message names file and line."""


@dataclass(frozen=True)
class Dataset:
    """A validated catalog and its interactions, with ids mapped to contiguous indices.

    ``item_ids[i]`` is the id of item index ``i``; interactions are parallel arrays of indices
    into ``user_ids`` and ``item_ids``, in file order.
    """

    root: Path
    item_ids: list[str]
    titles: list[str]
    years: list[int | None]
    genres: list[list[str]]
    descriptions: list[str]
    image_paths: list[Path | None]
    user_ids: list[str]
    inter_user: np.ndarray  # int64 [n_interactions]
    inter_item: np.ndarray  # int64 [n_interactions]
    inter_rating: np.ndarray  # float32 [n_interactions]
    inter_time: np.ndarray  # int64 [n_interactions], Unix seconds
    item_index: dict[str, int] = field(repr=False, default_factory=dict)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_interactions(self) -> int:
        return int(self.inter_user.shape[0])


def _open_csv(path: Path, expected: tuple[str, ...]) -> tuple[list[list[str]], list[str]]:
    """Read a whole CSV, checking encoding and header, so later errors can name the line."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (expected columns: {','.join(expected)})")
    csv.field_size_limit(MAX_FIELD_CHARS)  # Python's default (131,072) is below a long plot
    reader = None
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            rows = list(reader)
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{path}: not valid UTF-8 at byte {exc.start}; re-save the file as UTF-8"
        ) from exc
    except csv.Error as exc:
        where = f", line {reader.line_num}" if reader is not None else ""
        raise DatasetError(f"{path}{where}: malformed CSV: {exc} (a field may hold at most {MAX_FIELD_CHARS:,} characters)") from exc
    if not rows:
        raise DatasetError(f"{path}: file is empty (expected header {','.join(expected)})")
    header = [h.strip().lstrip("\ufeff") for h in rows[0]]
    missing = [c for c in expected if c not in header]
    if missing:
        raise DatasetError(
            f"{path}: header is missing column(s) {', '.join(missing)}; "
            f"found {','.join(header)}, expected {','.join(expected)}"
        )
    return rows[1:], header


def _check_width(path: Path, line: int, row: list[str], header: list[str]) -> None:
    if len(row) != len(header):
        raise DatasetError(
            f"{path}, line {line}: expected {len(header)} fields, found {len(row)} "
            "(truncated or unquoted comma?)"
        )


def _load_items(root: Path, check_images: bool, need_images: bool = True) -> dict:
    path = root / "items.csv"
    rows, header = _open_csv(path, ITEM_COLUMNS)
    col = {name: header.index(name) for name in ITEM_COLUMNS}
    out: dict = {k: [] for k in ("ids", "titles", "years", "genres", "descriptions", "images")}
    seen: dict[str, int] = {}
    allowed = _allowed_roots(root)
    for offset, row in enumerate(rows):
        line = offset + 2
        if not row:
            continue
        _check_width(path, line, row, header)
        item_id = row[col["item_id"]].strip()
        if not item_id:
            raise DatasetError(f"{path}, line {line}: empty item_id")
        if item_id in seen:
            raise DatasetError(
                f"{path}, line {line}: duplicate item_id {item_id!r} (first on line {seen[item_id]})"
            )
        seen[item_id] = line
        year_text = row[col["year"]].strip()
        try:
            year = int(year_text) if year_text else None
        except ValueError:
            raise DatasetError(f"{path}, line {line}: year {year_text!r} is not an integer") from None
        image_text = row[col["image"]].strip()
        image_path = None
        if image_text:
            _check_inside(path, line, item_id, image_text)
            image_path = root / image_text
            _check_link_target(path, line, item_id, image_text, image_path, allowed)
            if not image_path.is_file():
                if need_images:  # (a default-mode device ranks with the shipped content matrix: it needs none)
                    raise DatasetError(
                        f"{path}, line {line}: image {image_text!r} of item {item_id!r} not found "
                        f"at {image_path} (leave the field empty if the item has no image)"
                    )
            elif check_images:
                _check_image(image_path, path, line, item_id)
        out["ids"].append(item_id)
        out["titles"].append(row[col["title"]].strip())
        out["years"].append(year)
        genres_text = row[col["genres"]].strip()
        out["genres"].append([g for g in genres_text.split("|") if g] if genres_text else [])
        out["descriptions"].append(row[col["description"]].strip())
        out["images"].append(image_path)
    if not out["ids"]:
        raise DatasetError(f"{path}: no items")
    return out


def _check_inside(items_csv: Path, line: int, item_id: str, image_text: str) -> None:
    """An image path is relative and stays inside the dataset folder: a dataset never makes the
    loader open a file it was not given (checked on the text, before anything is opened)."""
    normal = os.path.normpath(image_text)
    if os.path.isabs(image_text) or Path(image_text).drive or normal == ".." or normal.startswith(".." + os.sep):
        raise DatasetError(
            f"{items_csv}, line {line}: image {image_text!r} of item {item_id!r} leaves the dataset folder; "
            "give a path relative to the folder, such as images/<item_id>.jpg"
        )


def _allowed_roots(root: Path) -> list[Path]:
    """Where an image may really be: inside the dataset folder, or, for a device folder made by
    ``fedmmrec deploy devices`` (which links ``images/`` unless ``--copy-images``), inside the folder its ``images`` link
    names when that folder's dataset has the very same ``items.csv`` (the dataset it was split from)."""
    roots = [root.resolve()]
    images = root / "images"
    if images.is_symlink():
        target = images.resolve()
        source = target.parent / "items.csv"
        if target.name == "images" and source.is_file() and filecmp.cmp(source, root / "items.csv", shallow=False):
            roots.append(target)
    return roots


def _check_link_target(items_csv: Path, line: int, item_id: str, image_text: str, image_path: Path, roots: list[Path]) -> None:
    """The path's text stays inside the folder (:func:`_check_inside`); so must the file it names
    once symbolic links are followed, or the loader would read a file it was not given."""
    real = image_path.resolve()
    if not any(real.is_relative_to(allowed) for allowed in roots):
        raise DatasetError(
            f"{items_csv}, line {line}: image {image_text!r} of item {item_id!r} is a link to {real}, outside the dataset "
            "folder; copy the image into the folder instead"
        )


def open_checked_image(image_path: Path, where: str):
    """Open an image after checking its size from the header alone, before any pixel is
    decoded: one of more than MAX_IMAGE_PIXELS pixels (or a decompression bomb) is refused with
    ``where`` (file and line) in the message, instead of costing gigabytes."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(image_path)
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"{where}: image {image_path} refused: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"{where}: image {image_path} is unreadable: {exc}") from exc
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        img.close()
        raise DatasetError(
            f"{where}: image {image_path} is {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS:,} accepted; "
            "downscale it (the backbone sees 224x224)"
        )
    return img


def _check_image(image_path: Path, items_csv: Path, line: int, item_id: str) -> None:
    """Decode the image header and pixels' first block: catches truncated, oversized and
    non-image files."""
    from PIL import UnidentifiedImageError

    with open_checked_image(image_path, f"{items_csv}, line {line} (item {item_id!r})") as img:
        try:
            img.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise DatasetError(
                f"{items_csv}, line {line}: image {image_path} of item {item_id!r} is unreadable: {exc}"
            ) from exc


def _load_interactions(root: Path, item_index: dict[str, int]) -> dict:
    path = root / "interactions.csv"
    rows, header = _open_csv(path, INTERACTION_COLUMNS)
    col = {name: header.index(name) for name in INTERACTION_COLUMNS}
    user_index: dict[str, int] = {}
    users, items, ratings, times = [], [], [], []
    for offset, row in enumerate(rows):
        line = offset + 2
        if not row:
            continue
        _check_width(path, line, row, header)
        user_id = row[col["user_id"]].strip()
        item_id = row[col["item_id"]].strip()
        if not user_id:
            raise DatasetError(f"{path}, line {line}: empty user_id")
        if item_id not in item_index:
            raise DatasetError(
                f"{path}, line {line}: unknown item_id {item_id!r} (not in items.csv)"
            )
        rating_text = row[col["rating"]].strip()
        try:
            rating = float(rating_text) if rating_text else 1.0
        except ValueError:
            raise DatasetError(f"{path}, line {line}: rating {rating_text!r} is not a number") from None
        if not np.isfinite(rating):
            raise DatasetError(f"{path}, line {line}: rating {rating_text!r} is not finite")
        time_text = row[col["timestamp"]].strip()
        try:
            timestamp = int(float(time_text)) if "." in time_text else int(time_text)
        except ValueError:
            raise DatasetError(
                f"{path}, line {line}: timestamp {time_text!r} is not Unix seconds"
            ) from None
        if timestamp < 0:
            raise DatasetError(f"{path}, line {line}: timestamp {timestamp} is negative")
        users.append(user_index.setdefault(user_id, len(user_index)))
        items.append(item_index[item_id])
        ratings.append(rating)
        times.append(timestamp)
    if not users:
        raise DatasetError(f"{path}: no interactions")
    return {
        "user_ids": list(user_index),
        "users": np.asarray(users, dtype=np.int64),
        "items": np.asarray(items, dtype=np.int64),
        "ratings": np.asarray(ratings, dtype=np.float32),
        "times": np.asarray(times, dtype=np.int64),
    }


def _dataset(root: Path, items: dict, inter: dict) -> Dataset:
    return Dataset(
        root=root,
        item_ids=items["ids"],
        titles=items["titles"],
        years=items["years"],
        genres=items["genres"],
        descriptions=items["descriptions"],
        image_paths=items["images"],
        user_ids=inter["user_ids"],
        inter_user=inter["users"],
        inter_item=inter["items"],
        inter_rating=inter["ratings"],
        inter_time=inter["times"],
        item_index={item_id: i for i, item_id in enumerate(items["ids"])},
    )


def load_dataset(root: str | Path, check_images: bool = True, need_images: bool = True) -> Dataset:
    """Load and validate a dataset folder; raise :class:`DatasetError` naming file and line.

    ``check_images``: decode every image (else only check that it exists); ``need_images``
    False: an image that is not there is no error (a default-mode device, which never opens
    one); its path must still stay inside the folder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    items = _load_items(root, check_images, need_images)
    inter = _load_interactions(root, {item_id: i for i, item_id in enumerate(items["ids"])})
    return _dataset(root, items, inter)


def load_catalog(root: str | Path, check_images: bool = True) -> Dataset:
    """Load only the public catalog (``items.csv``, ``images/``): what a deployed server holds.

    The users' interactions live on their devices, so a deployment's server never reads
    ``interactions.csv``; the returned dataset has no users and no interactions.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: catalog folder not found")
    empty = np.zeros(0, dtype=np.int64)
    no_interactions = {"user_ids": [], "users": empty, "items": empty.copy(),
                       "ratings": np.zeros(0, dtype=np.float32), "times": empty.copy()}
    return _dataset(root, _load_items(root, check_images), no_interactions)
