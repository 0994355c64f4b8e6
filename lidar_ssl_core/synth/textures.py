"""Procedural materials: albedo (camera), reflectivity (LiDAR) and class at each hit point.

Textures are functions of coordinates in the object's own frame (or of map coordinates for static
surfaces), so a surface looks the same from every camera and every frame. Each class keeps one look
(asphalt, paving tiles, facades with windows, bark, foliage, car paint with glass cabin...) and one
reflectivity range, giving the image-to-LiDAR pretraining a consistent cross-modal signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lidar_ssl_core.synth import classes as C
from lidar_ssl_core.synth.raycast import Surface
from lidar_ssl_core.synth.world import MATERIAL_CLASS, Kind, Material, ground_class

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]


def _hash(ix: npt.NDArray[np.int64], iy: npt.NDArray[np.int64], iz: npt.NDArray[np.int64], salt: int) -> F64:
    """Uniform [0, 1) value per integer lattice point (a multiplicative integer hash)."""
    h = ix.astype(np.uint32) * np.uint32(0x8DA6B343)
    h ^= iy.astype(np.uint32) * np.uint32(0xD8163841)
    h ^= iz.astype(np.uint32) * np.uint32(0xCB1AB31F)
    h ^= np.uint32(salt & 0xFFFFFFFF)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0x5BD1E995)
    h ^= h >> np.uint32(15)
    return h.astype(np.float64) * (1.0 / 4294967296.0)


def _smooth(f: F64) -> F64:
    return f * f * (3.0 - 2.0 * f)


def noise2(x: F64, y: F64, salt: int = 0) -> F64:
    """Smooth value noise in [0, 1) with unit lattice spacing."""
    fx, fy = np.floor(x), np.floor(y)
    ix, iy = fx.astype(np.int64), fy.astype(np.int64)
    u, v = _smooth(x - fx), _smooth(y - fy)
    z = np.zeros_like(ix)
    a = _hash(ix, iy, z, salt)
    b = _hash(ix + 1, iy, z, salt)
    c = _hash(ix, iy + 1, z, salt)
    d = _hash(ix + 1, iy + 1, z, salt)
    return (a + (b - a) * u) * (1 - v) + (c + (d - c) * u) * v


def noise3(p: F64, salt: int = 0) -> F64:
    """Smooth 3-D value noise in [0, 1) for volumes (foliage)."""
    f = np.floor(p)
    i = f.astype(np.int64)
    w = _smooth(p - f)
    out = np.zeros(p.shape[0])
    for dx in (0, 1):
        wx = w[:, 0] if dx else 1 - w[:, 0]
        for dy in (0, 1):
            wy = w[:, 1] if dy else 1 - w[:, 1]
            for dz in (0, 1):
                wz = w[:, 2] if dz else 1 - w[:, 2]
                out += wx * wy * wz * _hash(i[:, 0] + dx, i[:, 1] + dy, i[:, 2] + dz, salt)
    return out


@dataclass(frozen=True)
class Appearance:
    """Per-hit material response: ``albedo`` in 0..1, LiDAR ``reflectivity`` in 0..1, semantic ``label``."""

    albedo: F32  # (K, 3)
    reflectivity: F64  # (K,)
    label: npt.NDArray[np.uint8]  # (K,)
    dropout: F64  # (K,) extra probability that a LiDAR return is lost (glass)


def appearance(surf: Surface, cross_x: float | None, *, need_albedo: bool = True) -> Appearance:
    """Albedo, reflectivity and class of every hit in ``surf``."""
    k = surf.point.shape[0]
    albedo = np.zeros((k, 3), np.float32)
    refl = np.zeros(k)
    drop = np.zeros(k)
    label = MATERIAL_CLASS[surf.material].copy()
    mat = np.where(surf.kind == Kind.GROUND, Material.GROUND, surf.material)
    p, lp, ln = surf.point, surf.local, surf.local_normal

    def each(material: Material) -> npt.NDArray[np.int64]:
        return np.flatnonzero(mat == material)

    s = each(Material.GROUND)
    if s.size:
        x, y = p[s, 0], p[s, 1]
        g = ground_class(x, y, cross_x)
        label[s] = g
        refl[s] = np.select([g == C.ROAD, g == C.LANE_MARKING], [0.10, 0.85], 0.35)
        if need_albedo:
            fine = noise2(x * 6.0, y * 6.0, 11)
            road = (
                np.array([0.30, 0.30, 0.32])
                * (0.80 + 0.25 * noise2(x * 1.3, y * 1.3, 7) + 0.12 * fine)[:, None]
            )
            mark = np.array([0.88, 0.88, 0.84]) * (0.92 + 0.1 * fine)[:, None]
            patch = _smooth(noise2(x * 0.25, y * 0.25, 3))[:, None]
            grass = np.array([0.28, 0.45, 0.16]) * (1 - patch) + np.array([0.45, 0.37, 0.24]) * patch
            grass = grass * (0.75 + 0.4 * fine)[:, None]
            albedo[s] = np.select(
                [(g == C.ROAD)[:, None], (g == C.LANE_MARKING)[:, None]], [road, mark], grass
            )

    s = each(Material.SIDEWALK)
    if s.size:
        refl[s] = 0.25
        if need_albedo:
            top = ln[s, 2] > 0.5
            x, y = p[s, 0], p[s, 1]
            joint = (np.mod(x, 0.6) < 0.04) | (np.mod(y, 0.6) < 0.04)
            shade = np.where(joint, 0.72, 0.92 + 0.12 * noise2(x * 3, y * 3, 5))
            tiles = surf.color[s] * shade[:, None]
            kerb = np.array([0.74, 0.74, 0.72], np.float32)
            albedo[s] = np.where(top[:, None], tiles, kerb)

    s = each(Material.BUILDING)
    if s.size:
        size = surf.size[s]
        nx = np.abs(ln[s, 0]) > 0.5
        roof = ln[s, 2] > 0.5
        u = np.where(nx, lp[s, 1] + size[:, 1], lp[s, 0] + size[:, 0])
        v = p[s, 2]
        cu, cv = np.floor(u / 2.8), np.floor(v / 3.2)
        window = (
            (np.mod(u, 2.8) > 0.6) & (np.mod(u, 2.8) < 2.1) & (np.mod(v, 3.2) > 0.9) & (np.mod(v, 3.2) < 2.5)
        )
        window &= ~roof & (v > 0.8)
        refl[s] = np.where(window, 0.05, np.where(roof, 0.22, 0.30))
        drop[s] = np.where(window, 0.4, 0.0)
        if need_albedo:
            inst = surf.instance[s].astype(np.int64)
            wall = surf.color[s] * (0.86 + 0.2 * noise2(u * 1.5, v * 1.5, 17))[:, None]
            lit = _hash(cu.astype(np.int64), cv.astype(np.int64), inst, 23)
            glass = np.array([0.13, 0.17, 0.24]) * (0.75 + 0.6 * lit)[:, None]
            roof_c = (
                np.array([0.34, 0.33, 0.32]) * (0.85 + 0.2 * noise2(lp[s, 0] * 2, lp[s, 1] * 2, 19))[:, None]
            )
            albedo[s] = np.where(roof[:, None], roof_c, np.where(window[:, None], glass, wall))

    s = each(Material.TRUNK)
    if s.size:
        refl[s] = 0.30
        if need_albedo:
            ang = np.arctan2(lp[s, 1], lp[s, 0])
            albedo[s] = surf.color[s] * (0.65 + 0.5 * noise2(ang * 5.0, lp[s, 2] * 0.8, 29))[:, None]

    for material, r in ((Material.FOLIAGE, 0.40), (Material.BUSH, 0.36)):
        s = each(material)
        if s.size:
            refl[s] = r
            if need_albedo:
                n = noise3(lp[s] * 2.5, 31) * 0.7 + noise3(lp[s] * 7.0, 37) * 0.3
                albedo[s] = surf.color[s] * (0.5 + 0.9 * n)[:, None]

    s = each(Material.CAR_BODY)
    if s.size:
        refl[s] = 0.55
        if need_albedo:
            size = surf.size[s]
            front_back = np.abs(ln[s, 0]) > 0.5
            light = front_back & (np.abs(lp[s, 1]) > 0.55 * size[:, 1]) & (lp[s, 2] > 0.2 * size[:, 2])
            lamp = np.where((ln[s, 0] > 0)[:, None], [0.95, 0.95, 0.85], [0.75, 0.1, 0.08])
            paint = surf.color[s] * (0.93 + 0.08 * noise2(lp[s, 0] * 2, lp[s, 2] * 2, 41))[:, None]
            albedo[s] = np.where(light[:, None], lamp, paint)

    s = each(Material.CAR_CABIN)
    if s.size:
        top = ln[s, 2] > 0.5
        refl[s] = np.where(top, 0.55, 0.06)
        drop[s] = np.where(top, 0.0, 0.3)
        if need_albedo:
            albedo[s] = np.where(top[:, None], surf.color[s], np.array([0.08, 0.10, 0.13], np.float32))

    s = each(Material.CAR_WHEEL)
    if s.size:
        refl[s] = 0.08
        albedo[s] = surf.color[s]

    s = each(Material.PERSON)
    if s.size:
        refl[s] = 0.20
        if need_albedo:
            albedo[s] = (
                surf.color[s] * (0.88 + 0.15 * noise2(lp[s, 0] * 9 + lp[s, 1] * 9, lp[s, 2] * 9, 43))[:, None]
            )

    s = each(Material.POLE)
    if s.size:
        refl[s] = 0.60
        if need_albedo:
            albedo[s] = surf.color[s] * (0.9 + 0.12 * noise2(lp[s, 0] * 5, lp[s, 2] * 5, 47))[:, None]

    s = each(Material.LAMP)
    if s.size:
        refl[s] = 0.50
        albedo[s] = surf.color[s]

    return Appearance(np.clip(albedo, 0.0, 1.0).astype(np.float32), refl, label, drop)


SUN_DIRECTION = np.array([-0.35, 0.45, 0.82]) / np.linalg.norm([-0.35, 0.45, 0.82])
SKY_HORIZON = np.array([0.78, 0.84, 0.90])
SKY_ZENITH = np.array([0.33, 0.52, 0.82])


def shade(albedo: F32, normal: F64, distance: F64) -> F64:
    """Lambertian sun + ambient sky light, with distance haze towards the horizon colour."""
    lambert = np.maximum(np.einsum("ij,j->i", normal, SUN_DIRECTION), 0.0)
    light = 0.36 + 0.62 * lambert + 0.08 * normal[:, 2]
    col = albedo * light[:, None]
    haze = (1.0 - np.exp(-distance / 350.0))[:, None]
    return np.asarray(col * (1 - haze) + SKY_HORIZON * haze)


def sky(dirs: F64) -> F64:
    """Sky colour of rays that hit nothing: horizon haze to zenith blue."""
    s = np.clip(dirs[:, 2] / 0.6, 0.0, 1.0) ** 0.7
    return np.asarray(SKY_HORIZON * (1 - s)[:, None] + SKY_ZENITH * s[:, None])
