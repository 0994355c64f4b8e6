"""Pictures that let a person check the data path: pairs and superpixels drawn on the images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import torch


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
        d = np.clip(np.asarray(distance, np.float64) / 50.0, 0.0, 1.0)
        colours = cv2.applyColorMap((d * 255).astype(np.uint8)[:, None], cv2.COLORMAP_TURBO)[:, 0, ::-1]
        out[pixels[:, 0], pixels[:, 1]] = colours
    return out


def save_pairs_preview(batch: dict[str, Any], path: Path, max_images: int = 6) -> Path:
    """Grid of the first sample's images with its pairs and superpixels; returns the PNG path."""
    images: torch.Tensor = batch["images"]
    first = torch.nonzero(batch["image_batch"] == 0).flatten()[:max_images].tolist()
    pairing = batch["pairing_images"].numpy()
    points = batch["points"].numpy()[batch["pairing_points"].numpy()]
    distance = np.linalg.norm(points, axis=1)
    sp = batch.get("superpixels")
    tiles = []
    for i in first:
        sel = pairing[:, 0] == i
        rgb = images[i].permute(1, 2, 0).numpy()
        tiles.append(draw_pairs(rgb, pairing[sel, 1:], distance[sel], None if sp is None else sp[i].numpy()))
    cols = min(3, len(tiles))
    rows = -(-len(tiles) // cols)
    h, w = tiles[0].shape[:2]
    grid = np.zeros((rows * h, cols * w, 3), np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = tile
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), grid[:, :, ::-1]):
        raise OSError(f"could not write {path}")
    return path
