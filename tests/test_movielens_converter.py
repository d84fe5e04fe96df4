"""`fedmmrec data movielens-100k`: the GroupLens zip layout (Latin-1 u.item, tab-separated
u.data, u.genre) becomes our format; a zip that is not the official one is refused."""

from __future__ import annotations

import csv
import zipfile

from PIL import Image

from shared.data import load_dataset
from shared.data.movielens import file_md5
from simulations.cli import main

GENRES = "unknown|0\nAction|1\nAdventure|2\nAnimation|3\nChildren's|4\nComedy|5\n"


def _grouplens_zip(path):
    flags = {"1": "0|0|0|1|1|1", "2": "0|1|1|0|0|0", "3": "1|0|0|0|0|0"}
    items = [
        "1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|" + flags["1"],
        "2|GoldenEye (1995)|01-Jan-1995||http://us.imdb.com/x|" + flags["2"],
        "3|Cit\xe9 des enfants perdus, La|01-Jan-1995||http://us.imdb.com/x|" + flags["3"],
    ]
    data = ["196\t1\t3\t881250949", "196\t2\t5\t881250950", "22\t3\t1\t878887116", "22\t1\t4\t878887117"]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ml-100k/u.item", ("\n".join(items) + "\n").encode("latin-1"))
        archive.writestr("ml-100k/u.data", "\n".join(data) + "\n")
        archive.writestr("ml-100k/u.genre", GENRES + "\n")
    return path


def test_the_grouplens_layout_converts_to_our_format_with_posters_and_plots(tmp_path, capsys):
    archive = _grouplens_zip(tmp_path / "ml-100k.zip")
    posters = tmp_path / "posters"
    posters.mkdir()
    Image.new("RGB", (20, 30), (200, 10, 10)).save(posters / "2.jpg")
    plots = tmp_path / "plots.csv"
    with plots.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["movie_id", "description"], ["1", 'A cowboy doll, "Woody", is jealous.']])
    code = main(["data", "movielens-100k", "--zip", str(archive), "--out", str(tmp_path / "ml"),
                 "--posters", str(posters), "--plots", str(plots), "--md5", file_md5(archive)])
    assert code == 0
    assert "3 items, 2 users, 4 interactions" in capsys.readouterr().out
    dataset = load_dataset(tmp_path / "ml")
    assert dataset.item_ids == ["1", "2", "3"]
    assert dataset.titles == ["Toy Story", "GoldenEye", "Cité des enfants perdus, La"]
    assert dataset.years == [1995, 1995, 1995]
    assert dataset.genres == [["Animation", "Children's", "Comedy"], ["Action", "Adventure"], ["unknown"]]
    assert dataset.descriptions == ['A cowboy doll, "Woody", is jealous.', "", ""]
    assert [p.name if p else None for p in dataset.image_paths] == [None, "2.jpg", None]
    assert dataset.user_ids == ["196", "22"]
    assert dataset.inter_time.tolist() == [881250949, 881250950, 878887116, 878887117]


def test_a_zip_that_is_not_the_official_one_is_refused_and_nothing_is_written(tmp_path, capsys):
    archive = _grouplens_zip(tmp_path / "ml-100k.zip")
    code = main(["data", "movielens-100k", "--zip", str(archive), "--out", str(tmp_path / "ml")])
    assert code == 2
    err = capsys.readouterr().err
    assert "ml-100k.zip: MD5" in err and "0e33842e24a9c977be4e0107933c0723" in err
    assert not (tmp_path / "ml").exists()
