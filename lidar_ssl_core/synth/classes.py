"""Semantic class table of the synthetic world (ids, names, display colours).

Names follow nuScenes-lidarseg / SemanticKITTI where a counterpart exists, so a model pretrained on the
synthetic bag maps onto real label sets with a simple rename. Id 0 is "nothing to learn from": sky for
camera pixels, and never a LiDAR point label (rays that hit nothing give no return).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

UNLABELLED: Final = 0
ROAD: Final = 1
SIDEWALK: Final = 2
BUILDING: Final = 3
VEGETATION: Final = 4
TERRAIN: Final = 5
CAR: Final = 6
PEDESTRIAN: Final = 7
POLE: Final = 8
LANE_MARKING: Final = 9

#: id -> name (nuScenes-lidarseg / SemanticKITTI style).
CLASS_NAMES: Final[dict[int, str]] = {
    UNLABELLED: "unlabelled",
    ROAD: "road",
    SIDEWALK: "sidewalk",
    BUILDING: "building",
    VEGETATION: "vegetation",
    TERRAIN: "terrain",
    CAR: "car",
    PEDESTRIAN: "pedestrian",
    POLE: "pole",
    LANE_MARKING: "lane_marking",
}

NUM_CLASSES: Final = len(CLASS_NAMES)

#: Display palette (RGB uint8) indexed by class id, SemanticKITTI-like colours.
PALETTE: Final[npt.NDArray[np.uint8]] = np.array(
    [
        [0, 0, 0],  # unlabelled
        [255, 0, 255],  # road
        [75, 0, 75],  # sidewalk
        [0, 200, 255],  # building
        [0, 175, 0],  # vegetation
        [150, 240, 80],  # terrain
        [100, 150, 245],  # car
        [255, 30, 30],  # pedestrian
        [255, 240, 150],  # pole
        [255, 255, 255],  # lane_marking
    ],
    dtype=np.uint8,
)


def colorize(labels: npt.NDArray[np.integer]) -> npt.NDArray[np.uint8]:
    """RGB visualisation of a label map or label vector (unknown ids show black)."""
    ids = np.asarray(labels)
    safe = np.where((ids >= 0) & (ids < NUM_CLASSES), ids, 0)
    return PALETTE[safe]
