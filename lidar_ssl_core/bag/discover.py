"""Turn what a user names (bags, folders of bags, glob patterns) into the list of bags to read.

A converter writes one bag per scene/drive into an output folder, so "read every bag in ``out/``" has to
be one path. Rules, in order, for each given path:

- a bag stays as it is: a folder holding ``metadata.yaml`` (a rosbag2 bag; never descended into) or a
  standalone ``.mcap`` / ``.db3`` file (``.bag`` too when named explicitly: the reader opens ROS 1 bags);
  a ``metadata.yaml`` named directly stands for its folder;
- a path holding ``*``, ``?`` or ``[`` that does not exist as written is a glob pattern (``**``
  recurses); every match is handled by these rules, matches that are no bag or lie inside a bag folder
  are ignored, and a pattern matching no bag at all is an error;
- any other folder is searched recursively for bags, in sorted name order (deterministic), skipping
  hidden entries: ``BagWriter`` stages unfinished bags in ``.<name>.partial`` and keeps a replaced one
  as ``.<name>.old`` for a moment, neither of which is a finished bag. Storage files lying loose in a
  searched folder are each a bag (a folder whose ``metadata.yaml`` was lost is no longer one recording);
- a path that does not exist, or exists but holds no bag, is a ``BagReadError`` naming it.

The same bag reached twice (``out/`` and ``out/scene-0061``) is kept once, where it first appears.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from lidar_ssl_core.errors import BagReadError

log = logging.getLogger(__name__)

METADATA = "metadata.yaml"
#: Files that are bags by themselves, found when searching a folder.
STORAGE_SUFFIXES = (".mcap", ".db3")
#: Files accepted as bags when named explicitly (the reader also opens ROS 1 ``.bag`` files).
EXPLICIT_SUFFIXES = (*STORAGE_SUFFIXES, ".bag")
_GLOB_CHARS = frozenset("*?[")


def is_bag(path: Path, *, explicit: bool = True) -> bool:
    """Whether ``path`` is one bag: a folder with metadata.yaml or a standalone storage file."""
    if path.is_dir():
        return (path / METADATA).is_file()
    suffixes = EXPLICIT_SUFFIXES if explicit else STORAGE_SUFFIXES
    return path.is_file() and path.suffix in suffixes


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.endswith(".partial")


def find_bags(folder: Path) -> list[Path]:
    """Bags under ``folder`` (itself excluded), depth first in sorted name order, hidden entries skipped."""
    return list(_walk(Path(folder), set()))


def _walk(folder: Path, seen: set[str]) -> Iterator[Path]:
    real = os.path.realpath(folder)
    if real in seen:  # a symlink loop
        return
    seen.add(real)
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError as err:
        log.warning("cannot list %s while looking for bags: %s", folder, err)
        return
    for name in names:
        if _hidden(name):
            continue
        child = folder / name
        if child.is_dir():
            if (child / METADATA).is_file():
                yield child
            else:
                yield from _walk(child, seen)
        elif child.is_file() and child.suffix in STORAGE_SUFFIXES:
            yield child


def _is_pattern(text: str) -> bool:
    return not _GLOB_CHARS.isdisjoint(text)


def _expand_one(path: Path) -> list[Path]:
    """Bags named by one existing path; BagReadError when it holds none."""
    if path.is_file() and path.name == METADATA:
        path = path.parent
    if is_bag(path):
        return [path]
    if path.is_dir():
        found = find_bags(path)
        if not found:
            raise BagReadError(
                f"{path} holds no bag: no metadata.yaml in it or in any folder below, and no "
                f"{'/'.join(STORAGE_SUFFIXES)} file (hidden and .partial folders are skipped)"
            )
        return found
    raise BagReadError(
        f"{path} is not a bag: expected a rosbag2 folder (with metadata.yaml), a "
        f"{'/'.join(EXPLICIT_SUFFIXES)} file or a folder holding bags"
    )


def _expand_pattern(pattern: str) -> list[Path]:
    out: list[Path] = []
    for match in sorted(glob.glob(pattern, recursive=True)):  # noqa: PTH207 (absolute patterns)
        path = Path(match)
        if any((parent / METADATA).is_file() for parent in path.parents):
            continue  # a part of a bag (its storage file), not a bag of its own
        if is_bag(path):
            out.append(path)
        elif path.is_dir():
            out.extend(find_bags(path))
    if not out:
        raise BagReadError(f"pattern {pattern!r} matches no bag (no rosbag2 folder, .mcap or .db3 file)")
    return out


def expand_bags(paths: Sequence[Path | str]) -> list[Path]:
    """The bags that ``paths`` name, in order (see the module docstring for the rules)."""
    if isinstance(paths, str | Path):  # a lone path instead of a list: a common slip, accept it
        paths = [paths]
    if not paths:
        raise BagReadError("no bag path given")
    out: list[Path] = []
    seen: set[str] = set()
    for item in paths:
        text = str(item)
        if _is_pattern(text) and not Path(text).exists():  # a literal name with '[' still works
            found = _expand_pattern(text)
        else:
            path = Path(item)
            if not path.exists():
                raise BagReadError(f"bag {path} does not exist")
            found = _expand_one(path)
        for bag in found:
            key = os.path.realpath(bag)
            if key in seen:
                log.info("%s is named twice; reading it once", bag)
                continue
            seen.add(key)
            out.append(bag)
    return out


__all__ = ["EXPLICIT_SUFFIXES", "STORAGE_SUFFIXES", "expand_bags", "find_bags", "is_bag"]
