"""One checkpoint format for pretraining: ``ckpt_last.pt``, written atomically, read with weights_only.

Everything stored is a tensor or a primitive container (dict/list/tuple/str/int/float/bool/None) so that
``torch.load(weights_only=True)`` reads it without unpickling code. The method's part (``method``) leaves out
frozen networks rebuilt from their weights file (or the seed, for a random teacher), e.g. the teacher
backbone; trainable heads and image branches are stored.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lidar_ssl_core.errors import LidarSslError
from lidar_ssl_core.fileio import atomic_write

log = logging.getLogger(__name__)

FORMAT = "lidar_ssl.pretrain/1"
LAST = "ckpt_last.pt"
REQUIRED = ("format", "backbone", "optimizer", "epoch", "step_in_epoch", "global_step")


class TrainingCheckpointError(LidarSslError):
    """A training checkpoint cannot be written, or read back (missing, truncated, corrupt, wrong format)."""


def capture_rng() -> dict[str, Any]:
    """Global torch (CPU and CUDA), numpy and python RNG states, as tensors and primitives."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]  # noqa: NPY002
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng`; a part that is missing is skipped with a warning."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    else:
        log.warning("checkpoint has no torch RNG state; continuing with the current one")
    if "numpy" in state:
        n = state["numpy"]
        keys = n["keys"].numpy().astype(np.uint32)
        np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))  # noqa: NPY002
    else:
        log.warning("checkpoint has no numpy RNG state; continuing with the current one")
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    else:
        log.warning("checkpoint has no python RNG state; continuing with the current one")
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            log.warning("checkpoint CUDA RNG states are for another device count; not restored")


def _to_lists(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_lists(v) for v in value]
    return value


def save_checkpoint(state: Mapping[str, Any], path: Path) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync, ``os.replace``.

    A reader (or a crash) never sees a half-written file under ``path``; the previous checkpoint survives a
    failed write, and the temporary a killed writer leaves is removed by the next write into the folder
    (``fileio.atomic_write``).
    """
    path = Path(path)
    try:
        atomic_write(path, lambda fh: torch.save(dict(state), fh))
    except Exception as err:
        raise TrainingCheckpointError(f"cannot write checkpoint {path}: {err}") from err
    log.info("checkpoint written: %s", path)
    return path


def load_checkpoint(
    path: Path,
    *,
    map_location: str | torch.device = "cpu",
    formats: tuple[str, ...] = (FORMAT,),
    required: tuple[str, ...] = REQUIRED,
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (weights_only), checking its format and keys.

    ``formats`` are the accepted ``format`` tags (pretraining's by default; downstream passes its own).
    """
    path = Path(path)
    if not path.is_file():
        raise TrainingCheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, unsupported global: all "corrupt" to the user
        raise TrainingCheckpointError(
            f"checkpoint {path} is corrupt or truncated and cannot be read ({type(err).__name__}: {err}); "
            "delete it to start over, or resume from an older copy"
        ) from err
    if not isinstance(state, dict) or state.get("format") not in formats:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise TrainingCheckpointError(
            f"checkpoint {path} is not a lidar_ssl checkpoint of the expected kind "
            f"(format {found!r}, expected one of {list(formats)})"
        )
    missing = [k for k in required if k not in state]
    if missing:
        raise TrainingCheckpointError(f"checkpoint {path} lacks the entries {missing}")
    return state
