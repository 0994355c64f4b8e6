"""Vectorised ray casting of ray bundles against the world's primitive arrays.

A bundle is many rays from one origin (a camera, or the LiDAR at one instant), grouped into small
angular tiles. Each tile's bounding cone is tested against each primitive's bounding sphere (a
tiles x primitives matrix, cheap), and only the surviving (ray, primitive) pairs are intersected
exactly, in chunks. The nearest hit per ray is kept with ``np.minimum.at``. The ground plane z = 0
is intersected analytically for every ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from lidar_ssl_core.synth.world import Kind, Primitives

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

_EPS = np.float32(1e-4)
_PAIR_CHUNK = 2_000_000


@dataclass(frozen=True)
class Tiling:
    """Rays regrouped so each tile is contiguous: ``order[k]`` is the original index of sorted ray k."""

    order: I64
    start: I64
    count: I64


def grid_tiling(rows: int, cols: int, tile_rows: int, tile_cols: int) -> Tiling:
    """Tiles of a row-major (rows x cols) ray grid."""
    r = np.arange(rows)[:, None] // tile_rows
    c = np.arange(cols)[None, :] // tile_cols
    n_tc = -(-cols // tile_cols)
    tile = (r * n_tc + c).ravel()
    order = np.argsort(tile, kind="stable").astype(np.int64)
    count = np.bincount(tile).astype(np.int64)
    count = count[count > 0]
    start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
    return Tiling(order, start, count)


@dataclass(frozen=True)
class Hits:
    """Nearest hit per ray. ``kind`` is -1 for no hit (``t`` = inf), else a :class:`Kind` code."""

    t: F64
    kind: npt.NDArray[np.int8]
    index: I64


@dataclass(frozen=True)
class Surface:
    """Geometry at the hit points of the rays in ``rays`` (indices into the bundle)."""

    rays: I64
    point: F64  # (K, 3) map frame
    normal: F64  # (K, 3) map frame, unit, facing outward
    local: F64  # (K, 3) point in the primitive's own frame (moves with it)
    local_normal: F64  # (K, 3)
    kind: npt.NDArray[np.int8]
    material: npt.NDArray[np.int16]
    instance: npt.NDArray[np.int32]
    color: npt.NDArray[np.float32]
    size: F64  # (K, 3) size of the primitive hit (zeros for the ground)


def _pairs(
    origin: F64, axis: F64, cos_half: F64, tile_far: F64, tiling: Tiling, prims: Primitives
) -> tuple[I64, I64]:
    """(sorted-ray index, primitive index) of every ray whose tile cone meets the primitive's sphere.

    ``tile_far`` is the farthest hit found so far in each tile: a primitive entirely beyond it is hidden.
    """
    c, r = prims.bounding_spheres()
    v = c - origin
    d = np.linalg.norm(v, axis=1)
    inside = d <= r
    vhat = v / np.maximum(d, 1e-9)[:, None]
    alpha = np.arcsin(np.clip(r / np.maximum(d, 1e-9), 0.0, 1.0))
    half = np.arccos(np.clip(cos_half, -1.0, 1.0))
    lim = np.minimum(half[:, None] + alpha[None, :], np.pi)
    hit = np.einsum("ij,kj->ik", axis, vhat) >= np.cos(lim)  # einsum: no BLAS threads
    hit |= inside[None, :]
    hit &= (d - r)[None, :] < tile_far[:, None]
    ti, mi = np.nonzero(hit)
    cnt = tiling.count[ti]
    total = int(cnt.sum())
    if total == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    first = np.cumsum(cnt) - cnt
    rays = np.repeat(tiling.start[ti] - first, cnt) + np.arange(total, dtype=np.int64)
    return rays, np.repeat(mi.astype(np.int64), cnt)


def _params(kind: Kind, o: F64, prims: Primitives) -> F32:
    """Per-primitive constants of the intersection, one row per quantity (float32, contiguous rows)."""
    rel = o - prims.center
    if kind == Kind.BOX:
        cy, sy = np.cos(prims.yaw), np.sin(prims.yaw)
        rows = [
            cy * rel[:, 0] + sy * rel[:, 1],
            cy * rel[:, 1] - sy * rel[:, 0],
            rel[:, 2],
            cy,
            sy,
            prims.size[:, 0],
            prims.size[:, 1],
            prims.size[:, 2],
        ]
    elif kind == Kind.CYLINDER:
        rows = [rel[:, 0], rel[:, 1], rel[:, 2], prims.size[:, 0], prims.size[:, 2]]
    else:
        inv = 1.0 / prims.size
        rows = [
            rel[:, 0] * inv[:, 0],
            rel[:, 1] * inv[:, 1],
            rel[:, 2] * inv[:, 2],
            inv[:, 0],
            inv[:, 1],
            inv[:, 2],
        ]
    return np.ascontiguousarray(np.stack(rows), dtype=np.float32)


def _intersect(kind: Kind, params: F32, dirs: tuple[F32, F32, F32], r: I64, m: I64) -> F32:
    """Entry distance of each (ray r[i], primitive m[i]) pair; inf where missed. float32 throughout."""
    p = np.take(params, m, axis=1)
    dx, dy, dz = (np.take(c, r) for c in dirs)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if kind == Kind.BOX:
            c, s = p[3], p[4]
            local_dirs = (c * dx + s * dy, c * dy - s * dx, dz)
            tnear = np.full(len(m), -np.inf, np.float32)
            tfar = np.full(len(m), np.inf, np.float32)
            for ax in range(3):
                inv = np.float32(1.0) / local_dirs[ax]
                lo, half = p[ax], p[5 + ax]
                ta = (-half - lo) * inv
                tb = (half - lo) * inv
                np.maximum(tnear, np.minimum(ta, tb), out=tnear)
                np.minimum(tfar, np.maximum(ta, tb), out=tfar)
            ok = (tfar >= tnear) & (tnear > _EPS)
            return np.where(ok, tnear, np.float32(np.inf))
        if kind == Kind.CYLINDER:
            rx, ry, rz, rad, h = p
            a = dx * dx + dy * dy
            b = rx * dx + ry * dy  # half of the usual b
            cc = rx * rx + ry * ry - rad * rad
            disc = b * b - a * cc
            ts = (-b - np.sqrt(disc)) / a
            zs = rz + ts * dz
            side = np.where((disc >= 0) & (ts > _EPS) & (zs >= 0) & (zs <= h), ts, np.float32(np.inf))
            tc = (h - rz) / dz
            px = rx + tc * dx
            py = ry + tc * dy
            cap = np.where((dz < 0) & (tc > _EPS) & (px * px + py * py <= rad * rad), tc, np.float32(np.inf))
            return np.minimum(side, cap)
        rx, ry, rz = p[0], p[1], p[2]
        ex, ey, ez = dx * p[3], dy * p[4], dz * p[5]
        a = ex * ex + ey * ey + ez * ez
        b = rx * ex + ry * ey + rz * ez
        cc = rx * rx + ry * ry + rz * rz - 1.0
        disc = b * b - a * cc
        t = (-b - np.sqrt(disc)) / a
        return np.where((disc >= 0) & (t > _EPS), t, np.float32(np.inf))


def cast(
    origin: npt.ArrayLike,
    dirs: F64,
    tiling: Tiling,
    scene: Sequence[Primitives],
    max_range: float,
) -> Hits:
    """Nearest hit within ``max_range`` of each unit ray ``dirs`` (N, 3) from ``origin`` (3,)."""
    o = np.asarray(origin, dtype=np.float64)
    n = dirs.shape[0]
    sd = dirs[tiling.order]
    with np.errstate(divide="ignore", invalid="ignore"):
        tg = np.where(sd[:, 2] < -1e-9, -o[2] / sd[:, 2], np.inf)
    best = np.where(tg <= max_range, tg, np.inf)
    kind = np.where(np.isfinite(best), Kind.GROUND, -1).astype(np.int8)
    index = np.zeros(n, np.int64)
    sums = np.add.reduceat(sd, tiling.start, axis=0)
    axis = sums / np.linalg.norm(sums, axis=1, keepdims=True)
    tile_of_ray = np.repeat(np.arange(len(tiling.start)), tiling.count)
    cos_half = np.minimum.reduceat((sd * axis[tile_of_ray]).sum(1), tiling.start) - 1e-6
    dcols = tuple(np.ascontiguousarray(sd[:, a], dtype=np.float32) for a in range(3))
    for prims, ids in _near_to_far(o, scene, max_range):
        keep = prims.select(ids)
        params = _params(prims.kind, o, keep)
        tile_far = np.maximum.reduceat(best, tiling.start)
        rays, m = _pairs(o, axis, cos_half, tile_far, tiling, keep)
        for s in range(0, len(rays), _PAIR_CHUNK):
            r_c, m_c = rays[s : s + _PAIR_CHUNK], m[s : s + _PAIR_CHUNK]
            t32 = _intersect(prims.kind, params, dcols, r_c, m_c)  # type: ignore[arg-type]
            got = np.flatnonzero(t32 <= max_range)
            r_c, m_c, t = r_c[got], m_c[got], t32[got].astype(np.float64)
            ok = t < best[r_c]
            r_c, m_c, t = r_c[ok], m_c[ok], t[ok]
            np.minimum.at(best, r_c, t)
            win = t == best[r_c]
            kind[r_c[win]] = prims.kind
            index[r_c[win]] = ids[m_c[win]]
    out_t = np.empty(n)
    out_k = np.empty(n, np.int8)
    out_i = np.empty(n, np.int64)
    out_t[tiling.order] = best
    out_k[tiling.order] = kind
    out_i[tiling.order] = index
    return Hits(out_t, out_k, out_i)


def _near_to_far(origin: F64, scene: Sequence[Primitives], max_range: float) -> list[tuple[Primitives, I64]]:
    """Primitives within range, in batches of increasing distance (near hits then hide far objects)."""
    batches: list[tuple[float, int, Primitives, I64]] = []
    for k, prims in enumerate(scene):
        c, r = prims.bounding_spheres()
        near = np.linalg.norm(c - origin, axis=1) - r
        ids = np.flatnonzero(near < max_range)
        ids = ids[np.argsort(near[ids], kind="stable")]
        for lo, hi in _BANDS:
            sel = ids[(near[ids] >= lo) & (near[ids] < hi)]
            if sel.size:
                batches.append((lo, k, prims, sel))
    batches.sort(key=lambda b: (b[0], b[1]))
    return [(prims, sel) for _, _, prims, sel in batches]


_BANDS = ((-np.inf, 8.0), (8.0, 20.0), (20.0, 45.0), (45.0, np.inf))


def surface(origin: npt.ArrayLike, dirs: F64, hits: Hits, scene: Sequence[Primitives]) -> Surface:
    """Points, normals and material data at every hit (rays without a hit are left out)."""
    o = np.asarray(origin, dtype=np.float64)
    rays = np.flatnonzero(hits.kind >= 0)
    k = hits.kind[rays]
    idx = hits.index[rays]
    p = o + hits.t[rays, None] * dirs[rays]
    n_hit = len(rays)
    normal = np.zeros((n_hit, 3))
    normal[:, 2] = 1.0
    local = p.copy()
    local_n = normal.copy()
    material = np.zeros(n_hit, np.int16)
    instance = np.zeros(n_hit, np.int32)
    color = np.zeros((n_hit, 3), np.float32)
    size = np.zeros((n_hit, 3))
    by_kind = {prims.kind: prims for prims in scene}
    for code, prims in by_kind.items():
        sel = np.flatnonzero(k == code)
        if sel.size == 0:
            continue
        m = idx[sel]
        material[sel] = prims.material[m]
        instance[sel] = prims.instance[m]
        color[sel] = prims.color[m]
        size[sel] = prims.size[m]
        rel = p[sel] - prims.center[m]
        if code == Kind.BOX:
            c, s = np.cos(prims.yaw[m]), np.sin(prims.yaw[m])
            lp = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1], rel[:, 2]], 1)
            ax = np.argmax(np.abs(lp) / prims.size[m], axis=1)
            ln = np.zeros_like(lp)
            ln[np.arange(sel.size), ax] = np.sign(lp[np.arange(sel.size), ax])
            wn = np.stack([c * ln[:, 0] - s * ln[:, 1], s * ln[:, 0] + c * ln[:, 1], ln[:, 2]], 1)
        elif code == Kind.CYLINDER:
            lp = rel
            top = lp[:, 2] >= prims.size[m, 2] - 1e-6
            ln = np.zeros_like(lp)
            radial = lp[:, :2] / np.maximum(np.linalg.norm(lp[:, :2], axis=1, keepdims=True), 1e-9)
            ln[:, :2] = np.where(top[:, None], 0.0, radial)
            ln[:, 2] = top
            wn = ln
        else:
            lp = rel
            g = rel / prims.size[m] ** 2
            ln = g / np.linalg.norm(g, axis=1, keepdims=True)
            wn = ln
        local[sel] = lp
        local_n[sel] = ln
        normal[sel] = wn
    return Surface(rays, p, normal, local, local_n, k, material, instance, color, size)
