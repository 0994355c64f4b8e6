"""The one interface every pretraining method implements, and the registry that names them.

A method is an ``nn.Module`` that owns everything of its own beyond the shared 3D backbone: image networks
and heads (trainable or frozen), learnable matrices, running statistics. The trainer gives it the batch and
the backbone's per-voxel features and gets back a loss and the terms to log; it never knows a method by
name. Adding a method is adding a file in this package with a subclass decorated by :func:`register`.

The interface, in the order the trainer uses it:

- ``needs_superpixels`` / ``needs_weak_labels``: what the dataset must compute for it;
- ``batch_keys``: the batch keys it reads (checked before every step, with a clear error);
- ``prepare_batch``: an optional change of the batch before the backbone runs (NCLR perturbs the cloud);
- ``forward``: loss and logged terms from the batch and the backbone features;
- ``parameter_groups`` / ``build_optimizer`` / ``lr_setting``: its optimiser over backbone + own trainable
  parameters (``pretrain.schedule`` wraps whichever it builds) and the config key of its learning rate;
- ``checkpoint_state`` / ``load_checkpoint_state``: what a checkpoint stores of it (frozen, rebuildable
  weights are left out);
- ``after_step``: a hook after each optimiser step (moving statistics, warm-ups).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeVar

import torch
from torch import nn

from lidar_ssl_core.errors import ConfigError, LidarSslError
from lidar_ssl_core.losses.gather import Gather
from lidar_ssl_core.train.method_names import METHODS_PACKAGE, SHARED_MODULES, method_name_of_module

if TYPE_CHECKING:
    from lidar_ssl_core.config import DataConfig, VoxelConfig
    from lidar_ssl_core.train.config import PretrainConfig


class MethodError(LidarSslError):
    """A method cannot run on this batch (missing keys, no pairs) or is unknown."""


class MethodOutput(NamedTuple):
    """The loss to minimise and the (detached, scalar) terms to log as ``loss/<name>``."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]


@dataclass(frozen=True)
class MethodSetup:
    """What a method may need at construction besides its config: the student width and the voxel grid."""

    student_dim: int
    voxels: VoxelConfig | None = None


@dataclass
class StepContext:
    """Per-step inputs a method may use: its random generator, the DDP row gather, the autocast context,
    and where training stands."""

    generator: torch.Generator | None = None
    gather: Gather | None = None
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    global_step: int = 0
    epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class PretrainMethod(nn.Module):
    """Base class of the pretraining methods (module docstring)."""

    name: ClassVar[str] = ""
    needs_superpixels: ClassVar[bool] = False
    needs_weak_labels: ClassVar[bool] = False
    #: whether the frozen 2D teacher (pretrain.teacher) is used (and so needs weights to mean anything)
    uses_teacher: ClassVar[bool] = False
    batch_keys: ClassVar[tuple[str, ...]] = ("pairing_voxels", "pairing_images", "images")
    #: DDP: some trainable parameters may be unused in a step (e.g. a loss switched on later)
    ddp_find_unused_parameters: ClassVar[bool] = False

    def __init__(self, config: PretrainConfig, setup: MethodSetup) -> None:
        super().__init__()
        self.config = config
        self.setup = setup

    # --- data --------------------------------------------------------------------------------------------
    def check_batch(self, batch: Mapping[str, Any]) -> None:
        """Raise MethodError naming the batch keys this method needs and the batch lacks."""
        missing = [k for k in self.batch_keys if k not in batch]
        if missing:
            hint = ""
            if self.needs_superpixels:
                hint = "; give the dataset a superpixel source (PairedBagDataset(superpixels=...))"
            elif self.needs_weak_labels:
                hint = "; give the dataset weak labels (PairedBagDataset(weak_labels=...))"
            raise MethodError(f"method {self.name!r} needs batch keys {missing}{hint}")

    @classmethod
    def dataset_sources(cls, config: PretrainConfig, data: DataConfig) -> dict[str, Any]:
        """Keyword arguments for the dataset: per-image sources the method needs (superpixels here)."""
        if not cls.needs_superpixels:
            return {}
        from lidar_ssl_core.superpixels import Superpixelizer  # the dataset side: imported when needed

        return {"superpixels": Superpixelizer(data.superpixels)}

    def prepare_batch(self, batch: dict[str, Any], step: StepContext) -> dict[str, Any]:
        """The batch the backbone and :meth:`forward` see; the identity unless a method changes the input."""
        return batch

    # --- loss ----------------------------------------------------------------------------------------------
    def forward(  # type: ignore[override]
        self, batch: Mapping[str, Any], point_feats: torch.Tensor, step: StepContext
    ) -> MethodOutput:
        """Loss of one batch from the backbone's (V, F) voxel features (float32)."""
        raise NotImplementedError

    def after_step(self, step: StepContext) -> None:
        """Called after every optimiser step (with the step just done); nothing by default."""

    # --- optimisation ---------------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The method's own parameters the optimiser updates (frozen ones excluded)."""
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_groups(self, backbone: nn.Module) -> list[dict[str, Any]]:
        """Optimiser groups over the backbone and the method's trainable parameters (one by default)."""
        return [{"params": [*backbone.parameters(), *self.trainable_parameters()]}]

    def lr_setting(self) -> str:
        """The config key of the learning rate :meth:`build_optimizer` uses (named in error messages)."""
        return "pretrain.lr"

    def build_optimizer(self, groups: Sequence[dict[str, Any]]) -> torch.optim.Optimizer:
        """SGD with ``pretrain.lr``, ``momentum``, ``dampening``, ``weight_decay`` (the SLidR family)."""
        cfg = self.config
        return torch.optim.SGD(
            list(groups),
            lr=cfg.lr,
            momentum=cfg.momentum,
            dampening=cfg.dampening,
            weight_decay=cfg.weight_decay,
        )

    # --- checkpoints ----------------------------------------------------------------------------------------
    def frozen_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of frozen sub-modules rebuilt from their weights file (not checkpointed)."""
        return ()

    def checkpoint_state(self) -> dict[str, Any]:
        """Tensors and primitives to store: the state dict without the frozen, rebuildable parts."""
        skip = self.frozen_prefixes()
        return {k: v for k, v in self.state_dict().items() if not (skip and k.startswith(skip))}

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`checkpoint_state` (strict on the stored keys)."""
        skip = self.frozen_prefixes()
        missing, unexpected = self.load_state_dict(dict(state), strict=False)
        missing = [k for k in missing if not (skip and k.startswith(skip))]
        if missing or unexpected:
            raise MethodError(
                f"method {self.name!r} checkpoint state does not match: missing {missing}, "
                f"unexpected {unexpected}"
            )


M = TypeVar("M", bound=type[PretrainMethod])

_REGISTRY: dict[str, type[PretrainMethod]] = {}


def register(cls: M) -> M:
    """Class decorator: make ``cls`` selectable as ``pretrain.method: <cls.name>``."""
    if not cls.name:
        raise ConfigError(f"{cls.__qualname__} has no name")
    if cls.__module__.startswith(f"{METHODS_PACKAGE}.") and cls.name != method_name_of_module(cls.__module__):
        raise ConfigError(
            f"{cls.__qualname__} is named {cls.name!r} but lives in {cls.__module__}: a method's module is "
            "its name with '_' for '-' (train/method_names.py lists methods from the files)"
        )
    known = _REGISTRY.get(cls.name)
    if known is not None and known is not cls:
        raise ConfigError(f"two pretraining methods are named {cls.name!r}: {known} and {cls}")
    _REGISTRY[cls.name] = cls
    return cls


def registered_names() -> tuple[str, ...]:
    """The names registered so far, without importing the method modules."""
    return tuple(sorted(_REGISTRY))


def method_names() -> tuple[str, ...]:
    """Every registered method name, sorted (imports the method modules first)."""
    _load_methods()
    return tuple(sorted(_REGISTRY))


def method_class(name: str) -> type[PretrainMethod]:
    """The registered class of ``name``; MethodError listing the choices otherwise."""
    _load_methods()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MethodError(f"unknown pretraining method {name!r}; choose one of {sorted(_REGISTRY)}") from None


def build_method(config: PretrainConfig, setup: MethodSetup) -> PretrainMethod:
    """The method ``config.method`` built for this run."""
    return method_class(config.method)(config, setup)


def _load_methods() -> None:
    """Import every module of this package once: each registers its methods on import."""
    import importlib
    import pkgutil

    from lidar_ssl_core.train import methods as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_") and info.name not in SHARED_MODULES:
            importlib.import_module(f"{package.__name__}.{info.name}")
