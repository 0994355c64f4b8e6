"""Noisy class masks of a synthetic drive: stand-ins for a vision foundation model's weak labels (OLIVINE).

The synthetic renderer knows every pixel's class. A VFM prompted with the class names does not: its masks
are imprecise at object edges, confuse similar classes, miss objects and label nothing where no prompt
fits. :func:`noisy_mask` reproduces those failure modes from the exact map, with this noise model (all
draws from ``np.random.default_rng([seed, stamp_ns, camera index])``, so a mask is reproducible):

1. **Unprompted pixels**: class 0 (sky / nothing) becomes 255, "no label".
2. **Missed regions**: each connected region of one class (8-connectivity) becomes 255 with probability
   ``miss_prob``.
3. **Confused regions**: each remaining region takes another class with probability ``confusion_prob``,
   from the partner table :data:`CONFUSIONS` (road/sidewalk/terrain/lane marking, vegetation/terrain,
   car/building, pedestrian/pole, ...).
4. **Imprecise edges**: every class region is grown by ``edge_px`` pixels (a square dilation) into its
   neighbours, in a random class order, so boundaries move by up to ``edge_px`` in either direction.
5. **Pixel noise**: each pixel takes a random class with probability ``pixel_prob``.

:func:`write_weak_masks` replays the drive of a synthetic config (the same world and frames as
:func:`~lidar_ssl_core.synth.bagfile.write_synthetic_bag` writes) and stores one PNG per camera image in the
layout :class:`~lidar_ssl_core.data.weak_labels.MaskFiles` reads. The committed sample bag is not changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from lidar_ssl_core.data.sample import NO_LABEL
from lidar_ssl_core.fileio import atomic_write_bytes
from lidar_ssl_core.synth import classes as C
from lidar_ssl_core.synth.config import SynthConfig
from lidar_ssl_core.synth.sensors import build_rig
from lidar_ssl_core.synth.simulate import simulate
from lidar_ssl_core.synth.world import generate_world

#: plausible confusions of a text-prompted segmenter (class -> classes it may be mistaken for)
CONFUSIONS: dict[int, tuple[int, ...]] = {
    C.ROAD: (C.SIDEWALK, C.TERRAIN),
    C.SIDEWALK: (C.ROAD, C.TERRAIN),
    C.BUILDING: (C.VEGETATION, C.CAR),
    C.VEGETATION: (C.TERRAIN, C.BUILDING),
    C.TERRAIN: (C.VEGETATION, C.SIDEWALK),
    C.CAR: (C.BUILDING,),
    C.PEDESTRIAN: (C.POLE,),
    C.POLE: (C.PEDESTRIAN, C.BUILDING),
    C.LANE_MARKING: (C.ROAD,),
}


@dataclass(frozen=True)
class MaskNoise:
    """Parameters of the noise model (module docstring); the defaults give roughly 80 % pixel accuracy."""

    miss_prob: float = 0.1
    confusion_prob: float = 0.1
    edge_px: int = 2
    pixel_prob: float = 0.01

    def __post_init__(self) -> None:
        for name in ("miss_prob", "confusion_prob", "pixel_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"MaskNoise.{name} must be in [0, 1], got {value}")
        if self.edge_px < 0:
            raise ValueError(f"MaskNoise.edge_px must be >= 0, got {self.edge_px}")


def noisy_mask(
    semantic: npt.NDArray[np.integer], noise: MaskNoise, rng: np.random.Generator
) -> npt.NDArray[np.uint8]:
    """A weak-label mask (uint8, 255 = no label) from an exact (H, W) class map."""
    exact = np.asarray(semantic, dtype=np.int64)
    out = exact.copy()
    out[exact == C.UNLABELLED] = NO_LABEL
    for cls in np.unique(exact):
        if cls == C.UNLABELLED:
            continue
        count, regions = cv2.connectedComponents((exact == cls).astype(np.uint8), connectivity=8)
        for region in range(1, count):
            draw = rng.random()
            if draw < noise.miss_prob:
                out[regions == region] = NO_LABEL
            elif draw < noise.miss_prob + noise.confusion_prob and int(cls) in CONFUSIONS:
                out[regions == region] = rng.choice(CONFUSIONS[int(cls)])
    if noise.edge_px > 0:
        kernel = np.ones((2 * noise.edge_px + 1,) * 2, np.uint8)
        present = [c for c in np.unique(out) if c != NO_LABEL]
        for cls in rng.permutation(present):
            grown = cv2.dilate((out == cls).astype(np.uint8), kernel).astype(bool)
            # grow into labelled neighbours only (a VFM's edge error, not new detections)
            out[grown & (out != NO_LABEL)] = cls
    if noise.pixel_prob > 0:
        flip = rng.random(out.shape) < noise.pixel_prob
        out[flip] = rng.integers(1, C.NUM_CLASSES, size=int(flip.sum()))
    return out.astype(np.uint8)


def write_weak_masks(
    config: SynthConfig, bag_name: str, out_dir: Path, noise: MaskNoise | None = None
) -> list[Path]:
    """Replay the drive of ``config`` and write ``<out_dir>/<bag_name>/<camera>/<stamp>.png`` per image.

    ``bag_name`` is the folder name of the bag written from the same config (the dataset's key).
    """
    noise = noise or MaskNoise()
    rig = build_rig(config)
    written: list[Path] = []
    for frame in simulate(generate_world(config), config, rig):
        for index, (name, cam) in enumerate(frame.cameras.items()):
            rng = np.random.default_rng([config.seed, cam.stamp_ns, index])
            mask = noisy_mask(cam.semantic, noise, rng)
            ok, png = cv2.imencode(".png", mask)
            if not ok:  # pragma: no cover - cv2 encodes any uint8 image
                raise ValueError(f"could not encode the mask of {name} at {cam.stamp_ns}")
            path = Path(out_dir) / bag_name / name / f"{cam.stamp_ns}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, png.tobytes())
            written.append(path)
    return written
