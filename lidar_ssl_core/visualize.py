"""Pictures that let a person check the data path: pairs and superpixels drawn on the images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import torch

#: paired points are coloured by their range from the LiDAR, clipped at this many metres (turbo colormap)
MAX_RANGE_M = 50.0
LEGEND_TICKS_M = (0, 10, 20, 30, 40, 50)


def range_colours(distance: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """RGB turbo colour of each range in metres (0 m blue ... MAX_RANGE_M and beyond red)."""
    d = np.clip(np.asarray(distance, np.float64) / MAX_RANGE_M, 0.0, 1.0)
    lut = cv2.applyColorMap((d * 255).astype(np.uint8)[:, None], cv2.COLORMAP_TURBO)
    return np.ascontiguousarray(lut[:, 0, ::-1], dtype=np.uint8)


def draw_pairs(
    image: npt.NDArray[np.uint8],
    pixels: npt.NDArray[np.integer],
    distance: npt.NDArray[np.floating],
    superpixels: npt.NDArray[np.integer] | None = None,
) -> npt.NDArray[np.uint8]:
    """RGB image with superpixel borders (white) and paired points coloured by range (turbo)."""
    out = image.copy()
    if superpixels is not None:
        border = np.zeros(superpixels.shape, bool)
        border[:, 1:] |= superpixels[:, 1:] != superpixels[:, :-1]
        border[1:, :] |= superpixels[1:, :] != superpixels[:-1, :]
        out[border] = (255, 255, 255)
    if len(pixels):
        out[pixels[:, 0], pixels[:, 1]] = range_colours(distance)
    return out


def _label(tile: npt.NDArray[np.uint8], text: str) -> None:
    """Write ``text`` in the top-left corner on a dark box (readable on any image)."""
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1
    (w, h), base = cv2.getTextSize(text, font, scale, thick)
    cv2.rectangle(tile, (0, 0), (w + 8, h + base + 6), (0, 0, 0), thickness=-1)
    cv2.putText(tile, text, (4, h + 4), font, scale, (255, 255, 255), thick, cv2.LINE_AA)


def range_legend(width: int, height: int = 44) -> npt.NDArray[np.uint8]:
    """A strip with the turbo colour bar of the point colours and its ticks in metres."""
    strip = np.full((height, width, 3), 255, np.uint8)
    x0, x1, bar_top, bar_bottom = 10, max(11, width - 150), 6, 20
    strip[bar_top:bar_bottom, x0:x1] = range_colours(np.linspace(0.0, MAX_RANGE_M, x1 - x0))[None]
    font = cv2.FONT_HERSHEY_SIMPLEX
    for tick in LEGEND_TICKS_M:
        x = x0 + round((x1 - x0 - 1) * tick / MAX_RANGE_M)
        strip[bar_bottom : bar_bottom + 4, x] = 0
        cv2.putText(strip, str(tick), (max(0, x - 6), height - 6), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(strip, "range from LiDAR (m)", (x1 + 8, 24), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def save_pairs_preview(batch: dict[str, Any], path: Path, max_images: int = 6) -> Path:
    """Grid of the first sample's images, each named after its camera, with its pairs (coloured by range)
    and superpixels, above a range legend; returns the PNG path."""
    images: torch.Tensor = batch["images"]
    first = torch.nonzero(batch["image_batch"] == 0).flatten()[:max_images].tolist()
    pairing = batch["pairing_images"].numpy()
    points = batch["points"].numpy()[batch["pairing_points"].numpy()]
    distance = np.linalg.norm(points, axis=1)
    sp = batch.get("superpixels")
    names: list[str] = batch.get("cameras") or [f"image {i}" for i in range(len(images))]
    tiles = []
    for i in first:
        sel = pairing[:, 0] == i
        rgb = images[i].permute(1, 2, 0).numpy()
        tile = draw_pairs(rgb, pairing[sel, 1:], distance[sel], None if sp is None else sp[i].numpy())
        _label(tile, f"{names[i]} ({int(sel.sum())} pairs)")
        tiles.append(tile)
    cols = min(3, len(tiles))
    rows = -(-len(tiles) // cols)
    h, w = tiles[0].shape[:2]
    grid = np.zeros((rows * h, cols * w, 3), np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = tile
    grid = np.vstack([grid, range_legend(grid.shape[1])])
    ok, png = cv2.imencode(".png", np.ascontiguousarray(grid[:, :, ::-1]))
    if not ok:
        raise OSError(f"could not encode the preview {path}")
    from lidar_ssl_core import fileio

    return fileio.atomic_write_bytes(path, png.tobytes())  # never a half-written PNG under its name
