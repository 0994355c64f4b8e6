"""expand_bags: bags stay, folders of bags (a converter's output) are searched, globs expand, errors name."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lidar_ssl_core.bag import BagReader, BagWriter, expand_bags, find_bags, is_bag
from lidar_ssl_core.errors import BagReadError
from lidar_ssl_core.msg.pointcloud2 import make_pointcloud2

T0 = 1_700_000_000_000_000_000


def write_bag(path: Path, *, storage: Any = "mcap", n: int = 2, t0: int = T0) -> Path:
    """A real (small) bag: ``n`` clouds on /lidar/points."""
    cols = {c: np.arange(10, dtype=np.float32) for c in ("x", "y", "z", "intensity")}
    path.parent.mkdir(parents=True, exist_ok=True)
    with BagWriter(path, storage=storage, sync=False) as w:
        w.add_topic("/lidar/points", "sensor_msgs/msg/PointCloud2")
        for i in range(n):
            w.write("/lidar/points", t0 + i, make_pointcloud2(w.typestore, cols, t0 + i, "lidar_top"))
    return path


def standalone(bag: Path, dest: Path) -> Path:
    """The storage file of ``bag`` copied to ``dest`` (a standalone .mcap / .db3)."""
    (file,) = [p for p in bag.iterdir() if p.suffix in (".mcap", ".db3")]
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(file, dest)
    return dest


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A converter-like output folder, with nested bags, loose files and things that are no bag."""
    root = tmp_path_factory.mktemp("discover") / "out"
    write_bag(root / "scene-0103", t0=T0 + 10)
    write_bag(root / "scene-0061", storage="sqlite3")
    write_bag(root / "nested" / "deeper" / "drive_0001_sync", t0=T0 + 20)
    standalone(root / "scene-0103", root / "loose" / "b.mcap")
    standalone(root / "scene-0061", root / "loose" / "a.db3")
    (root / "loose" / "notes.txt").write_text("not a bag")
    (root / "empty_dir").mkdir()
    # what BagWriter leaves while writing / replacing: hidden, never a finished bag
    write_bag(root / ".scene-0200.partial" / "scene-0200")
    write_bag(root / ".scene-0061.old")
    write_bag(root / "odd.partial" / "x")
    # a bag folder holding a subfolder that looks like a bag: never descended into
    write_bag(root / "scene-0103" / "inner")
    return root


def names(paths: list[Path], root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


def test_folder_of_bags_is_searched_sorted_and_skips_staging(out: Path) -> None:
    found = expand_bags([out])
    assert names(found, out) == [
        "loose/a.db3",
        "loose/b.mcap",
        "nested/deeper/drive_0001_sync",
        "scene-0061",
        "scene-0103",
    ]
    assert find_bags(out) == found
    # every path found opens as one bag with its messages
    with BagReader(found) as r:
        assert r.message_count("/lidar/points") == 10


def test_bags_stay_as_given_and_duplicates_are_dropped(out: Path) -> None:
    bag, file = out / "scene-0103", out / "loose" / "b.mcap"
    assert expand_bags([bag]) == [bag]
    assert expand_bags([str(file)]) == [file]
    assert expand_bags([bag / "metadata.yaml"]) == [bag]  # metadata.yaml stands for its folder
    # a folder and a bag inside it: the bag keeps its first position, once
    assert names(expand_bags([bag, out]), out) == [
        "scene-0103",
        "loose/a.db3",
        "loose/b.mcap",
        "nested/deeper/drive_0001_sync",
        "scene-0061",
    ]
    # a hidden staging folder named explicitly is the user's choice
    staged = out / ".scene-0200.partial" / "scene-0200"
    assert expand_bags([staged]) == [staged]
    assert is_bag(bag) and is_bag(file) and not is_bag(out) and not is_bag(out / "loose" / "notes.txt")


def test_glob_patterns_expand(out: Path) -> None:
    assert names(expand_bags([str(out / "scene-*")]), out) == ["scene-0061", "scene-0103"]
    assert names(expand_bags([out / "loose" / "*.mcap"]), out) == ["loose/b.mcap"]
    # folders matched by a pattern are searched; non-bag matches (notes.txt, empty_dir) are ignored
    assert names(expand_bags([str(out / "[ln]*")]), out) == [
        "loose/a.db3",
        "loose/b.mcap",
        "nested/deeper/drive_0001_sync",
    ]
    assert names(expand_bags([str(out / "**" / "drive_*")]), out) == ["nested/deeper/drive_0001_sync"]
    with pytest.raises(BagReadError, match=r"pattern '.*scene-9\*' matches no bag"):
        expand_bags([str(out / "scene-9*")])
    with pytest.raises(BagReadError, match="matches no bag"):
        expand_bags([str(out / "loose" / "*.txt")])


def test_a_literal_name_with_glob_characters_is_a_path(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "run[1]")
    assert expand_bags([str(bag)]) == [bag]


def test_paths_without_bags_raise_naming_them(out: Path, tmp_path: Path) -> None:
    with pytest.raises(BagReadError, match=r"empty_dir holds no bag"):
        expand_bags([out / "scene-0103", out / "empty_dir"])
    with pytest.raises(BagReadError, match=r"notes\.txt is not a bag"):
        expand_bags([out / "loose" / "notes.txt"])
    with pytest.raises(BagReadError, match=r"bag .*missing does not exist"):
        expand_bags([out / "missing"])
    with pytest.raises(BagReadError, match="no bag path given"):
        expand_bags([])
    # only staging leftovers: no finished bag
    only_partial = tmp_path / "only_partial"
    write_bag(only_partial / ".x.partial" / "x")
    with pytest.raises(BagReadError, match="only_partial holds no bag"):
        expand_bags([only_partial])


def test_symlink_loop_ends(tmp_path: Path) -> None:
    root = tmp_path / "loop"
    write_bag(root / "a" / "bag")
    (root / "a" / "back").symlink_to(root)
    assert names(expand_bags([root]), root) == ["a/bag"]
