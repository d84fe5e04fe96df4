"""Convert the official GroupLens MovieLens-100K zip (plus optional posters and plots) into our format.

MovieLens may not be redistributed, so the repository ships no copy: a researcher downloads
``ml-100k.zip`` from GroupLens and converts it here. The zip is checked against the MD5 that
GroupLens publishes beside it (``ml-100k.zip.md5``), so every user converts the same bytes.

- ``u.item`` (Latin-1, ``|``-separated: id, title with year, release date, video date, IMDb
  URL, 19 genre flags named by ``u.genre``) gives ``items.csv``: the title without its
  ``(year)``, the year (from the title, else the release date), the genres ``|``-separated.
- ``u.data`` (tab-separated user, item, rating, timestamp) gives ``interactions.csv``; every
  rating is an interaction (implicit feedback), the rating is kept.
- ``--plots CSV`` (columns ``item_id`` or ``movie_id``, and ``description``) fills the text
  modality; ``--posters DIR`` (``<item_id>.jpg|.jpeg|.png``) the image modality. Items without
  either keep an empty field: the model uses its learned placeholder.
"""

from __future__ import annotations

import csv
import hashlib
import re
import shutil
import zipfile
from pathlib import Path

from shared.data.schema import (
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    DatasetError,
    load_dataset,
)

OFFICIAL_MD5 = "0e33842e24a9c977be4e0107933c0723"  # files.grouplens.org/datasets/movielens/ml-100k.zip.md5
POSTER_SUFFIXES = (".jpg", ".jpeg", ".png")
_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


def file_md5(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def _member(archive: zipfile.ZipFile, zip_path: Path, name: str) -> list[str]:
    """Lines of ``ml-100k/<name>`` (Latin-1, as GroupLens wrote them)."""
    for candidate in (f"ml-100k/{name}", name):
        if candidate in archive.namelist():
            return archive.read(candidate).decode("latin-1").splitlines()
    raise DatasetError(f"{zip_path}: no ml-100k/{name} inside; is this the MovieLens-100K zip?")


def _genres(lines: list[str]) -> list[str]:
    names = {}
    for line in lines:
        if line.strip():
            name, index = line.rsplit("|", 1)
            names[int(index)] = name
    return [names[i] for i in sorted(names)]


def _items(lines: list[str], genre_names: list[str], zip_path: Path) -> list[dict[str, str]]:
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != 5 + len(genre_names):
            raise DatasetError(f"{zip_path}: ml-100k/u.item, line {number}: expected {5 + len(genre_names)} fields, found {len(fields)}")
        item_id, raw_title, release = fields[0].strip(), fields[1].strip(), fields[2].strip()
        match = _TITLE_YEAR.match(raw_title)
        title, year = (match.group(1), match.group(2)) if match else (raw_title, release[-4:] if release[-4:].isdigit() else "")
        flags = fields[5:]
        genres = [name for name, flag in zip(genre_names, flags) if flag.strip() == "1"]
        items.append({"item_id": item_id, "title": title, "year": year, "genres": "|".join(genres), "description": "", "image": ""})
    return items


def _plots(path: Path) -> dict[str, str]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        key = "item_id" if "item_id" in fields else "movie_id" if "movie_id" in fields else None
        if key is None or "description" not in fields:
            raise DatasetError(f"{path}: plots need columns item_id (or movie_id) and description; found {','.join(fields)}")
        return {row[key].strip(): (row["description"] or "").strip() for row in reader}


def convert_movielens_100k(
    zip_path: str | Path,
    out: str | Path,
    posters: str | Path | None = None,
    plots: str | Path | None = None,
    md5: str = OFFICIAL_MD5,
) -> Path:
    """Write the dataset folder ``out`` from ``zip_path``; validate it with our loader."""
    zip_path, out = Path(zip_path), Path(out)
    if not zip_path.is_file():
        raise DatasetError(f"{zip_path}: file not found (download ml-100k.zip from GroupLens)")
    got = file_md5(zip_path)
    if got != md5.lower():
        raise DatasetError(f"{zip_path}: MD5 {got} does not match {md5} (the official ml-100k.zip); re-download it")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty; refusing to overwrite a dataset")
    with zipfile.ZipFile(zip_path) as archive:
        genre_names = _genres(_member(archive, zip_path, "u.genre"))
        items = _items(_member(archive, zip_path, "u.item"), genre_names, zip_path)
        ratings = _member(archive, zip_path, "u.data")
    known = {item["item_id"] for item in items}
    if plots:
        descriptions = _plots(Path(plots))
        for item in items:
            item["description"] = descriptions.get(item["item_id"], "")
    out.mkdir(parents=True, exist_ok=True)
    if posters:
        (out / "images").mkdir()
        for item in items:
            for suffix in POSTER_SUFFIXES:
                source = Path(posters) / f"{item['item_id']}{suffix}"
                if source.is_file():
                    shutil.copyfile(source, out / "images" / source.name)
                    item["image"] = f"images/{source.name}"
                    break
    with (out / "items.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=ITEM_COLUMNS)
        writer.writeheader()
        writer.writerows(items)
    with (out / "interactions.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(INTERACTION_COLUMNS)
        for number, line in enumerate(ratings, start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 4 or fields[1] not in known:
                raise DatasetError(f"{zip_path}: ml-100k/u.data, line {number}: expected user, known item, rating, timestamp; found {line!r}")
            writer.writerow(fields)
    load_dataset(out)  # the converted folder must pass the same validation as any dataset
    return out
