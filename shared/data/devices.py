"""Split a dataset into one folder per device, as a real deployment holds the data.

Each device folder is a complete dataset in our format: the public catalog (``items.csv`` and
``images/``) and only its own user's rows of ``interactions.csv``. A SuperNode started with
``--node-config 'data-dir="<folder>"'`` trains on exactly that; nothing else about other users
is on the device. Used by the localhost deployment and for preparing real devices.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

from shared.data.schema import INTERACTION_COLUMNS, load_dataset
from shared.data.split import leave_last_out


def write_device_folders(dataset_dir: str | Path, out: str | Path, devices: int, link_images: bool = True) -> list[Path]:
    """Write ``out/device-K/`` for the first ``devices`` evaluable users (split order).

    ``link_images`` symlinks the catalog's ``images/`` (one machine, many devices) instead of
    copying it (what a real device receives). An existing device folder is an error: it may
    hold a device's state.
    """
    dataset_dir, out = Path(dataset_dir), Path(out)
    dataset = load_dataset(dataset_dir, check_images=False)
    split = leave_last_out(dataset)
    if not 0 < devices <= len(split.users):
        raise ValueError(f"{dataset_dir}: devices must be in 1..{len(split.users)} (evaluable users), got {devices}")
    wanted = {dataset.user_ids[split.users[k]]: k for k in range(devices)}
    rows: dict[int, list[list[str]]] = {k: [] for k in range(devices)}
    with (dataset_dir / "interactions.csv").open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = [h.strip().lstrip("\ufeff") for h in next(reader)]
        user_col = header.index("user_id")
        for row in reader:
            if row and row[user_col].strip() in wanted:
                rows[wanted[row[user_col].strip()]].append(row)
    folders = []
    for k in range(devices):
        folder = out / f"device-{k}"
        if folder.exists():
            raise FileExistsError(f"{folder}: already exists; refusing to overwrite a device folder")
        folder.mkdir(parents=True)
        shutil.copyfile(dataset_dir / "items.csv", folder / "items.csv")
        if (dataset_dir / "images").is_dir():
            if link_images:
                (folder / "images").symlink_to((dataset_dir / "images").resolve(), target_is_directory=True)
            else:
                shutil.copytree(dataset_dir / "images", folder / "images")
        with (folder / "interactions.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header if set(INTERACTION_COLUMNS) <= set(header) else INTERACTION_COLUMNS)
            writer.writerows(rows[k])
        folders.append(folder)
    return folders
