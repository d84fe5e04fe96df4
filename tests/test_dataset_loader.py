"""The loader accepts the documented format and names file, line and problem otherwise."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shared.data import DatasetError, leave_last_out, load_dataset


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _spy_on_image_opens(monkeypatch) -> list:
    """The paths PIL is asked to open from now on (a refused image must never be one)."""
    import PIL.Image

    opened: list = []
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    return opened


def _rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_valid_dataset_loads_with_all_rows(small_dataset):
    dataset = load_dataset(small_dataset)
    lines = (small_dataset / "interactions.csv").read_text().strip().splitlines()
    assert dataset.num_interactions == len(lines) - 1
    assert dataset.num_items == 120
    assert dataset.num_users == 12


def test_missing_description_and_image_are_missing_modalities_not_errors(small_dataset, tmp_path):
    root = _copy(small_dataset, tmp_path / "d")
    rows = (root / "items.csv").read_text().splitlines()
    fields = rows[1].split(",")
    rows[1] = ",".join(fields[:4] + ['""', ""])
    (root / "items.csv").write_text("\n".join(rows) + "\n")
    dataset = load_dataset(root)
    assert dataset.descriptions[0] == ""
    assert dataset.image_paths[0] is None


def test_unknown_item_id_names_file_and_line(small_dataset, tmp_path):
    root = _copy(small_dataset, tmp_path / "d")
    lines = (root / "interactions.csv").read_text().splitlines()
    user, item, rating, ts = lines[3].split(",")
    lines[3] = ",".join([user, "no-such-item", rating, ts])
    (root / "interactions.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"interactions\.csv, line 4: unknown item_id 'no-such-item'"):
        load_dataset(root)


def test_bad_timestamp_names_file_and_line(small_dataset, tmp_path):
    root = _copy(small_dataset, tmp_path / "d")
    lines = (root / "interactions.csv").read_text().splitlines()
    user, item, rating, _ = lines[2].split(",")
    lines[2] = ",".join([user, item, rating, "yesterday"])
    (root / "interactions.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"interactions\.csv, line 3: timestamp 'yesterday' is not Unix seconds"):
        load_dataset(root)


def test_duplicate_item_id_names_both_lines(small_dataset, tmp_path):
    root = _copy(small_dataset, tmp_path / "d")
    _rewrite(root / "items.csv", "i00001,", "i00000,")
    with pytest.raises(DatasetError, match=r"items\.csv, line 3: duplicate item_id 'i00000' \(first on line 2\)"):
        load_dataset(root)


def test_unreadable_image_names_item(small_dataset, tmp_path):
    root = _copy(small_dataset, tmp_path / "d")
    dataset = load_dataset(root)
    index = next(i for i, p in enumerate(dataset.image_paths) if p is not None)
    dataset.image_paths[index].write_bytes(b"this is not a png")
    with pytest.raises(DatasetError, match=rf"\(item '{dataset.item_ids[index]}'\): image .* is unreadable"):
        load_dataset(root)


def test_missing_column_and_truncated_row(small_dataset, tmp_path):
    root = _copy(small_dataset, tmp_path / "d")
    _rewrite(root / "interactions.csv", "user_id,item_id,rating,timestamp", "user_id,item_id,rating")
    with pytest.raises(DatasetError, match=r"header is missing column\(s\) timestamp"):
        load_dataset(root)
    root2 = _copy(small_dataset, tmp_path / "e")
    lines = (root2 / "interactions.csv").read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0]
    (root2 / "interactions.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"interactions\.csv, line 6: expected 4 fields, found 3"):
        load_dataset(root2)


def test_non_utf8_file_is_reported(small_dataset, tmp_path):
    root = _copy(small_dataset, tmp_path / "d")
    (root / "items.csv").write_bytes((root / "items.csv").read_bytes().replace(b"The ", b"Th\xe9 ", 1))
    with pytest.raises(DatasetError, match=r"items\.csv: not valid UTF-8"):
        load_dataset(root)


def test_leave_last_out_holds_out_latest_and_finds_cold_items(small_dataset):
    dataset = load_dataset(small_dataset)
    split = leave_last_out(dataset)
    assert len(split.users) == 12
    for k, user in enumerate(split.users):
        mask = dataset.inter_user == user
        latest = dataset.inter_item[mask][dataset.inter_time[mask].argmax()]
        assert split.test_item[k] == latest
        assert latest not in set(split.train_items[k].tolist()) - {latest}
    trained = set().union(*(set(t.tolist()) for t in split.train_items))
    assert len(split.cold_items) > 0
    assert not trained & set(split.cold_items.tolist())


def test_a_user_with_one_interaction_is_skipped_with_a_warning(small_dataset, tmp_path):
    root = _copy(small_dataset, tmp_path / "d")
    lines = (root / "interactions.csv").read_text().splitlines()
    _, item, rating, ts = lines[1].split(",")
    lines.append(",".join(["lonely-user", item, rating, ts]))
    (root / "interactions.csv").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match=r"interactions\.csv: 1 user\(s\) with fewer than 2 interactions skipped.*'lonely-user'"):
        split = leave_last_out(load_dataset(root))
    assert len(split.users) == 12 and len(split.skipped_users) == 1


def test_cli_reports_bad_input_without_a_traceback(small_dataset, tmp_path, capsys):
    from simulations.cli import main

    root = _copy(small_dataset, tmp_path / "d")
    (root / "interactions.csv").write_text("user_id,item_id,rating,timestamp\n", encoding="utf-8")
    assert main(["data", "check", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedmmrec: error: ") and "interactions.csv" in err and "Traceback" not in err


@pytest.mark.parametrize("image_text", ["../outside.png", "images/../../outside.png", "/etc/passwd"])
def test_an_image_path_that_leaves_the_folder_is_refused_before_it_is_opened(small_dataset, tmp_path, monkeypatch, image_text):
    root = _copy(small_dataset, tmp_path / "d")
    (tmp_path / "outside.png").write_bytes((root / "images" / "i00000.png").read_bytes())
    _rewrite(root / "items.csv", "images/i00000.png", image_text)
    opened = _spy_on_image_opens(monkeypatch)
    with pytest.raises(DatasetError, match=r"items.csv, line 2: image .* of item 'i00000' leaves the dataset folder"):
        load_dataset(root)
    assert opened == []


def test_an_oversized_image_is_refused_from_its_header_naming_file_and_line(small_dataset, tmp_path, monkeypatch):
    import PIL.Image

    import shared.data.schema

    root = _copy(small_dataset, tmp_path / "d")
    PIL.Image.new("RGB", (300, 200)).save(root / "images" / "i00001.png")
    monkeypatch.setattr(shared.data.schema, "MAX_IMAGE_PIXELS", 50_000)
    with pytest.raises(DatasetError, match=r"items.csv, line 3 \(item 'i00001'\): image .*i00001.png is 300x200 pixels, more than the 50,000 accepted; downscale it"):
        load_dataset(root)


def test_a_decompression_bomb_is_a_clear_error(small_dataset, tmp_path, monkeypatch):
    import PIL.Image

    root = _copy(small_dataset, tmp_path / "d")
    PIL.Image.new("L", (400, 400)).save(root / "images" / "i00002.png")
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 50_000)  # 160,000 > 2 x 50,000: PIL's bomb error
    with pytest.raises(DatasetError, match=r"line 4 \(item 'i00002'\): image .*i00002.png refused: Image size \(160000 pixels\) exceeds limit"):
        load_dataset(root)


def test_a_long_description_loads_and_an_endless_field_names_its_line(small_dataset, tmp_path):
    root = _copy(small_dataset, tmp_path / "d")
    long_plot = "a quiet story " * 30_000  # 420,000 characters, above Python's default field limit
    _rewrite(root / "items.csv", "A cheerful, warm-hearted story", long_plot + "A cheerful, warm-hearted story")
    assert len(load_dataset(root).descriptions[0]) > 400_000
    text = (root / "items.csv").read_text(encoding="utf-8")
    (root / "items.csv").write_text(text + 'i99999,Endless,2000,Drama,"' + "x" * (17 * 1024 * 1024) + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"items.csv, line 122: malformed CSV: field larger than field limit"):
        load_dataset(root)


def test_an_image_that_links_outside_the_folder_is_refused_before_it_is_opened(small_dataset, tmp_path, monkeypatch):
    root = _copy(small_dataset, tmp_path / "d")
    secret = tmp_path / "secret.png"
    secret.write_bytes((root / "images" / "i00000.png").read_bytes())
    (root / "images" / "i00000.png").unlink()
    (root / "images" / "i00000.png").symlink_to(secret)  # the path's text stays inside; the file does not
    opened = _spy_on_image_opens(monkeypatch)
    with pytest.raises(DatasetError, match=rf"items.csv, line 2: image 'images/i00000.png' of item 'i00000' is a link to {secret}, outside"):
        load_dataset(root)
    assert opened == []
    # a whole images/ folder linked to another dataset's is refused too, unless it is the dataset
    # this folder was split from (the same items.csv), as `fedmmrec deploy devices` writes it
    other = _copy(small_dataset, tmp_path / "other")
    device = _copy(small_dataset, tmp_path / "device")
    shutil.rmtree(device / "images")
    (device / "images").symlink_to(other / "images", target_is_directory=True)
    assert load_dataset(device).num_items == 120
    (device / "items.csv").write_text((device / "items.csv").read_text(encoding="utf-8") + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"is a link to .*, outside the dataset folder"):
        load_dataset(device)


def test_deploy_devices_writes_folders_that_link_the_datasets_images_and_load(small_dataset, tmp_path):
    from shared.data.devices import write_device_folders

    folders = write_device_folders(small_dataset, tmp_path / "devices", 2, link_images=True)
    assert (folders[0] / "images").is_symlink() and load_dataset(folders[0]).num_items == 120
