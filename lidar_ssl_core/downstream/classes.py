"""Class maps: raw dataset label ids -> contiguous training ids 0..C-1, names and display colours.

A dataset stores *raw* ids (nuScenes-lidarseg 0..31, SemanticKITTI 0..259, our synthetic world 0..9);
training and evaluation use *training* ids 0..C-1 plus one ``ignore_index`` (255 by default, the
convention of most segmentation code: it is outside every class range and fits the uint8/uint16 label
fields). ``remap`` is a table look-up, so it costs one gather per point; raw ids the table does not
know (beyond its range, negative, or not listed) become ``ignore_index``, never an IndexError.

Built-in maps: ``nuscenes`` (the 16 classes of the nuScenes lidarseg challenge), ``semantickitti``
(the 19 classes of semantic-kitti.yaml's learning map, moving classes merged into their static
counterparts) and ``synthetic`` (``lidar_ssl_core.synth.classes``, 9 classes). Other datasets describe
their map in a YAML file read by ``load_class_map`` (schema in docs/downstream-evaluation.md).
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lidar_ssl_core.errors import ConfigError
from lidar_ssl_core.synth import classes as synth_classes

IGNORE_INDEX: Final = 255
#: Largest raw id a class map may list (the bag profile's ``label`` field is uint16).
MAX_RAW_ID: Final = 65535

RGB = tuple[int, int, int]


def default_colors(n: int) -> npt.NDArray[np.uint8]:
    """``n`` distinct colours (golden-ratio hue steps), for maps that give none."""
    out = np.zeros((n, 3), np.uint8)
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
        out[i] = (round(r * 255), round(g * 255), round(b * 255))
    return out


def _frozen(a: npt.ArrayLike, dtype: npt.DTypeLike) -> np.ndarray:
    arr = np.array(a, dtype=dtype)
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class ClassMap:
    """One label set: names of training ids 0..C-1, raw-id look-up table and colours."""

    name: str
    class_names: tuple[str, ...]
    lut: npt.NDArray[np.int64]  # (R,) raw id -> training id, or ignore_index
    colors: npt.NDArray[np.uint8]  # (C, 3) RGB
    ignore_index: int = IGNORE_INDEX
    ignore_color: RGB = (0, 0, 0)
    raw_names: Mapping[int, str] = field(default_factory=dict)  # raw id -> name, for docs and YAML

    def __post_init__(self) -> None:
        c = len(self.class_names)
        if c == 0:
            raise ConfigError(f"class map '{self.name}' has no class")
        if len(set(self.class_names)) != c:
            dup = sorted({n for n in self.class_names if self.class_names.count(n) > 1})
            raise ConfigError(f"class map '{self.name}': class names {dup} appear more than once")
        if not 0 <= self.ignore_index <= MAX_RAW_ID or self.ignore_index < c:
            raise ConfigError(
                f"class map '{self.name}': ignore_index {self.ignore_index} must lie in [{c}, {MAX_RAW_ID}] "
                f"(outside the training ids 0..{c - 1}; 255 is the convention)"
            )
        lut = np.asarray(self.lut)
        if lut.ndim != 1 or lut.size == 0:
            raise ConfigError(f"class map '{self.name}': lut must be a non-empty 1-D array")
        bad = (lut != self.ignore_index) & ((lut < 0) | (lut >= c))
        if bad.any():
            raise ConfigError(
                f"class map '{self.name}': raw id {int(np.flatnonzero(bad)[0])} maps to "
                f"{int(lut[bad][0])}, not a training id 0..{c - 1} nor ignore_index {self.ignore_index}"
            )
        colors = np.asarray(self.colors)
        if colors.shape != (c, 3):
            raise ConfigError(f"class map '{self.name}': colors must be ({c}, 3), got {colors.shape}")
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        object.__setattr__(self, "lut", _frozen(lut, np.int64))
        object.__setattr__(self, "colors", _frozen(colors, np.uint8))
        object.__setattr__(self, "ignore_color", tuple(int(v) for v in self.ignore_color))
        object.__setattr__(self, "raw_names", dict(self.raw_names))

    # ---------------------------------------------------------------------------------- building
    @classmethod
    def from_groups(
        cls,
        name: str,
        groups: Sequence[tuple[str, Sequence[int], RGB | None]],
        *,
        ignore_index: int = IGNORE_INDEX,
        ignore_color: RGB = (0, 0, 0),
        raw_names: Mapping[int, str] | None = None,
    ) -> ClassMap:
        """Map from ``(class name, raw ids, colour or None)`` in training-id order."""
        owner: dict[int, str] = {}
        for cname, raw_ids, _ in groups:
            for rid in raw_ids:
                if not 0 <= int(rid) <= MAX_RAW_ID:
                    raise ConfigError(
                        f"class map '{name}': raw id {rid} of '{cname}' is outside 0..{MAX_RAW_ID}"
                    )
                if int(rid) in owner:
                    raise ConfigError(
                        f"class map '{name}': raw id {rid} is listed under both "
                        f"'{owner[int(rid)]}' and '{cname}'"
                    )
                owner[int(rid)] = cname
        size = max([*owner, *(raw_names or {}), 0]) + 1
        lut = np.full(size, ignore_index, np.int64)
        for train_id, (_, raw_ids, _) in enumerate(groups):
            lut[np.asarray(list(raw_ids), np.int64)] = train_id
        fallback = default_colors(len(groups))
        colors = np.array(
            [fallback[i] if col is None else col for i, (_, _, col) in enumerate(groups)], np.int64
        )
        if colors.size and ((colors < 0) | (colors > 255)).any():
            raise ConfigError(f"class map '{name}': colours must be RGB integers in 0..255")
        return cls(
            name=name,
            class_names=tuple(g[0] for g in groups),
            lut=lut,
            colors=colors.astype(np.uint8).reshape(len(groups), 3),
            ignore_index=ignore_index,
            ignore_color=ignore_color,
            raw_names=raw_names or {},
        )

    # ----------------------------------------------------------------------------------- queries
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def raw_ids_of(self, train_id: int) -> list[int]:
        """Raw ids that map onto ``train_id`` (ascending)."""
        return [int(i) for i in np.flatnonzero(self.lut == train_id)]

    def remap(self, labels_raw: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Raw ids (any shape, any integer dtype) -> training ids; unknown ids -> ``ignore_index``."""
        return remap(labels_raw, self)

    def colorize(self, train_ids: npt.ArrayLike) -> npt.NDArray[np.uint8]:
        """RGB (..., 3) of training ids; ignore and out-of-range ids get ``ignore_color``."""
        ids = np.asarray(train_ids)
        palette = np.vstack([self.colors, np.asarray(self.ignore_color, np.uint8)[None]])
        valid = (ids >= 0) & (ids < self.num_classes)
        out: npt.NDArray[np.uint8] = palette[np.where(valid, ids, self.num_classes).astype(np.intp)]
        return out

    def to_dict(self) -> dict[str, Any]:
        """The YAML schema of ``load_class_map`` (plain types; ``yaml.safe_dump`` writes it)."""
        doc: dict[str, Any] = {
            "name": self.name,
            "ignore_index": self.ignore_index,
            "ignore_color": list(self.ignore_color),
            "classes": [
                {"name": n, "raw_ids": self.raw_ids_of(i), "color": [int(v) for v in self.colors[i]]}
                for i, n in enumerate(self.class_names)
            ],
        }
        if self.raw_names:
            doc["raw_names"] = {int(k): str(v) for k, v in sorted(self.raw_names.items())}
        return doc


def remap(labels_raw: npt.ArrayLike, class_map: ClassMap) -> npt.NDArray[np.int64]:
    """Vectorised raw -> training id look-up; raw ids outside the table become ``ignore_index``.

    SemanticKITTI ``.label`` files pack the instance id in the upper 16 bits: pass ``labels & 0xFFFF``.
    """
    raw = np.asarray(labels_raw)
    if raw.dtype.kind not in "iub":
        raise ConfigError(f"labels must be integers to remap with '{class_map.name}', got dtype {raw.dtype}")
    raw = raw.astype(np.int64, copy=False)
    lut = class_map.lut
    inside = (raw >= 0) & (raw < lut.size)
    out: npt.NDArray[np.int64] = lut[np.where(inside, raw, 0)]
    if not inside.all():
        out = np.where(inside, out, np.int64(class_map.ignore_index))
    return out


# ------------------------------------------------------------------------------------- built-ins

_NUSCENES_RAW: Final[tuple[str, ...]] = (
    "noise", "animal", "human.pedestrian.adult", "human.pedestrian.child",
    "human.pedestrian.construction_worker", "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer", "human.pedestrian.stroller", "human.pedestrian.wheelchair",
    "movable_object.barrier", "movable_object.debris", "movable_object.pushable_pullable",
    "movable_object.trafficcone", "static_object.bicycle_rack", "vehicle.bicycle", "vehicle.bus.bendy",
    "vehicle.bus.rigid", "vehicle.car", "vehicle.construction", "vehicle.emergency.ambulance",
    "vehicle.emergency.police", "vehicle.motorcycle", "vehicle.trailer", "vehicle.truck",
    "flat.driveable_surface", "flat.other", "flat.sidewalk", "flat.terrain", "static.manmade",
    "static.other", "static.vegetation", "vehicle.ego",
)  # fmt: skip

#: nuScenes lidarseg challenge: 16 classes in the devkit's order; 0 noise, 1 animal, 5, 7, 8, 10, 11,
#: 13, 19, 20 (ambulance, police car), 29 static.other and 31 ego are ignored.
NUSCENES: Final = ClassMap.from_groups(
    "nuscenes",
    [
        ("barrier", [9], (112, 128, 144)),
        ("bicycle", [14], (220, 20, 60)),
        ("bus", [15, 16], (255, 127, 80)),
        ("car", [17], (255, 158, 0)),
        ("construction_vehicle", [18], (233, 150, 70)),
        ("motorcycle", [21], (255, 61, 99)),
        ("pedestrian", [2, 3, 4, 6], (0, 0, 230)),
        ("traffic_cone", [12], (47, 79, 79)),
        ("trailer", [22], (255, 140, 0)),
        ("truck", [23], (255, 99, 71)),
        ("driveable_surface", [24], (0, 207, 191)),
        ("other_flat", [25], (175, 0, 75)),
        ("sidewalk", [26], (75, 0, 75)),
        ("terrain", [27], (112, 180, 60)),
        ("manmade", [28], (222, 184, 135)),
        ("vegetation", [30], (0, 175, 0)),
    ],
    raw_names=dict(enumerate(_NUSCENES_RAW)),
)

_KITTI_RAW: Final[dict[int, str]] = {
    0: "unlabeled", 1: "outlier", 10: "car", 11: "bicycle", 13: "bus", 15: "motorcycle", 16: "on-rails",
    18: "truck", 20: "other-vehicle", 30: "person", 31: "bicyclist", 32: "motorcyclist", 40: "road",
    44: "parking", 48: "sidewalk", 49: "other-ground", 50: "building", 51: "fence", 52: "other-structure",
    60: "lane-marking", 70: "vegetation", 71: "trunk", 72: "terrain", 80: "pole", 81: "traffic-sign",
    99: "other-object", 252: "moving-car", 253: "moving-bicyclist", 254: "moving-person",
    255: "moving-motorcyclist", 256: "moving-on-rails", 257: "moving-bus", 258: "moving-truck",
    259: "moving-other-vehicle",
}  # fmt: skip

#: SemanticKITTI learning map (19 classes); 0 unlabeled, 1 outlier, 52 other-structure and 99
#: other-object are ignored; bus/on-rails join other-vehicle, lane-marking joins road, moving-* join
#: their static class. Colours are semantic-kitti.yaml's (stored there as BGR), converted to RGB.
SEMANTICKITTI: Final = ClassMap.from_groups(
    "semantickitti",
    [
        ("car", [10, 252], (100, 150, 245)),
        ("bicycle", [11], (100, 230, 245)),
        ("motorcycle", [15], (30, 60, 150)),
        ("truck", [18, 258], (80, 30, 180)),
        ("other-vehicle", [13, 16, 20, 256, 257, 259], (0, 0, 255)),
        ("person", [30, 254], (255, 30, 30)),
        ("bicyclist", [31, 253], (255, 40, 200)),
        ("motorcyclist", [32, 255], (150, 30, 90)),
        ("road", [40, 60], (255, 0, 255)),
        ("parking", [44], (255, 150, 255)),
        ("sidewalk", [48], (75, 0, 75)),
        ("other-ground", [49], (175, 0, 75)),
        ("building", [50], (255, 200, 0)),
        ("fence", [51], (255, 120, 50)),
        ("vegetation", [70], (0, 175, 0)),
        ("trunk", [71], (135, 60, 0)),
        ("terrain", [72], (150, 240, 80)),
        ("pole", [80], (255, 240, 150)),
        ("traffic-sign", [81], (255, 0, 0)),
    ],
    raw_names=_KITTI_RAW,
)


def _synthetic() -> ClassMap:
    ids = sorted(i for i in synth_classes.CLASS_NAMES if i != synth_classes.UNLABELLED)
    groups: list[tuple[str, Sequence[int], RGB | None]] = []
    for i in ids:
        r, g, b = (int(v) for v in synth_classes.PALETTE[i])
        groups.append((synth_classes.CLASS_NAMES[i], [i], (r, g, b)))
    return ClassMap.from_groups("synthetic", groups, raw_names=dict(synth_classes.CLASS_NAMES))


#: The synthetic world: raw 0 (unlabelled) -> ignore, raw 1..9 -> training ids 0..8.
SYNTHETIC: Final = _synthetic()

BUILTIN_CLASS_MAPS: Final[dict[str, ClassMap]] = {m.name: m for m in (NUSCENES, SEMANTICKITTI, SYNTHETIC)}


# ------------------------------------------------------------------------------------------ YAML


class _ClassSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    raw_ids: list[int] = Field(min_length=1)
    color: tuple[int, int, int] | None = None


class _ClassMapFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    ignore_index: int = IGNORE_INDEX
    ignore_color: tuple[int, int, int] = (0, 0, 0)
    classes: list[_ClassSpec] = Field(min_length=1)
    raw_names: dict[int, str] = Field(default_factory=dict)


def class_map_from_dict(doc: Any, *, source: str = "class map") -> ClassMap:
    """Validate a parsed YAML document (schema: ``ClassMap.to_dict``) into a ClassMap."""
    try:
        spec = _ClassMapFile.model_validate(doc)
    except ValidationError as err:
        lines = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()]
        raise ConfigError(f"{source} is invalid: " + "; ".join(lines)) from None
    try:
        return ClassMap.from_groups(
            spec.name,
            [(c.name, c.raw_ids, c.color) for c in spec.classes],
            ignore_index=spec.ignore_index,
            ignore_color=spec.ignore_color,
            raw_names=spec.raw_names,
        )
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def load_class_map(name_or_path: str | Path) -> ClassMap:
    """A built-in map by name (``nuscenes``, ``semantickitti``, ``synthetic``) or a YAML file."""
    key = str(name_or_path)
    if key in BUILTIN_CLASS_MAPS:
        return BUILTIN_CLASS_MAPS[key]
    path = Path(name_or_path)
    if not path.is_file():
        raise ConfigError(
            f"class map '{key}' is neither a built-in ({', '.join(sorted(BUILTIN_CLASS_MAPS))}) nor a YAML "
            "file that exists"
        )
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"class map file {path} cannot be read: {err}") from err
    return class_map_from_dict(doc, source=f"class map file {path}")


def recorded_class_map(bags: Sequence[Path]) -> str | None:
    """The class map the bags record in their metadata (``custom_data`` key
    :data:`~lidar_ssl_core.bag_formats.CLASS_MAP_KEY`, written by the converters); None when none does.

    Bags that record different maps cannot be trained or scored together: ``ConfigError`` naming them.
    Bags without a record are left out of the vote (they keep the configured map).
    """
    from lidar_ssl_core.bag.discover import expand_bags
    from lidar_ssl_core.bag.reader import read_custom_data
    from lidar_ssl_core.bag_formats import CLASS_MAP_KEY

    found: dict[str, list[Path]] = {}
    for bag in expand_bags(list(bags)):
        name = read_custom_data(bag).get(CLASS_MAP_KEY)
        if name:
            found.setdefault(name, []).append(bag)
    if len(found) > 1:
        listing = "; ".join(f"{name}: {', '.join(map(str, paths[:3]))}" for name, paths in found.items())
        raise ConfigError(
            f"the bags record different class maps ({listing}); train and evaluate one dataset at a time, "
            "or set `downstream.class_map` (-s downstream.class_map=NAME) to force one"
        )
    return next(iter(found), None)


def dump_class_map(class_map: ClassMap) -> str:
    """YAML text of a map (a starting point for a dataset's own file)."""
    return str(yaml.safe_dump(class_map.to_dict(), sort_keys=False, default_flow_style=None))


__all__ = [
    "BUILTIN_CLASS_MAPS",
    "IGNORE_INDEX",
    "MAX_RAW_ID",
    "NUSCENES",
    "SEMANTICKITTI",
    "SYNTHETIC",
    "ClassMap",
    "class_map_from_dict",
    "default_colors",
    "dump_class_map",
    "load_class_map",
    "recorded_class_map",
    "remap",
]
