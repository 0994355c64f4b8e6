"""Paired point-cloud / image augmentations of SLidR that keep point-pixel pairs consistent.

Order and semantics follow the SLidR code (methods.md §1.3 and A.1): z-rotation, x/y flips, one dropped
cuboid, then per image a random resized crop and a horizontal flip. Every step that drops points or
pixels re-indexes the pairs at once, so after any chain each pair still names the same physical point
and (up to resampling) the same image content.

Decisions that differ from, or pin down, the reference:

- **Cuboid drop**: a camera "fails" when the drop leaves it fewer than ``min(min_pairs, pairs it had)``
  pairs (a camera already below ``min_pairs`` may not lose any). The reference draws once and skips the
  drop on failure; ``max_draws`` > 1 redraws instead, as the paper describes.
- **Crop pixel mapping** is pixel-centre aligned: a pair at (row, col) of the crop goes to
  ``floor((row + 0.5) * H_out / h)``, consistent with cv2's bilinear resize of the image and with the
  centre-aligned nearest resize of the superpixel map (``src = floor((dst + 0.5) * h / H_out)``). So a pair
  keeps its superpixel id exactly unless its pixel lies within about one source pixel per output pixel of
  a superpixel border.
- **Crop acceptance**: kept all pairs, or more than ``min_pairs``, or more than ``min_fraction`` of them.
  The reference loops forever on a sample that can never pass (SLidR issue #3); here at most
  ``1 + max_redraws`` crops are drawn, then the whole image is resized without cropping (the validation
  transform), which keeps every pair.
- Flipped images are returned contiguous (``torch.from_numpy`` rejects negative strides).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import cv2
import numpy as np
import numpy.typing as npt

from lidar_ssl_core.config import AugmentConfig
from lidar_ssl_core.errors import DatasetError
from lidar_ssl_core.types import IntArray, PointPixelPairs, UInt8Array

logger = logging.getLogger(__name__)

BoolArray = npt.NDArray[np.bool_]
# per-image step: (image, superpixels, pairs of that camera) -> (image, superpixels, keep, kept pixels)
_ImageStep = Callable[
    [UInt8Array, "IntArray | None", PointPixelPairs],
    "tuple[UInt8Array, IntArray | None, BoolArray, npt.NDArray[np.int64]]",
]


@dataclass(frozen=True)
class PairedSample:
    """One training sample: a point cloud, its camera images and the point-pixel pairs between them."""

    xyz: npt.NDArray[np.float32]  # (N, 3)
    images: tuple[UInt8Array, ...]  # per camera (H, W, 3)
    pairs: PointPixelPairs  # point_index into xyz, camera_index into images, pixel (row, col)
    superpixels: tuple[IntArray, ...] | None = None  # per camera (H, W) label maps
    features: npt.NDArray[Any] | None = None  # (N,) or (N, C), follows the points
    labels: npt.NDArray[np.integer] | None = None  # (N,), follows the points

    @property
    def num_points(self) -> int:
        return int(self.xyz.shape[0])

    @property
    def num_cameras(self) -> int:
        return len(self.images)

    def validate(self) -> None:
        """Raise DatasetError naming the first inconsistency (shapes, pair indices, pixels)."""
        n = self.num_points
        if self.xyz.ndim != 2 or self.xyz.shape[1] != 3:
            raise DatasetError(f"sample xyz must be (N, 3), got {self.xyz.shape}")
        for name, arr in (("features", self.features), ("labels", self.labels)):
            if arr is not None and arr.shape[0] != n:
                raise DatasetError(f"sample {name} has {arr.shape[0]} rows for {n} points")
        for c, image in enumerate(self.images):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise DatasetError(f"image {c} must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        if self.superpixels is not None:
            if len(self.superpixels) != len(self.images):
                raise DatasetError(f"{len(self.superpixels)} superpixel maps for {len(self.images)} images")
            for c, (image, sp) in enumerate(zip(self.images, self.superpixels, strict=True)):
                if sp.shape != image.shape[:2]:
                    raise DatasetError(
                        f"superpixel map {c} has shape {sp.shape}, its image {image.shape[:2]}"
                    )
        pairs = self.pairs
        m = len(pairs)
        if pairs.camera_index.shape != (m,) or pairs.pixel.shape != (m, 2):
            raise DatasetError(
                f"pairs have point_index {pairs.point_index.shape}, camera_index "
                f"{pairs.camera_index.shape}, pixel {pairs.pixel.shape}; expected (M,), (M,), (M, 2)"
            )
        if m == 0:
            return
        if pairs.point_index.min() < 0 or pairs.point_index.max() >= n:
            raise DatasetError(f"pair point_index outside [0, {n})")
        if pairs.camera_index.min() < 0 or pairs.camera_index.max() >= self.num_cameras:
            raise DatasetError(f"pair camera_index outside [0, {self.num_cameras})")
        sizes = np.array([im.shape[:2] for im in self.images], dtype=np.int64)
        limits = np.take(sizes, pairs.camera_index, axis=0)
        if (pairs.pixel < 0).any() or (pairs.pixel >= limits).any():
            raise DatasetError("a pair pixel (row, col) lies outside its image")


class CropResult(NamedTuple):
    """One image after a crop-resize; ``keep`` is over the input pairs, ``pairs`` are the kept ones."""

    image: UInt8Array
    superpixels: IntArray | None
    pairs: PointPixelPairs
    keep: BoolArray
    box: tuple[int, int, int, int]  # (top, left, height, width) of the crop in the input image


class FlipResult(NamedTuple):
    image: UInt8Array
    superpixels: IntArray | None
    pairs: PointPixelPairs
    flipped: bool


class AugmentResult(NamedTuple):
    sample: PairedSample
    point_keep: BoolArray  # (N_in,) which input points survive, in order


# --------------------------------------------------------------------------------------- points


def rotate_z(xyz: npt.NDArray[np.floating], rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Rotate about z by an angle drawn from U[0, 2*pi) (one ``rng.uniform`` draw)."""
    angle = rng.uniform(0.0, 2.0 * math.pi)
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    return np.asarray(xyz, dtype=np.float32) @ rot.T


def flip_xy(xyz: npt.NDArray[np.floating], rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Negate x and, independently, y, each with probability 0.5 (one ``rng.random(2)`` draw)."""
    flips = rng.random(2) < 0.5
    sign = np.array([-1.0 if flips[0] else 1.0, -1.0 if flips[1] else 1.0, 1.0], dtype=np.float32)
    return np.asarray(xyz, dtype=np.float32) * sign


def drop_cuboid(
    xyz: npt.NDArray[np.floating],
    pairs: PointPixelPairs,
    rng: np.random.Generator,
    *,
    max_fraction: float = 0.2,
    min_pairs: int = 1024,
    num_cameras: int | None = None,
    max_draws: int = 1,
) -> BoolArray:
    """Keep-mask (N,) of the points outside one random axis-aligned cuboid.

    The centre is a random point; the half-extent is ``range_xyz * U[0, max_fraction) / 2`` per axis and
    points strictly inside are dropped. A draw is rejected when some camera would keep fewer than
    ``min(min_pairs, its current pairs)`` pairs; after ``max_draws`` rejected draws nothing is dropped
    (``max_draws=1`` is the SLidR code).
    """
    pts = np.asarray(xyz)
    n = pts.shape[0]
    keep_all = np.ones(n, dtype=bool)
    if n == 0 or max_fraction <= 0:
        return keep_all
    cams = 0 if len(pairs) == 0 else int(pairs.camera_index.max()) + 1
    cams = max(cams, num_cameras or 0)
    before = np.bincount(pairs.camera_index, minlength=cams)
    floor = np.minimum(before, min_pairs)
    columns = [np.ascontiguousarray(pts[:, axis]) for axis in range(3)]  # fast per-axis reductions
    span = [float(col.max() - col.min()) for col in columns]
    for _ in range(max(max_draws, 1)):
        fraction = rng.random() * max_fraction
        centre = pts[rng.integers(n)]
        inside = np.ones(n, dtype=bool)
        for axis, col in enumerate(columns):
            half = span[axis] * fraction / 2.0
            inside &= (col > centre[axis] - half) & (col < centre[axis] + half)
        keep = ~inside
        after = np.bincount(pairs.camera_index[keep[pairs.point_index]], minlength=cams)
        if (after >= floor).all():
            return keep
    logger.debug("cuboid drop skipped: every draw left a camera with too few pairs")
    return keep_all


def remap_pairs(pairs: PointPixelPairs, point_keep: BoolArray) -> PointPixelPairs:
    """Pairs of the kept points, with point indices compacted to the kept points' new positions."""
    new_index = np.cumsum(point_keep, dtype=np.int64) - 1
    survives = point_keep[pairs.point_index]
    kept = _select_pairs(pairs, survives)
    return PointPixelPairs(new_index[kept.point_index], kept.camera_index, kept.pixel)


def select_points(sample: PairedSample, point_keep: BoolArray) -> PairedSample:
    """The sample restricted to ``point_keep`` points (xyz, features, labels and pairs follow)."""
    if point_keep.shape != (sample.num_points,):
        raise DatasetError(f"point mask has shape {point_keep.shape}, sample has {sample.num_points} points")
    if point_keep.all():
        return sample
    return replace(
        sample,
        xyz=np.compress(point_keep, sample.xyz, axis=0),
        features=None if sample.features is None else np.compress(point_keep, sample.features, axis=0),
        labels=None if sample.labels is None else sample.labels[point_keep],
        pairs=remap_pairs(sample.pairs, point_keep),
    )


# --------------------------------------------------------------------------------------- images


def crop_params(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.3, 1.0),
    ratio: tuple[float, float] = (14 / 9, 17 / 9),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) as torchvision ``RandomResizedCrop.get_params``: 10 tries, then a centre crop.

    Area fraction ~ U(scale), aspect w/h log-uniform in ratio, sizes rounded half-to-even like Python.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = round(w / min(ratio))
    elif in_ratio > max(ratio):
        h = height
        w = round(h * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def apply_crop(
    image: UInt8Array,
    superpixels: IntArray | None,
    pairs: PointPixelPairs,
    box: tuple[int, int, int, int],
    out_size: tuple[int, int],
) -> CropResult:
    """Crop ``box`` = (top, left, h, w) and resize to ``out_size`` = (W, H); pairs outside are dropped.

    Image: cv2 bilinear. Superpixels: centre-aligned nearest (exact ids, any integer dtype). Pixels of
    kept pairs are mapped with the same centre-aligned rule.
    """
    top, left, h, w = box
    out_w, out_h = out_size
    rows, cols = pairs.pixel[:, 0], pairs.pixel[:, 1]
    keep = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    kept = _select_pairs(pairs, keep)
    new_pixel = np.empty_like(kept.pixel)
    new_pixel[:, 0] = _map_index(kept.pixel[:, 0] - top, h, out_h)
    new_pixel[:, 1] = _map_index(kept.pixel[:, 1] - left, w, out_w)
    crop = np.ascontiguousarray(image[top : top + h, left : left + w])
    out_image = crop
    if (h, w) != (out_h, out_w):
        out_image = np.asarray(
            cv2.resize(crop, (out_w, out_h), interpolation=cv2.INTER_LINEAR), dtype=np.uint8
        )
    out_sp = None
    if superpixels is not None:
        src_rows = top + _nearest_source(out_h, h)
        src_cols = left + _nearest_source(out_w, w)
        out_sp = superpixels[src_rows][:, src_cols]
    return CropResult(
        out_image, out_sp, PointPixelPairs(kept.point_index, kept.camera_index, new_pixel), keep, box
    )


def random_resized_crop(
    image: UInt8Array,
    superpixels: IntArray | None,
    pairs: PointPixelPairs,
    rng: np.random.Generator,
    *,
    out_size: tuple[int, int] = (416, 224),
    scale: tuple[float, float] = (0.3, 1.0),
    ratio: tuple[float, float] = (14 / 9, 17 / 9),
    min_pairs: int = 1024,
    min_fraction: float = 0.75,
    max_redraws: int = 10,
) -> CropResult:
    """SLidR ``ResizedCrop`` for one image and its pairs (pixels in this image), with bounded redraws.

    A crop is accepted when it keeps every pair, more than ``min_pairs`` pairs or more than
    ``min_fraction`` of them; after ``1 + max_redraws`` rejected crops the whole image is resized.
    """
    height, width = image.shape[:2]
    total = len(pairs)
    rows, cols = pairs.pixel[:, 0], pairs.pixel[:, 1]
    for _ in range(1 + max(max_redraws, 0)):
        top, left, h, w = crop_params(height, width, rng, scale, ratio)
        kept = int(np.count_nonzero((rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)))
        if kept == total or kept > min_pairs or kept > min_fraction * total:
            return apply_crop(image, superpixels, pairs, (top, left, h, w), out_size)
    logger.debug(
        "no crop kept enough of %d pairs in %d draws; resizing the whole image", total, max_redraws + 1
    )
    return resize_no_crop(image, superpixels, pairs, out_size=out_size)


def resize_no_crop(
    image: UInt8Array,
    superpixels: IntArray | None,
    pairs: PointPixelPairs,
    *,
    out_size: tuple[int, int] = (416, 224),
) -> CropResult:
    """Validation transform: resize the whole image to ``out_size`` (W, H); every pair is kept."""
    height, width = image.shape[:2]
    return apply_crop(image, superpixels, pairs, (0, 0, height, width), out_size)


def hflip(
    image: UInt8Array,
    superpixels: IntArray | None,
    pairs: PointPixelPairs,
    rng: np.random.Generator,
    p: float = 0.5,
) -> FlipResult:
    """Mirror image, superpixels and pair columns (col -> W - 1 - col) with probability ``p``."""
    if not rng.random() < p:
        return FlipResult(image, superpixels, pairs, False)
    width = image.shape[1]
    pixel = pairs.pixel.copy()
    pixel[:, 1] = width - 1 - pixel[:, 1]
    return FlipResult(
        np.ascontiguousarray(image[:, ::-1]),
        None if superpixels is None else np.ascontiguousarray(superpixels[:, ::-1]),
        PointPixelPairs(pairs.point_index, pairs.camera_index, pixel),
        True,
    )


# --------------------------------------------------------------------------------------- composed


def augment_sample(sample: PairedSample, config: AugmentConfig, rng: np.random.Generator) -> AugmentResult:
    """Training augmentation: rotation, x/y flips, cuboid drop, then per image crop-resize and flip.

    With ``config.enabled`` False this is ``eval_transform`` (images resized, nothing random). Pairs keep
    their original order minus the dropped ones.
    """
    sample.validate()
    if not config.enabled:
        return AugmentResult(eval_transform(sample, config), np.ones(sample.num_points, dtype=bool))
    xyz = sample.xyz
    if config.rotate_z:
        xyz = rotate_z(xyz, rng)
    if config.flip_xy:
        xyz = flip_xy(xyz, rng)
    current = replace(sample, xyz=np.asarray(xyz, dtype=np.float32))
    point_keep = np.ones(sample.num_points, dtype=bool)
    if config.drop_cuboid:
        point_keep = drop_cuboid(
            current.xyz,
            current.pairs,
            rng,
            max_fraction=config.cuboid_max_fraction,
            min_pairs=config.min_pairs,
            num_cameras=current.num_cameras,
        )
        current = select_points(current, point_keep)

    def per_image(
        image: UInt8Array, sp: IntArray | None, pairs: PointPixelPairs
    ) -> tuple[UInt8Array, IntArray | None, BoolArray, npt.NDArray[np.int64]]:
        crop = random_resized_crop(
            image,
            sp,
            pairs,
            rng,
            out_size=config.crop_size,
            scale=config.crop_scale,
            ratio=config.crop_ratio,
            min_pairs=config.min_pairs,
            min_fraction=config.min_pair_fraction,
            max_redraws=config.max_redraws,
        )
        flip = hflip(crop.image, crop.superpixels, crop.pairs, rng, config.hflip_prob)
        return flip.image, flip.superpixels, crop.keep, flip.pairs.pixel

    return AugmentResult(_map_images(current, per_image), point_keep)


def eval_transform(sample: PairedSample, config: AugmentConfig) -> PairedSample:
    """Validation transform: every image resized (no crop) to ``config.crop_size``; points untouched."""

    def per_image(
        image: UInt8Array, sp: IntArray | None, pairs: PointPixelPairs
    ) -> tuple[UInt8Array, IntArray | None, BoolArray, npt.NDArray[np.int64]]:
        res = resize_no_crop(image, sp, pairs, out_size=config.crop_size)
        return res.image, res.superpixels, res.keep, res.pairs.pixel

    return _map_images(sample, per_image)


def _map_images(sample: PairedSample, per_image: _ImageStep) -> PairedSample:
    """Apply ``per_image(image, sp, pairs_of_camera) -> (image, sp, keep, kept_pixels)`` camera by camera
    and reassemble the pairs in their original order."""
    pairs = sample.pairs
    cams = pairs.camera_index
    order = None
    point_index, pixel = pairs.point_index, pairs.pixel
    if len(pairs) and (cams[1:] < cams[:-1]).any():  # usual case (grouped by camera) needs no gather
        # uint16 keys make numpy's stable argsort a radix sort (camera indices are validated < C)
        sort_keys = cams.astype(np.uint16) if sample.num_cameras <= 2**16 else cams
        order = np.argsort(sort_keys, kind="stable")
        cams = cams[order]
        point_index = point_index[order]
        pixel = np.take(pixel, order, axis=0)
    bounds = np.searchsorted(cams, np.arange(sample.num_cameras + 1))
    pair_keep = np.zeros(len(pairs), dtype=bool)
    new_pixel = pixel.copy()
    images: list[UInt8Array] = []
    sps: list[IntArray] = []
    for c, image in enumerate(sample.images):
        part = slice(bounds[c], bounds[c + 1])
        sp = None if sample.superpixels is None else sample.superpixels[c]
        own = PointPixelPairs(point_index[part], cams[part], pixel[part])
        out_image, out_sp, keep, kept_pixel = per_image(image, sp, own)
        pair_keep[part] = keep
        new_pixel[part][keep] = kept_pixel
        images.append(out_image)
        if out_sp is not None:
            sps.append(out_sp)
    if order is not None:  # back to the input order
        pair_keep[order] = pair_keep.copy()
        new_pixel[order] = new_pixel.copy()
        cams = pairs.camera_index
        point_index = pairs.point_index
    return replace(
        sample,
        images=tuple(images),
        superpixels=None if sample.superpixels is None else tuple(sps),
        pairs=PointPixelPairs(
            point_index[pair_keep], cams[pair_keep], np.compress(pair_keep, new_pixel, axis=0)
        ),
    )


def _select_pairs(pairs: PointPixelPairs, mask: BoolArray) -> PointPixelPairs:
    """``pairs.select(mask)`` with ``np.compress`` for the (M, 2) pixels (several times faster)."""
    return PointPixelPairs(
        pairs.point_index[mask], pairs.camera_index[mask], np.compress(mask, pairs.pixel, axis=0)
    )


def _map_index(index: npt.NDArray[np.int64], size_in: int, size_out: int) -> npt.NDArray[np.int64]:
    """Centre-aligned index map from a length ``size_in`` axis to a length ``size_out`` axis."""
    mapped: npt.NDArray[np.int64] = np.floor((index + 0.5) * (size_out / size_in)).astype(np.int64)
    np.clip(mapped, 0, size_out - 1, out=mapped)
    return mapped


def _nearest_source(size_out: int, size_in: int) -> npt.NDArray[np.int64]:
    """Source index of each output index for a centre-aligned nearest resize (cv2 NEAREST_EXACT rule)."""
    src: npt.NDArray[np.int64] = np.floor((np.arange(size_out) + 0.5) * (size_in / size_out)).astype(np.int64)
    np.clip(src, 0, size_in - 1, out=src)
    return src
