"""Load published self-supervised ResNet-50 checkpoints from a user-given path into torchvision names.

Nothing is ever downloaded: the user points at a file. Every file is read with
``torch.load(..., weights_only=True)`` so a checkpoint cannot execute code; a file that needs arbitrary
pickled objects is refused with a hint on how to re-save its tensors.

Supported layouts (auto-detected from the keys, or forced with ``layout=``):

========== ===================================================================================
torchvision plain torchvision keys (``conv1.weight`` ...), optionally under ``state_dict``/``model``
            and/or with a DDP ``module.`` prefix; also DINO's backbone-only RN50 release
moco       MoCo v1/v2: ``state_dict`` with ``module.encoder_q.*`` (``encoder_k``, queue, fc dropped)
swav       SwAV: ``module.*`` (optionally under ``state_dict``), ``projection_head``/``prototypes`` dropped
dino       DINO full checkpoint: ``teacher`` (default) or ``student`` dict, ``backbone.`` or
           ``module.backbone.`` prefix, ``head.*`` dropped; plain torchvision keys also accepted
obow       OBoW: a ``network`` dict (if present) holding torchvision keys, optional ``module.`` prefix.
           The methods digest gives no key layout for OBoW, so use ``prefix=``/``container=`` for others
densecl    DenseCL: ``state_dict`` with ``backbone.*`` (neck/head dropped) or its torchvision conversion
========== ===================================================================================

``container=`` (top-level key holding the state dict) and ``prefix=`` (key prefix to keep and strip)
override the layout's defaults for any other release.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import torch
from torch import nn

from lidar_ssl_core.errors import ConfigError
from lidar_ssl_core.models.config import CheckpointLayout

logger = logging.getLogger(__name__)

CHECKPOINT_LAYOUTS: tuple[str, ...] = get_args(CheckpointLayout)

#: How many offending keys an error message lists.
_MAX_KEYS_SHOWN = 5


class CheckpointError(ConfigError):
    """A weights file cannot be read or does not match the model; names the file and the offending keys."""


@dataclass(frozen=True)
class _LayoutSpec:
    containers: tuple[str, ...]  # top-level keys tried in order; the object itself is tried last
    prefixes: tuple[str, ...]  # key prefixes tried in order; "" = keep keys as they are
    drop: tuple[str, ...]  # prefixes (after stripping) of SSL heads that are not part of the backbone


_LAYOUTS: dict[str, _LayoutSpec] = {
    "torchvision": _LayoutSpec(("state_dict", "model"), ("module.", ""), ()),
    "moco": _LayoutSpec(("state_dict",), ("module.encoder_q.", "encoder_q."), ("fc.",)),
    "swav": _LayoutSpec(("state_dict",), ("module.", ""), ("projection_head.", "prototypes.", "fc.")),
    "dino": _LayoutSpec(
        ("teacher", "state_dict"), ("module.backbone.", "backbone.", "module.", ""), ("head.",)
    ),
    "obow": _LayoutSpec(("network", "state_dict"), ("module.", ""), ()),
    "densecl": _LayoutSpec(("state_dict",), ("module.backbone.", "backbone.", ""), ("neck.", "head.")),
}


@dataclass(frozen=True)
class BackboneWeights:
    """Backbone tensors renamed to torchvision keys, plus where they came from (for logs and errors)."""

    state_dict: dict[str, torch.Tensor]
    layout: str
    container: str | None
    prefix: str
    dropped: tuple[str, ...]
    source: str


def read_checkpoint(path: str | Path) -> Any:
    """``torch.load`` a file safely (CPU, ``weights_only=True``); every failure is a ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"weights file {path} does not exist (give the path of a downloaded checkpoint)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain containers, which weights_only loading "
            "refuses for safety. If you trust the file, re-save only its state dict, e.g. "
            "torch.save(torch.load(p, weights_only=False)['state_dict'], 'clean.pth'). "
            f"Details: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, zipfile errors ... for non-checkpoints
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint: {type(exc).__name__}: {exc}"
        ) from exc


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and any(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _show(keys: list[str] | set[str]) -> str:
    items = sorted(keys)
    more = f" ... (+{len(items) - _MAX_KEYS_SHOWN} more)" if len(items) > _MAX_KEYS_SHOWN else ""
    return ", ".join(items[:_MAX_KEYS_SHOWN]) + more


def detect_layout(obj: Any) -> str:
    """Guess the layout of a loaded checkpoint from its top-level keys and parameter names."""
    if not isinstance(obj, Mapping):
        return "torchvision"
    if "teacher" in obj and isinstance(obj["teacher"], Mapping):
        return "dino"
    if "network" in obj and isinstance(obj["network"], Mapping):
        return "obow"
    sd = obj
    for key in ("state_dict", "model"):
        if key in obj and isinstance(obj[key], Mapping):
            sd = obj[key]
            break
    keys = [k for k in sd if isinstance(k, str)]
    if any(k.startswith(("module.encoder_q.", "encoder_q.")) for k in keys):
        return "moco"
    if any(
        k.startswith(("module.projection_head.", "module.prototypes.", "projection_head.", "prototypes."))
        for k in keys
    ):
        return "swav"
    if any(k.startswith("module.backbone.") for k in keys) and "student" in obj:
        return "dino"
    if any(k.startswith(("backbone.", "module.backbone.")) for k in keys):
        return "densecl"
    return "torchvision"


def extract_backbone(
    obj: Any,
    *,
    layout: CheckpointLayout = "auto",
    container: str | None = None,
    prefix: str | None = None,
    source: str = "<in-memory checkpoint>",
) -> BackboneWeights:
    """Find the backbone's state dict inside a loaded checkpoint and rename it to torchvision keys."""
    if layout not in CHECKPOINT_LAYOUTS:
        raise CheckpointError(
            f"{source}: unknown checkpoint layout {layout!r}; choose one of {CHECKPOINT_LAYOUTS}"
        )
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{source} is not a checkpoint: expected a dict of tensors, got {type(obj).__name__}"
        )
    resolved = detect_layout(obj) if layout == "auto" else layout
    spec = _LAYOUTS[resolved]

    # 1. the dict that holds the tensors
    used_container: str | None = None
    if container is not None:
        if container not in obj or not isinstance(obj[container], Mapping):
            raise CheckpointError(
                f"{source} has no dict {container!r} at top level; "
                f"top-level keys: {_show(set(map(str, obj)))}"
            )
        sd, used_container = obj[container], container
    else:
        sd = obj
        for key in spec.containers:
            if key in obj and isinstance(obj[key], Mapping):
                sd, used_container = obj[key], key
                break
    if not _is_state_dict(sd):
        raise CheckpointError(
            f"{source} is not a checkpoint: no dict of named tensors found "
            f"(layout {resolved}, top-level keys: {_show(set(map(str, obj)))})"
        )

    # 2. the prefix that marks backbone keys (others, e.g. MoCo's encoder_k or DINO's head, are not ours)
    keys = list(sd)
    if prefix is not None:
        used_prefix = prefix
        if not any(k.startswith(prefix) for k in keys):
            raise CheckpointError(
                f"{source}: no key starts with prefix {prefix!r}; first keys: {_show(keys[:10])}"
            )
    else:
        used_prefix = next((p for p in spec.prefixes if p and any(k.startswith(p) for k in keys)), "")
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in sd.items():
        if not key.startswith(used_prefix):
            dropped.append(key)
            continue
        name = key[len(used_prefix) :]
        if any(name.startswith(d) for d in spec.drop) or not isinstance(value, torch.Tensor):
            dropped.append(key)
            continue
        out[name] = value
    if not out:
        raise CheckpointError(
            f"{source}: no tensors left after taking prefix {used_prefix!r} (layout {resolved})"
        )
    return BackboneWeights(out, resolved, used_container, used_prefix, tuple(dropped), source)


def load_backbone_weights(
    model: nn.Module,
    path: str | Path,
    *,
    layout: CheckpointLayout = "auto",
    container: str | None = None,
    prefix: str | None = None,
) -> BackboneWeights:
    """Load a checkpoint file into a torchvision-layout ``model`` strictly; returns what was loaded.

    ``fc.*`` in the file is ignored when the model has no ``fc``. Only BatchNorm ``num_batches_tracked``
    counters may be absent (old checkpoints predate them); any other missing, unexpected or mis-shaped
    key raises a ``CheckpointError`` naming the file and the first offending keys.
    """
    weights = extract_backbone(
        read_checkpoint(path), layout=layout, container=container, prefix=prefix, source=str(path)
    )
    target = model.state_dict()
    sd = dict(weights.state_dict)
    if not any(k.startswith("fc.") for k in target):
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    missing = {k for k in target if k not in sd and not k.endswith("num_batches_tracked")}
    unexpected = {k for k in sd if k not in target}
    mis_shaped = {
        f"{k} {tuple(sd[k].shape)} vs {tuple(target[k].shape)}"
        for k in sd
        if k in target and sd[k].shape != target[k].shape
    }
    if missing or unexpected or mis_shaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_show(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_show(unexpected)}")
        if mis_shaped:
            parts.append(f"{len(mis_shaped)} shape mismatch(es): {_show(mis_shaped)}")
        raise CheckpointError(
            f"{path} (read as layout {weights.layout!r}, container {weights.container!r}, prefix "
            f"{weights.prefix!r}) does not match a {type(model).__name__}: {'; '.join(parts)}. "
            "Pass layout=/container=/prefix= if the file uses another key layout."
        )
    for key, value in target.items():  # fill absent counters so strict loading succeeds
        if key not in sd:
            sd[key] = value
    model.load_state_dict(sd, strict=True)
    logger.info(
        "loaded %d tensors from %s (layout %s, prefix %r, %d keys dropped)",
        len(weights.state_dict),
        path,
        weights.layout,
        weights.prefix,
        len(weights.dropped),
    )
    return weights
