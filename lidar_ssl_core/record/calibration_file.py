"""Static extrinsics from a YAML file, for vehicles (or test setups) without ``/tf_static``.

The file lists what ``/tf_static`` would carry, one transform ``parent -> child`` each (tf2 convention:
it maps points in ``child`` coordinates into ``parent`` coordinates)::

    transforms:
      - parent: base_link
        child: lidar_top
        translation: [0.94, 0.0, 1.84]        # metres
        rotation_xyzw: [0.0, 0.0, 0.0, 1.0]   # unit quaternion

The recorder writes these as ``/tf_static`` into every shard, so its bags stay in the project profile.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lidar_ssl_core.errors import CalibrationError
from lidar_ssl_core.geometry.transforms import matrix_to_quat_xyzw, transform_from_quat
from lidar_ssl_core.types import StampedTransform


def load_static_transforms(path: Path | str) -> list[StampedTransform]:
    """Transforms of a calibration file; CalibrationError naming the file and entry when malformed."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise CalibrationError(f"calibration file {path} cannot be read: {err}") from err
    entries = doc.get("transforms") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise CalibrationError(f"calibration file {path} has no 'transforms' list")
    out = []
    for i, entry in enumerate(entries):
        try:
            parent, child = str(entry["parent"]).lstrip("/"), str(entry["child"]).lstrip("/")
            t = np.asarray(entry["translation"], dtype=np.float64)
            q = np.asarray(entry["rotation_xyzw"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as err:
            raise CalibrationError(
                f"calibration file {path}: transforms[{i}] needs parent, child, translation, rotation_xyzw "
                f"({err})"
            ) from None
        norm = float(np.linalg.norm(q)) if q.shape == (4,) else 0.0
        if t.shape != (3,) or not np.all(np.isfinite(t)) or abs(norm - 1.0) > 1e-2 or not parent or not child:
            raise CalibrationError(
                f"calibration file {path}: transforms[{i}] ({parent} -> {child}) needs a finite 3-vector "
                f"translation and a unit quaternion, got {t.tolist()} and {q.tolist()}"
            )
        out.append(StampedTransform(parent, child, 0, transform_from_quat(t, q / norm)))
    return out


def dump_static_transforms(transforms: Iterable[StampedTransform]) -> str:
    """YAML text of a calibration file holding ``transforms`` (inverse of :func:`load_static_transforms`)."""
    entries: list[dict[str, Any]] = []
    for tr in transforms:
        m = np.asarray(tr.matrix, dtype=np.float64)
        entries.append(
            {
                "parent": tr.parent,
                "child": tr.child,
                "translation": [float(v) for v in m[:3, 3]],
                "rotation_xyzw": [float(v) for v in matrix_to_quat_xyzw(m[:3, :3])],
            }
        )
    return yaml.safe_dump({"transforms": entries}, sort_keys=False)
