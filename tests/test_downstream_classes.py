"""Class maps (built-in tables, YAML maps, remapping) and label-fraction splits."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import yaml

from lidar_ssl_core.downstream.classes import (
    IGNORE_INDEX,
    NUSCENES,
    SEMANTICKITTI,
    SYNTHETIC,
    ClassMap,
    dump_class_map,
    load_class_map,
    remap,
)
from lidar_ssl_core.downstream.splits import (
    STANDARD_FRACTIONS,
    every_nth_scene,
    frame_blocks,
    select_frames,
    select_scenes,
)
from lidar_ssl_core.errors import ConfigError
from lidar_ssl_core.synth import classes as synth

# ------------------------------------------------------------------------------------- class maps

# nuScenes lidarseg challenge, raw id 0..31 -> challenge index 0..16 (0 = void), written out in full.
NUSCENES_CHALLENGE = [
    0, 0, 7, 7, 7, 0, 7, 0, 0, 1, 0, 0, 8, 0, 2, 3, 3, 4, 5, 0, 0, 6, 9, 10, 11, 12, 13, 14, 15, 0, 16, 0,
]  # fmt: skip
# semantic-kitti.yaml learning_map (0 = unlabeled/ignored), written out in full.
KITTI_LEARNING_MAP = {
    0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8, 40: 9, 44: 10, 48: 11,
    49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16, 72: 17, 80: 18, 81: 19, 99: 0, 252: 1, 253: 7,
    254: 6, 255: 8, 256: 5, 257: 5, 258: 4, 259: 5,
}  # fmt: skip


def test_nuscenes_map_is_the_challenge_mapping() -> None:
    assert NUSCENES.num_classes == 16
    assert NUSCENES.class_names[:4] == ("barrier", "bicycle", "bus", "car")
    assert NUSCENES.class_names[-1] == "vegetation"
    expected = np.array([c - 1 if c else IGNORE_INDEX for c in NUSCENES_CHALLENGE])
    np.testing.assert_array_equal(remap(np.arange(32), NUSCENES), expected)
    ignored = {i for i in range(32) if expected[i] == IGNORE_INDEX}
    assert ignored == {0, 1, 5, 7, 8, 10, 11, 13, 19, 20, 29, 31}
    assert NUSCENES.raw_ids_of(NUSCENES.class_names.index("pedestrian")) == [2, 3, 4, 6]


def test_semantickitti_map_is_the_learning_map() -> None:
    assert SEMANTICKITTI.num_classes == 19
    raw = np.array(sorted(KITTI_LEARNING_MAP))
    expected = np.array([KITTI_LEARNING_MAP[r] - 1 if KITTI_LEARNING_MAP[r] else IGNORE_INDEX for r in raw])
    np.testing.assert_array_equal(SEMANTICKITTI.remap(raw), expected)
    car, person = SEMANTICKITTI.class_names.index("car"), SEMANTICKITTI.class_names.index("person")
    assert SEMANTICKITTI.remap([252, 254]).tolist() == [car, person]  # moving -> static
    # ids absent from the yaml (e.g. 2, 100, 260) and out-of-range ids are ignored, not errors
    assert SEMANTICKITTI.remap([2, 100, 260, 70000, -3]).tolist() == [IGNORE_INDEX] * 5


def test_semantickitti_real_scan_remaps(semantickitti_root: Path) -> None:
    packed = np.fromfile(semantickitti_root / "sequences/00/labels/000000.label", dtype=np.uint32)
    semantic = packed & 0xFFFF
    assert set(np.unique(semantic).tolist()) <= set(KITTI_LEARNING_MAP), "scan holds an id the yaml lacks"
    train = SEMANTICKITTI.remap(semantic)
    assert train.shape == semantic.shape and train.dtype == np.int64
    for raw_id in np.unique(semantic):
        learn = KITTI_LEARNING_MAP[int(raw_id)]
        assert np.all(train[semantic == raw_id] == (learn - 1 if learn else IGNORE_INDEX))
    assert np.count_nonzero(train != IGNORE_INDEX) > 0.9 * train.size  # a real scan is mostly labelled


def test_synthetic_map_follows_the_synth_table() -> None:
    assert SYNTHETIC.num_classes == synth.NUM_CLASSES - 1
    assert SYNTHETIC.remap(np.arange(10)).tolist() == [IGNORE_INDEX, *range(9)]
    assert SYNTHETIC.class_names == tuple(synth.CLASS_NAMES[i] for i in range(1, 10))
    np.testing.assert_array_equal(SYNTHETIC.colors, synth.PALETTE[1:])


def test_remap_keeps_shape_and_rejects_floats() -> None:
    raw = np.array([[1, 2], [0, 12]], np.uint32)
    out = remap(raw, SYNTHETIC)
    assert out.shape == (2, 2) and out.dtype == np.int64
    assert out.tolist() == [[0, 1], [IGNORE_INDEX, IGNORE_INDEX]]
    with pytest.raises(ConfigError, match="integers"):
        remap(np.array([1.0, 2.0]), SYNTHETIC)


def test_colorize_and_read_only_arrays() -> None:
    rgb = NUSCENES.colorize(np.array([3, IGNORE_INDEX, -1]))
    assert rgb.tolist() == [[255, 158, 0], [0, 0, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="read-only"):
        NUSCENES.lut[0] = 3


def test_yaml_round_trip_of_every_builtin(tmp_path: Path) -> None:
    for cm in (NUSCENES, SEMANTICKITTI, SYNTHETIC):
        path = tmp_path / f"{cm.name}.yaml"
        path.write_text(dump_class_map(cm))
        back = load_class_map(path)
        assert back.class_names == cm.class_names and back.ignore_index == cm.ignore_index
        np.testing.assert_array_equal(back.lut, cm.lut)
        np.testing.assert_array_equal(back.colors, cm.colors)
        assert back.raw_names == cm.raw_names
    assert load_class_map("nuscenes") is NUSCENES


def test_yaml_map_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "mine",
                "classes": [{"name": "ground", "raw_ids": [3, 4]}, {"name": "thing", "raw_ids": [9]}],
            }
        )
    )
    cm = load_class_map(str(path))
    assert cm.ignore_index == 255 and cm.num_classes == 2
    assert cm.remap([3, 4, 9, 5, 0]).tolist() == [0, 0, 1, 255, 255]
    assert cm.colors.shape == (2, 3) and not np.array_equal(cm.colors[0], cm.colors[1])


def _doc(*classes: dict, **top: object) -> dict:
    return {"name": "x", "classes": list(classes), **top}


A1, B2 = {"name": "a", "raw_ids": [1]}, {"name": "b", "raw_ids": [2]}


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        (_doc({"name": "a", "raw_id": [1]}), r"classes\.0\.raw_id"),
        (_doc(A1, {"name": "b", "raw_ids": [2, 1]}), "raw id 1 .*'a' and 'b'"),
        (_doc(A1, B2, ignore_index=1), "ignore_index 1"),
        (_doc({"name": "a", "raw_ids": [1], "color": [300, 0, 0]}), "0..255"),
        (_doc({"name": "a", "raw_ids": [-4]}), "raw id -4"),
        (_doc(A1, {"name": "a", "raw_ids": [2]}), "more than once"),
        (_doc(), "classes"),
        ({"name": "x", "clases": [A1]}, "clases"),
    ],
)
def test_yaml_errors_name_the_problem(tmp_path: Path, doc: dict, match: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=match):
        load_class_map(path)


def test_unknown_map_lists_builtins(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nuscenes, semantickitti, synthetic"):
        load_class_map("kitti360")
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_class_map(bad)


def test_classmap_validates_lut() -> None:
    with pytest.raises(ConfigError, match="raw id 1 maps to 7"):
        ClassMap("x", ("a", "b"), np.array([255, 7]), np.zeros((2, 3), np.uint8))


# ------------------------------------------------------------------------------------------ splits

SCENES = [f"scene-{i:04d}" for i in range(200)]


def test_select_scenes_is_deterministic_order_independent_and_nested() -> None:
    shuffled = SCENES[:]
    random.Random(3).shuffle(shuffled)
    for seed in (0, 1, 7):
        previous: set[str] = set()
        for fraction in STANDARD_FRACTIONS:
            chosen = select_scenes(SCENES, fraction, seed)
            assert chosen == select_scenes(shuffled, fraction, seed) == sorted(chosen)
            assert len(chosen) == max(1, int(np.ceil(fraction * len(SCENES) - 1e-9)))
            assert previous <= set(chosen)
            previous = set(chosen)
    assert select_scenes(SCENES, 0.05, 0) != select_scenes(SCENES, 0.05, 1)
    assert select_scenes(SCENES, 1.0, 5) == SCENES


def test_select_scenes_weights_by_frames() -> None:
    rng = np.random.default_rng(0)
    frames = {s: int(n) for s, n in zip(SCENES, rng.integers(1, 400, len(SCENES)), strict=True)}
    total = sum(frames.values())
    for fraction in (0.01, 0.1, 0.25):
        chosen = select_scenes(SCENES, fraction, 4, frames)
        got = sum(frames[s] for s in chosen)
        assert got >= fraction * total
        assert min(got - frames[s] for s in chosen) < fraction * total  # no scene is superfluous...
    # ...and at least one scene even when one scene already exceeds the fraction
    assert len(select_scenes(["a", "b"], 0.001, 0, {"a": 10, "b": 10})) == 1


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((SCENES, 0.0, 0), "fraction"),
        ((SCENES, 1.5, 0), "fraction"),
        ((["a", "b", "a"], 0.5, 0), "repeated"),
        ((["a", "b"], 0.5, 0, {"a": 3}), "no count"),
        (([], 0.5, 0), "no scene"),
    ],
)
def test_select_scenes_errors(args: tuple, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        select_scenes(*args)


def test_every_nth_scene_is_slidr_skip_step() -> None:
    scenes = [f"scene-{i:04d}" for i in range(700)]
    picked = every_nth_scene(scenes, 100)
    assert picked == [f"scene-{i:04d}" for i in range(0, 700, 100)]
    with pytest.raises(ConfigError):
        every_nth_scene(scenes, 0)


def test_select_frames_takes_whole_contiguous_blocks() -> None:
    assert frame_blocks(7, 3).tolist() == [0, 0, 0, 1, 1, 1, 2]
    n, block = 1000, 40
    blocks = frame_blocks(n, block)
    previous: set[int] = set()
    for fraction in STANDARD_FRACTIONS:
        idx = select_frames(n, fraction, seed=2, block_frames=block)
        assert np.all(np.diff(idx) > 0) and len(idx) >= fraction * n
        for b in np.unique(blocks[idx]):  # every chosen block is complete
            assert np.count_nonzero(blocks[idx] == b) == np.count_nonzero(blocks == b)
        assert previous <= set(idx.tolist())
        previous = set(idx.tolist())
    assert len(select_frames(n, 0.01, seed=2, block_frames=block)) == block
