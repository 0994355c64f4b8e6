"""Procedural street scene: layout, objects as primitive arrays, motion of cars, people and the ego.

Coordinates are the ``map`` frame: x along the main street, y to the left, z up, ground at z = 0.
The street is a strip of ``world_length_m`` along x. Cross-section (|y|, metres): road 0..6 (two
driving lanes of 3.5 m split by a dashed centre line, parking lanes beyond solid edge lines at 3.5),
kerb and sidewalk 6..9 (0.15 m high), grass strip 9..12 with trees and bushes, buildings from 12 on.
An optional cross street (width 12 m) crosses the main one ahead of the ego start, with zebra crossings.

Every object is a few primitives (yaw-oriented boxes, vertical capped cylinders, axis-aligned
ellipsoids) stored as arrays, so the ray caster tests thousands of rays against many primitives at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from lidar_ssl_core.errors import ConfigError
from lidar_ssl_core.synth import classes as C
from lidar_ssl_core.synth.config import SynthConfig

F64 = npt.NDArray[np.float64]

ROAD_HALF_WIDTH = 6.0
LANE_WIDTH = 3.5
SIDEWALK_OUTER = 9.0
SIDEWALK_HEIGHT = 0.15
GRASS_OUTER = 12.0
CROSS_HALF_WIDTH = 6.0
CROSS_LENGTH = 60.0  # |y| extent of the cross street
MARKING_HALF_WIDTH = 0.1
DRIVE_MARGIN_M = 90.0  # street kept on both sides of the drive (beyond sensor range)


class Material(IntEnum):
    """Surface kinds: each maps to one semantic class, a texture and a LiDAR reflectivity."""

    GROUND = 0  # road / lane marking / terrain, split by position
    SIDEWALK = 1
    BUILDING = 2
    TRUNK = 3
    FOLIAGE = 4
    BUSH = 5
    CAR_BODY = 6
    CAR_CABIN = 7
    CAR_WHEEL = 8
    PERSON = 9
    POLE = 10
    LAMP = 11


#: Semantic class of each material (ground is resolved per point by :func:`ground_class`).
MATERIAL_CLASS = np.array(
    [
        C.ROAD,
        C.SIDEWALK,
        C.BUILDING,
        C.VEGETATION,
        C.VEGETATION,
        C.VEGETATION,
        C.CAR,
        C.CAR,
        C.CAR,
        C.PEDESTRIAN,
        C.POLE,
        C.POLE,
    ],
    dtype=np.uint8,
)


class Kind(IntEnum):
    """Primitive kinds, also the ``kind`` code of a ray hit (ground = the z=0 plane)."""

    GROUND = 0
    BOX = 1
    CYLINDER = 2
    ELLIPSOID = 3


@dataclass(frozen=True)
class Primitives:
    """Primitives of one kind, one row each.

    ``center``: box centre / cylinder base centre / ellipsoid centre. ``size``: box half extents /
    (radius, radius, height) / ellipsoid radii. ``yaw``: box heading (0 for the others). ``color``: base
    albedo in 0..1. ``velocity``: m/s in map; moving objects wrap around the street ends as one piece
    (``anchor_x`` is their object's reference x).
    """

    kind: Kind
    center: F64
    size: F64
    yaw: F64
    material: npt.NDArray[np.int16]
    instance: npt.NDArray[np.int32]
    color: npt.NDArray[np.float32]
    velocity: F64
    anchor_x: F64

    def __len__(self) -> int:
        return int(self.center.shape[0])

    def bounding_spheres(self) -> tuple[F64, F64]:
        """(centres (M,3), radii (M,)) enclosing each primitive, for culling."""
        if self.kind == Kind.BOX:
            return self.center, np.linalg.norm(self.size, axis=1)
        if self.kind == Kind.CYLINDER:
            mid = self.center.copy()
            mid[:, 2] += 0.5 * self.size[:, 2]
            return mid, np.hypot(self.size[:, 0], 0.5 * self.size[:, 2])
        return self.center, self.size.max(axis=1)

    def select(self, mask: npt.NDArray[np.bool_] | npt.NDArray[np.integer]) -> Primitives:
        return Primitives(
            self.kind,
            self.center[mask],
            self.size[mask],
            self.yaw[mask],
            self.material[mask],
            self.instance[mask],
            self.color[mask],
            self.velocity[mask],
            self.anchor_x[mask],
        )


class _Builder:
    """Collects primitives row by row during generation, then freezes them into arrays."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.rows: list[tuple[float, ...]] = []

    def add(
        self,
        center: tuple[float, float, float],
        size: tuple[float, float, float],
        material: Material,
        instance: int,
        color: tuple[float, float, float] | npt.NDArray[np.float64],
        yaw: float = 0.0,
        velocity_x: float = 0.0,
        anchor_x: float = 0.0,
    ) -> None:
        c = tuple(float(v) for v in color)
        self.rows.append((*center, *size, yaw, float(material), float(instance), *c, velocity_x, anchor_x))

    def build(self) -> Primitives:
        a = np.asarray(self.rows, dtype=np.float64).reshape(-1, 14)
        vel = np.zeros((a.shape[0], 3))
        vel[:, 0] = a[:, 12]
        return Primitives(
            kind=self.kind,
            center=np.ascontiguousarray(a[:, 0:3]),
            size=np.ascontiguousarray(a[:, 3:6]),
            yaw=np.ascontiguousarray(a[:, 6]),
            material=a[:, 7].astype(np.int16),
            instance=a[:, 8].astype(np.int32),
            color=a[:, 9:12].astype(np.float32),
            velocity=vel,
            anchor_x=np.ascontiguousarray(a[:, 13]),
        )


@dataclass(frozen=True)
class EgoTrajectory:
    """Smooth analytic drive along the right lane: speed and lateral offset vary sinusoidally."""

    x0: float
    speed: float
    speed_amp: float = 0.12
    speed_period_s: float = 7.0
    lateral_amp: float = 0.6
    lateral_period_s: float = 9.0
    phase_speed: float = 0.0
    phase_lateral: float = 0.0

    def pose(self, t_s: float) -> F64:
        """4x4 map -> base_link at ``t_s`` seconds after the first sweep (base_link on the ground)."""
        ws = 2 * math.pi / self.speed_period_s
        wl = 2 * math.pi / self.lateral_period_s
        a = self.speed * self.speed_amp
        x = (
            self.x0
            + self.speed * t_s
            - a / ws * (math.cos(ws * t_s + self.phase_speed) - math.cos(self.phase_speed))
        )
        dx = self.speed + a * math.sin(ws * t_s + self.phase_speed)
        y = -LANE_WIDTH / 2 + self.lateral_amp * math.sin(wl * t_s + self.phase_lateral)
        dy = self.lateral_amp * wl * math.cos(wl * t_s + self.phase_lateral)
        yaw = math.atan2(dy, dx)
        c, s = math.cos(yaw), math.sin(yaw)
        T = np.eye(4)
        T[:2, :2] = [[c, -s], [s, c]]
        T[0, 3], T[1, 3] = x, y
        return T

    def max_travel(self, duration_s: float) -> float:
        return self.speed * (1 + self.speed_amp) * duration_s


@dataclass(frozen=True)
class World:
    """The generated street: static and moving primitives, layout constants and the ego drive."""

    config: SynthConfig
    boxes: Primitives
    cylinders: Primitives
    ellipsoids: Primitives
    length_m: float
    cross_x: float | None
    ego: EgoTrajectory

    def primitives_at(self, t_s: float) -> tuple[Primitives, Primitives, Primitives]:
        """All primitives with moving ones placed at ``t_s`` (wrapped around the street ends)."""
        return tuple(self._move(p, t_s) for p in (self.boxes, self.cylinders, self.ellipsoids))  # type: ignore[return-value]

    def _move(self, prims: Primitives, t_s: float) -> Primitives:
        vx = prims.velocity[:, 0]
        if not np.any(vx):
            return prims
        moved = prims.anchor_x + vx * t_s
        wrapped = np.mod(moved, self.length_m)
        center = prims.center.copy()
        center[:, 0] += (vx * t_s) + (wrapped - moved)
        return replace(prims, center=center)

    @property
    def n_primitives(self) -> int:
        return len(self.boxes) + len(self.cylinders) + len(self.ellipsoids)


def ground_class(x: F64, y: F64, cross_x: float | None) -> npt.NDArray[np.uint8]:
    """Semantic class of the z=0 ground at (x, y): road, lane marking or terrain (grass)."""
    ay = np.abs(y)
    dxc = np.abs(x - cross_x) if cross_x is not None else np.full_like(x, np.inf)
    in_cross = (dxc < CROSS_HALF_WIDTH) & (ay < CROSS_LENGTH)
    in_main = ay < ROAD_HALF_WIDTH
    out = np.full(x.shape, C.TERRAIN, dtype=np.uint8)
    out[in_main | in_cross] = C.ROAD
    zebra = in_main & (dxc >= CROSS_HALF_WIDTH + 0.5) & (dxc <= CROSS_HALF_WIDTH + 3.5)
    zebra &= np.mod(y + ROAD_HALF_WIDTH, 1.0) < 0.5
    lines = in_main & ~in_cross & (dxc > CROSS_HALF_WIDTH + 3.5)
    centre = (ay < MARKING_HALF_WIDTH) & (np.mod(x, 6.0) < 3.0)
    edge = np.abs(ay - LANE_WIDTH) < MARKING_HALF_WIDTH
    out[zebra | (lines & (centre | edge))] = C.LANE_MARKING
    return out


_BUILDING_COLORS = np.array(
    [[0.76, 0.70, 0.60], [0.62, 0.33, 0.25], [0.55, 0.55, 0.56], [0.85, 0.83, 0.78], [0.50, 0.42, 0.36]]
)
_CAR_COLORS = np.array(
    [
        [0.70, 0.08, 0.08],
        [0.10, 0.20, 0.55],
        [0.75, 0.75, 0.77],
        [0.92, 0.92, 0.92],
        [0.08, 0.08, 0.09],
        [0.27, 0.29, 0.32],
        [0.10, 0.35, 0.20],
    ]
)
_TROUSERS = np.array([[0.10, 0.12, 0.25], [0.08, 0.08, 0.08], [0.55, 0.48, 0.35], [0.30, 0.30, 0.32]])
_SKIN = np.array([[0.90, 0.72, 0.60], [0.70, 0.50, 0.38], [0.45, 0.32, 0.24]])


class _Generator:
    """Lays out one street from a seeded random generator (draw order is fixed -> deterministic)."""

    def __init__(self, config: SynthConfig, length: float, cross_x: float | None, ego: EgoTrajectory) -> None:
        self.cfg = config
        self.rng = np.random.default_rng([config.seed, 0x5717])
        self.length = length
        self.cross_x = cross_x
        self.ego = ego
        self.boxes = _Builder(Kind.BOX)
        self.cyls = _Builder(Kind.CYLINDER)
        self.ells = _Builder(Kind.ELLIPSOID)
        self.next_instance = 1

    def instance(self) -> int:
        self.next_instance += 1
        return self.next_instance - 1

    def near_cross(self, x: float, half: float) -> bool:
        return self.cross_x is not None and abs(x - self.cross_x) < half

    def run(self) -> None:
        self.sidewalks()
        self.buildings()
        self.vegetation()
        self.poles()
        self.parked_cars()
        self.moving_cars()
        self.pedestrians()

    def sidewalks(self) -> None:
        seg = 8.0
        grey = (0.62, 0.61, 0.58)
        half_h = SIDEWALK_HEIGHT / 2
        mid_y = (ROAD_HALF_WIDTH + SIDEWALK_OUTER) / 2
        half_w = (SIDEWALK_OUTER - ROAD_HALF_WIDTH) / 2
        for side in (-1.0, 1.0):
            for x0 in np.arange(0.0, self.length, seg):
                x1 = min(x0 + seg, self.length)
                if self.cross_x is not None:  # cut the cross road out of the sidewalk
                    a, b = self.cross_x - CROSS_HALF_WIDTH, self.cross_x + CROSS_HALF_WIDTH
                    if x0 < b and x1 > a:
                        for lo, hi in ((x0, min(x1, a)), (max(x0, b), x1)):
                            if hi - lo > 0.05:
                                self.boxes.add(
                                    ((lo + hi) / 2, side * mid_y, half_h),
                                    ((hi - lo) / 2, half_w, half_h),
                                    Material.SIDEWALK,
                                    0,
                                    grey,
                                )
                        continue
                self.boxes.add(
                    ((x0 + x1) / 2, side * mid_y, half_h),
                    ((x1 - x0) / 2, half_w, half_h),
                    Material.SIDEWALK,
                    0,
                    grey,
                )
            if self.cross_x is not None:
                for dx in (-1.0, 1.0):
                    xc = self.cross_x + dx * mid_y
                    for y0 in np.arange(ROAD_HALF_WIDTH, CROSS_LENGTH, seg):
                        y1 = min(y0 + seg, CROSS_LENGTH)
                        self.boxes.add(
                            (xc, side * (y0 + y1) / 2, half_h),
                            (half_w, (y1 - y0) / 2, half_h),
                            Material.SIDEWALK,
                            0,
                            grey,
                        )

    def buildings(self) -> None:
        rng = self.rng
        for side in (-1.0, 1.0):
            x = float(rng.uniform(0.0, 5.0))
            while x < self.length:
                length = float(rng.uniform(8.0, 22.0))
                depth = float(rng.uniform(8.0, 16.0))
                height = float(rng.uniform(6.0, 14.0) if rng.random() < 0.7 else rng.uniform(14.0, 26.0))
                setback = float(rng.uniform(0.0, 2.0))
                color = _BUILDING_COLORS[rng.integers(len(_BUILDING_COLORS))] * rng.uniform(0.9, 1.08)
                xc = x + length / 2
                if not self.near_cross(xc, CROSS_HALF_WIDTH + 6.0 + length / 2) and x + length < self.length:
                    y_in = GRASS_OUTER + setback
                    self.boxes.add(
                        (xc, side * (y_in + depth / 2), height / 2),
                        (length / 2, depth / 2, height / 2),
                        Material.BUILDING,
                        self.instance(),
                        np.clip(color, 0, 1),
                    )
                x += length + float(rng.uniform(1.0, 7.0))

    def _count(self, per_100m: float) -> int:
        return int(self.rng.poisson(per_100m * self.length / 100.0))

    def vegetation(self) -> None:
        rng = self.rng
        for _ in range(self._count(self.cfg.trees_per_100m)):
            x = float(rng.uniform(0.0, self.length))
            side = float(rng.choice([-1.0, 1.0]))
            if self.near_cross(x, CROSS_HALF_WIDTH + 5.0):
                continue
            y = side * float(rng.uniform(SIDEWALK_OUTER + 0.8, GRASS_OUTER - 0.8))
            trunk_h = float(rng.uniform(2.0, 3.5))
            trunk_r = float(rng.uniform(0.12, 0.22))
            rxy = float(rng.uniform(1.4, 2.6))
            rz = float(rng.uniform(1.6, 3.0))
            inst = self.instance()
            self.cyls.add(
                (x, y, 0.0), (trunk_r, trunk_r, trunk_h + 0.3 * rz), Material.TRUNK, inst, (0.33, 0.24, 0.16)
            )
            tint = np.array([0.18, 0.38, 0.12]) * rng.uniform(0.8, 1.2, 3)
            self.ells.add(
                (x, y, trunk_h + 0.7 * rz), (rxy, rxy, rz), Material.FOLIAGE, inst, np.clip(tint, 0, 1)
            )
        for _ in range(self._count(self.cfg.bushes_per_100m)):
            x = float(rng.uniform(0.0, self.length))
            side = float(rng.choice([-1.0, 1.0]))
            if self.near_cross(x, CROSS_HALF_WIDTH + 4.0):
                continue
            y = side * float(rng.uniform(SIDEWALK_OUTER + 0.6, GRASS_OUTER - 0.3))
            r = rng.uniform(0.5, 1.1, 2)
            rz = float(rng.uniform(0.5, 0.9))
            tint = np.array([0.16, 0.33, 0.12]) * rng.uniform(0.8, 1.2, 3)
            self.ells.add(
                (x, y, 0.35 * rz),
                (float(r[0]), float(r[1]), rz),
                Material.BUSH,
                self.instance(),
                np.clip(tint, 0, 1),
            )

    def poles(self) -> None:
        rng = self.rng
        metal = (0.45, 0.46, 0.48)
        for side in (-1.0, 1.0):
            x = float(rng.uniform(0.0, 25.0))
            while x < self.length:
                if not self.near_cross(x, CROSS_HALF_WIDTH + 1.0):
                    y = side * (ROAD_HALF_WIDTH + 0.45)
                    h = float(rng.uniform(6.5, 8.0))
                    inst = self.instance()
                    self.cyls.add((x, y, 0.0), (0.13, 0.13, h), Material.POLE, inst, metal)
                    arm = 1.0
                    self.boxes.add(
                        (x, y - side * arm, h - 0.1), (0.05, arm, 0.05), Material.POLE, inst, metal
                    )
                    self.boxes.add(
                        (x, y - side * 2 * arm, h - 0.2),
                        (0.22, 0.32, 0.08),
                        Material.LAMP,
                        inst,
                        (0.80, 0.80, 0.72),
                    )
                x += float(rng.uniform(22.0, 32.0))

    def _car(self, x: float, y: float, yaw: float, vx: float) -> None:
        rng = self.rng
        length = float(rng.uniform(4.0, 4.9))
        width = float(rng.uniform(1.7, 1.95))
        body_h = float(rng.uniform(0.7, 0.9))
        cabin_h = float(rng.uniform(0.45, 0.6))
        color = _CAR_COLORS[rng.integers(len(_CAR_COLORS))]
        inst = self.instance()
        c, s = math.cos(yaw), math.sin(yaw)
        z_body = 0.3 + body_h / 2

        def at(fx: float, fy: float) -> tuple[float, float]:
            return x + c * fx - s * fy, y + s * fx + c * fy

        self.boxes.add(
            (x, y, z_body), (length / 2, width / 2, body_h / 2), Material.CAR_BODY, inst, color, yaw, vx, x
        )
        cx, cy = at(-0.08 * length, 0.0)
        self.boxes.add(
            (cx, cy, 0.3 + body_h + cabin_h / 2),
            (0.28 * length, 0.44 * width, cabin_h / 2),
            Material.CAR_CABIN,
            inst,
            color,
            yaw,
            vx,
            x,
        )
        for fx in (-0.32 * length, 0.32 * length):
            for fy in (-0.5 * width + 0.08, 0.5 * width - 0.08):
                wx, wy = at(fx, fy)
                self.boxes.add(
                    (wx, wy, 0.33),
                    (0.33, 0.1, 0.33),
                    Material.CAR_WHEEL,
                    inst,
                    (0.06, 0.06, 0.06),
                    yaw,
                    vx,
                    x,
                )

    def parked_cars(self) -> None:
        rng = self.rng
        spacing = 100.0 / max(self.cfg.parked_cars_per_100m, 1e-3) / 2  # per side
        if self.cfg.parked_cars_per_100m <= 0:
            return
        for side in (-1.0, 1.0):
            x = float(rng.uniform(0.0, spacing))
            while x < self.length - 3.0:
                if not self.near_cross(x, CROSS_HALF_WIDTH + 10.0):
                    yaw = (0.0 if side < 0 else math.pi) + float(rng.normal(0.0, 0.03))
                    y = side * (
                        LANE_WIDTH + (ROAD_HALF_WIDTH - LANE_WIDTH) / 2 + float(rng.uniform(-0.1, 0.15))
                    )
                    self._car(x, y, yaw, 0.0)
                x += max(5.5, float(rng.exponential(spacing)) + 5.0)

    def moving_cars(self) -> None:
        rng = self.rng
        n = self.cfg.moving_cars
        ahead = n // 3
        ego_x, v = self.ego.x0, self.ego.speed
        for i in range(ahead):  # same lane, ahead of the ego, about as fast
            x = ego_x + 18.0 + 22.0 * i + float(rng.uniform(0.0, 6.0))
            self._car(x, -LANE_WIDTH / 2, 0.0, v * float(rng.uniform(1.0, 1.12)))
        for _ in range(n - ahead):  # oncoming lane, anywhere along the street
            x = float(rng.uniform(0.0, self.length))
            self._car(x, LANE_WIDTH / 2, math.pi, -float(rng.uniform(6.0, 11.0)))

    def pedestrians(self) -> None:
        rng = self.rng
        for _ in range(self._count(self.cfg.pedestrians_per_100m)):
            x = float(rng.uniform(0.0, self.length))
            side = float(rng.choice([-1.0, 1.0]))
            y = side * float(rng.uniform(ROAD_HALF_WIDTH + 1.0, SIDEWALK_OUTER - 0.4))
            walking = rng.random() < 0.75
            vx = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.9, 1.6)) if walking else 0.0
            h = float(rng.uniform(1.55, 1.92))
            shirt = np.clip(rng.uniform(0.1, 0.95, 3), 0, 1)
            trousers = _TROUSERS[rng.integers(len(_TROUSERS))]
            skin = _SKIN[rng.integers(len(_SKIN))]
            inst = self.instance()
            z0 = SIDEWALK_HEIGHT
            self.cyls.add((x, y, z0), (0.15, 0.15, 0.47 * h), Material.PERSON, inst, trousers, 0.0, vx, x)
            self.cyls.add(
                (x, y, z0 + 0.47 * h), (0.21, 0.21, 0.37 * h), Material.PERSON, inst, shirt, 0.0, vx, x
            )
            self.ells.add((x, y, z0 + 0.92 * h), (0.1, 0.1, 0.12), Material.PERSON, inst, skin, 0.0, vx, x)


def generate_world(config: SynthConfig) -> World:
    """Lay out a street long enough for the configured drive; deterministic from ``config.seed``."""
    rng = np.random.default_rng([config.seed, 0xE60])
    duration = config.n_frames / config.lidar_rate_hz + 0.2
    ego = EgoTrajectory(
        x0=DRIVE_MARGIN_M,
        speed=config.ego_speed_mps,
        phase_speed=float(rng.uniform(0, 2 * math.pi)),
        phase_lateral=float(rng.uniform(0, 2 * math.pi)),
    )
    needed = 2 * DRIVE_MARGIN_M + ego.max_travel(duration)
    length = config.world_length_m if config.world_length_m is not None else math.ceil(needed / 10.0) * 10.0
    if length < needed:
        raise ConfigError(
            f"world_length_m={length} is too short for {config.n_frames} frames "
            f"at {config.ego_speed_mps} m/s; "
            f"use at least {math.ceil(needed)} or leave it unset (auto)"
        )
    cross_x = DRIVE_MARGIN_M + 40.0 if config.intersection else None
    gen = _Generator(config, length, cross_x, ego)
    gen.run()
    if gen.next_instance > 65535:
        raise ConfigError("too many objects for uint16 instance ids; lower the densities or the length")
    return World(
        config=config,
        boxes=gen.boxes.build(),
        cylinders=gen.cyls.build(),
        ellipsoids=gen.ells.build(),
        length_m=float(length),
        cross_x=cross_x,
        ego=ego,
    )
