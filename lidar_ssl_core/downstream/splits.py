"""Label-fraction subsets (1 %, 5 %, ... of the training frames) chosen by whole scenes.

Neighbouring LiDAR sweeps are near duplicates, so "1 % of the labels" means 1 % of the frames taken as
whole scenes (nuScenes scenes, SemanticKITTI sequences, bags): a handful of places seen fully, as in
SLidR's nuScenes protocol, not 1 % of random sweeps spread over every place.

``select_scenes`` ranks scenes by a keyed hash of (seed, scene id) and takes the shortest prefix of
that ranking whose frames reach the fraction. Hence, for one seed:

- deterministic and independent of the order of the input list (the rank depends on ids only);
- nested: the prefix for 1 % is a prefix of the one for 5 %, so every smaller subset is contained in
  every larger one (learning curves over fractions then differ only by added data);
- at least one scene, and it overshoots the target by less than one scene.

A single long bag has no scenes: ``frame_blocks`` cuts it into contiguous blocks of frames used as
pseudo-scenes, and ``select_frames`` applies the same rule to them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from lidar_ssl_core.errors import ConfigError

#: The label fractions of the SLidR / ST-SLidR annotation-efficiency tables.
STANDARD_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.10, 0.25, 1.0)


def _rank_key(seed: int, scene_id: str) -> bytes:
    return hashlib.blake2b(f"{seed}\x00{scene_id}".encode(), digest_size=16).digest()


def _check_fraction(fraction: float) -> None:
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"label fraction must be in (0, 1], got {fraction} (1 % is 0.01)")


def select_scenes(
    scene_ids: Sequence[str],
    fraction: float,
    seed: int,
    frames_per_scene: Mapping[str, int] | None = None,
) -> list[str]:
    """Scenes holding at least ``fraction`` of the frames (all scenes weigh 1 when no counts are given).

    Returns the chosen ids sorted by name. ``fraction == 1`` returns every scene.
    """
    _check_fraction(fraction)
    ids = [str(s) for s in scene_ids]
    if not ids:
        raise ConfigError("no scene to choose a label fraction from")
    if len(set(ids)) != len(ids):
        dup = sorted({s for s in ids if ids.count(s) > 1})
        raise ConfigError(f"scene ids must be unique; repeated: {dup[:5]}")
    if frames_per_scene is None:
        counts = dict.fromkeys(ids, 1)
    else:
        if missing := [s for s in ids if s not in frames_per_scene]:
            raise ConfigError(f"frames_per_scene has no count for scenes {missing[:5]}")
        counts = {s: int(frames_per_scene[s]) for s in ids}
        if negative := [s for s, n in counts.items() if n < 0]:
            raise ConfigError(f"frames_per_scene has negative counts for {negative[:5]}")
    if fraction >= 1.0:
        return sorted(ids)
    ranked = sorted(ids, key=lambda s: (_rank_key(seed, s), s))
    target = fraction * sum(counts.values())
    chosen: list[str] = []
    total = 0
    for s in ranked:
        chosen.append(s)
        total += counts[s]
        if total >= target - 1e-9 * max(target, 1.0):
            break
    return sorted(chosen)


def every_nth_scene(scene_ids: Sequence[str], step: int, offset: int = 0) -> list[str]:
    """Every ``step``-th scene of the list *in the given order* (SLidR's ``dataset_skip_step``).

    SLidR's nuScenes 1 % is ``every_nth_scene(official_train_scenes, 100)``: 7 of 700 scenes.
    """
    if step < 1 or not 0 <= offset < step:
        raise ConfigError(f"need step >= 1 and 0 <= offset < step, got step={step} offset={offset}")
    return [str(s) for s in list(scene_ids)[offset::step]]


def frame_blocks(n_frames: int, block_frames: int) -> npt.NDArray[np.int64]:
    """Pseudo-scene id of each frame: contiguous blocks of ``block_frames`` (the last may be shorter)."""
    if n_frames < 0 or block_frames < 1:
        raise ConfigError(f"need n_frames >= 0 and block_frames >= 1, got {n_frames}, {block_frames}")
    return np.arange(n_frames, dtype=np.int64) // block_frames


def select_frames(n_frames: int, fraction: float, seed: int, block_frames: int) -> npt.NDArray[np.int64]:
    """Sorted frame indices of whole blocks reaching ``fraction`` of ``n_frames`` (one bag, no scenes).

    Choose ``block_frames`` about one scene long (nuScenes: 20 s, ~40 keyframes or ~400 sweeps at
    20 Hz) so that a small fraction is a few places seen fully.
    """
    _check_fraction(fraction)
    if n_frames < 1:
        raise ConfigError("no frame to choose a label fraction from")
    block = frame_blocks(n_frames, block_frames)
    n_blocks = int(block[-1]) + 1
    names = [f"block-{b:06d}" for b in range(n_blocks)]
    sizes = np.bincount(block, minlength=n_blocks)
    chosen = select_scenes(names, fraction, seed, {n: int(k) for n, k in zip(names, sizes, strict=True)})
    keep = np.zeros(n_blocks, bool)
    keep[[int(n.split("-")[1]) for n in chosen]] = True
    return np.flatnonzero(keep[block]).astype(np.int64)


__all__ = ["STANDARD_FRACTIONS", "every_nth_scene", "frame_blocks", "select_frames", "select_scenes"]
