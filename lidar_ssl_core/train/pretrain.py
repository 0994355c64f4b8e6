"""A plain pretraining loop with its pieces injected (style.md item 11).

:func:`build_pretraining` builds the dataset, loader, 3D backbone, 2D teacher, optimiser and schedule from the
configs; :class:`Pretrainer` only runs them. The data order of an epoch is a function of (seed, epoch), and a
checkpoint stores the position inside the epoch, so a resumed run replays exactly the batches it had left.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from lidar_ssl_core.config import DataConfig
from lidar_ssl_core.data.dataset import PairedBagDataset, collate, worker_init
from lidar_ssl_core.data.sample import SuperpixelSource
from lidar_ssl_core.errors import LidarSslError
from lidar_ssl_core.losses import gather_pixel_features, ppkt_loss, slidr_loss, st_ppkt_loss, st_slidr_loss
from lidar_ssl_core.models.image_teacher import ImageTeacher, TeacherOutput
from lidar_ssl_core.models.unet import Res16UNet, build_backbone
from lidar_ssl_core.superpixels import Superpixelizer
from lidar_ssl_core.train.checkpoint import (
    FORMAT,
    LAST,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from lidar_ssl_core.train.config import SUPERPIXEL_METHODS, LossOptions, PretrainConfig

log = logging.getLogger(__name__)


class TrainingError(LidarSslError):
    """Training cannot go on (non-finite loss, batch without the keys the method needs)."""


def is_main_process() -> bool:
    """True outside distributed runs and on rank 0: the one process that logs and writes checkpoints."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of an epoch in an order fixed by (seed, epoch), starting at any batch (for exact resume)."""

    def __init__(self, size: int, batch_size: int, *, seed: int, shuffle: bool, drop_last: bool) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch = 0
        self._start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, batch: int) -> None:
        """The next iteration begins at this batch of the epoch (used once, then back to 0)."""
        self._start = batch

    def __len__(self) -> int:
        return self.size // self.batch_size if self.drop_last else -(-self.size // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        start, self._start = self._start, 0  # read now: the DataLoader may prefetch past this point
        order = (
            np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
            if self.shuffle
            else np.arange(self.size)
        )
        for b in range(start, len(self)):
            yield order[b * self.batch_size : (b + 1) * self.batch_size].tolist()


def make_pretrain_loader(
    dataset: PairedBagDataset, *, seed: int, shuffle: bool = True, drop_last: bool = True
) -> DataLoader[Any]:
    """Like :func:`~lidar_ssl_core.data.dataset.make_loader`, with the resumable batch sampler."""
    cfg = dataset.config.loader
    sampler = EpochBatchSampler(len(dataset), cfg.batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=collate,
        worker_init_fn=worker_init if cfg.num_workers > 0 else None,
        persistent_workers=cfg.num_workers > 0,
    )


def _require(batch: Mapping[str, Any], keys: Sequence[str], method: str) -> None:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise TrainingError(
            f"method {method!r} needs batch keys {missing}; "
            "give the dataset a superpixel source (PairedBagDataset(superpixels=...))"
        )


def compute_loss(
    method: str,
    batch: Mapping[str, Any],
    point_feats: torch.Tensor,
    teacher: TeacherOutput,
    options: LossOptions,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The method's loss of voxel features (V, F) and teacher outputs, from the batch's pairing keys."""
    pv, pi = batch["pairing_voxels"], batch["pairing_images"]
    pixels = teacher.pixel_features
    st = {
        "temperature": options.temperature,
        "tolerance": options.tolerance,
        "k_fraction": options.k_fraction,
        "alpha_min": options.alpha_min,
        "form": options.form,
        "vote_threshold": options.vote_threshold,
        "adaptive_k": options.adaptive_k,
    }
    if method == "ppkt":
        return ppkt_loss(
            point_feats,
            gather_pixel_features(pixels, pi),
            pv,
            num_matches=options.num_matches,
            temperature=options.temperature,
            generator=generator,
        )
    if method == "st-ppkt":
        return st_ppkt_loss(
            point_feats,
            pixels,
            teacher.backbone_features,
            pv,
            pi,
            num_matches=options.num_matches,
            generator=generator,
            balance=options.ppkt_balance,
            **st,
        )
    _require(batch, ("superpixels", "pairing_superpixels"), method)
    sp, psp = batch["superpixels"], batch["pairing_superpixels"]
    if method == "slidr":
        return slidr_loss(point_feats, pixels, pv, pi, sp, psp, temperature=options.temperature)
    if method == "st-slidr":
        return st_slidr_loss(
            point_feats, pixels, teacher.backbone_features, pv, pi, sp, psp, balance=options.balance, **st
        )
    raise TrainingError(f"unknown method {method!r}; choose ppkt, slidr, st-slidr or st-ppkt")


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


@dataclass
class FitResult:
    """What :meth:`Pretrainer.fit` did: per-step losses of this call, and where it stopped."""

    losses: list[float] = field(default_factory=list)
    epoch: int = 0
    global_step: int = 0
    finished: bool = False


class Pretrainer:
    """Runs pretraining with injected pieces; owns the data position (epoch, step) and the checkpoints."""

    def __init__(
        self,
        config: PretrainConfig,
        *,
        backbone: Res16UNet,
        teacher: ImageTeacher,
        loader: DataLoader[Any],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        device: torch.device | str | None = None,
    ) -> None:
        self.config = config
        self.device = torch.device(
            device or config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.backbone = backbone.to(self.device)
        self.teacher = teacher.to(self.device)
        self.loader = loader
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.use_amp = config.amp and self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if config.amp_dtype == "bfloat16" else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.loss_generator = torch.Generator(device=self.device)
        self.loss_generator.manual_seed(config.seed)
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.writer: Any = self._make_writer() if config.tensorboard and is_main_process() else None

    @property
    def checkpoint_path(self) -> Path:
        return self.config.run_dir / LAST

    def _make_writer(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
            return None
        return SummaryWriter(log_dir=str(self.config.run_dir / "tb"))

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.use_amp:
            return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def forward_loss(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Loss of one (device) batch in train mode, without an optimiser step."""
        self.backbone.train()
        self.teacher.train()
        with self._autocast():
            point_feats = self.backbone(batch["coords"], batch["features"])
            out = self.teacher(batch["images"])
        # losses in float32: the softmax over in-batch negatives is where half precision hurts
        out = TeacherOutput(out.pixel_features.float(), out.backbone_features.float())
        return compute_loss(
            self.config.method, batch, point_feats.float(), out, self.config.loss, self.loss_generator
        )

    def train_step(self, batch: Mapping[str, Any]) -> float:
        """One optimiser step on ``batch`` (a collated batch); returns the loss."""
        batch = _to_device(batch, self.device)
        loss = self.forward_loss(batch)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"non-finite loss {float(loss)} at epoch {self.epoch} step {self.step_in_epoch} "
                f"(frames {batch.get('sources')}); lower the learning rate or check the inputs"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    # --- data position ---------------------------------------------------------------------------------
    def _epoch_batches(self) -> Iterator[dict[str, Any]]:
        dataset = self.loader.dataset
        if isinstance(dataset, PairedBagDataset):
            dataset.set_epoch(self.epoch)
        sampler = self.loader.batch_sampler
        if isinstance(sampler, EpochBatchSampler):
            sampler.set_epoch(self.epoch)
            sampler.set_start(self.step_in_epoch)
            return iter(self.loader)
        if self.step_in_epoch:
            log.warning(
                "the loader's sampler cannot start mid-epoch: skipping %d batches by loading them; the order "
                "is only the same as before if the sampler is deterministic (use make_pretrain_loader)",
                self.step_in_epoch,
            )
        return islice(iter(self.loader), self.step_in_epoch, None)

    # --- loop ------------------------------------------------------------------------------------------
    def fit(self, *, max_steps: int | None = None) -> FitResult:
        """Train until ``config.epochs``; ``max_steps`` stops after that many global steps, like an
        interruption would (no extra checkpoint), e.g. to split a run into jobs."""
        result = FitResult()
        cfg = self.config
        while self.epoch < cfg.epochs:
            log.info(
                "epoch %d/%d (from step %d), lr %.5g",
                self.epoch + 1,
                cfg.epochs,
                self.step_in_epoch,
                self.optimizer.param_groups[0]["lr"],
            )
            for batch in self._epoch_batches():
                if max_steps is not None and self.global_step >= max_steps:
                    return self._stop(result, finished=False)
                loss = self.train_step(batch)
                self.step_in_epoch += 1
                self.global_step += 1
                result.losses.append(loss)
                self._log(loss, batch)
                if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0:
                    self.save()
            self.epoch += 1
            self.step_in_epoch = 0
            if self.scheduler is not None:
                self.scheduler.step()
            self.save()
        return self._stop(result, finished=True)

    def _stop(self, result: FitResult, *, finished: bool) -> FitResult:
        result.epoch, result.global_step, result.finished = self.epoch, self.global_step, finished
        if self.writer is not None:
            self.writer.flush()
        return result

    def _log(self, loss: float, batch: Mapping[str, Any]) -> None:
        if not is_main_process():
            return
        if batch.get("replaced"):
            log.warning("step %d: frames skipped and replaced: %s", self.global_step, batch["replaced"])
        if self.global_step % self.config.log_every == 0:
            log.info(
                "epoch %d step %d (global %d): loss %.4f",
                self.epoch + 1,
                self.step_in_epoch,
                self.global_step,
                loss,
            )
        if self.writer is not None:
            self.writer.add_scalar("loss/train", loss, self.global_step)
            self.writer.add_scalar("lr", self.optimizer.param_groups[0]["lr"], self.global_step)

    # --- checkpoints -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: models, optimiser, schedule, scaler, RNGs, data position."""
        return {
            "format": FORMAT,
            "backbone": self.backbone.state_dict(),
            "teacher_head": self.teacher.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng(),
            "loss_generator": self.loss_generator.get_state(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "config": self.config.model_dump(mode="json"),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`; optional parts that are missing are warned about, not fatal."""
        self.backbone.load_state_dict(state["backbone"])
        self.teacher.head.load_state_dict(state["teacher_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            if state.get("scheduler") is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            else:
                log.warning("checkpoint has no scheduler state; the schedule restarts")
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if "rng" in state:
            restore_rng(state["rng"])
        else:
            log.warning("checkpoint has no RNG states; resumed randomness will differ")
        if "loss_generator" in state:
            self.loss_generator.set_state(state["loss_generator"])
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        saved = state.get("config", {})
        if isinstance(saved, dict) and saved.get("method") not in (None, self.config.method):
            log.warning(
                "checkpoint was trained with method %s, continuing with %s",
                saved.get("method"),
                self.config.method,
            )

    def save(self, path: Path | None = None) -> Path | None:
        """Write the checkpoint (``run_dir/ckpt_last.pt`` by default) on the main process."""
        if not is_main_process():
            return None
        return save_checkpoint(self.state_dict(), path or self.checkpoint_path)

    def load(self, path: Path) -> None:
        """Continue from the checkpoint at ``path``."""
        self.load_state_dict(load_checkpoint(path, map_location=self.device))
        log.info("resumed from %s at epoch %d step %d", path, self.epoch, self.step_in_epoch)

    def resume(self) -> bool:
        """Continue from ``run_dir/ckpt_last.pt`` when it exists; False (fresh start) otherwise."""
        if not self.checkpoint_path.is_file():
            return False
        self.load(self.checkpoint_path)
        return True


def build_pretraining(
    config: PretrainConfig,
    data_config: DataConfig,
    *,
    bags: Sequence[Path] | None = None,
    superpixels: SuperpixelSource | None = None,
    device: torch.device | str | None = None,
) -> Pretrainer:
    """Build every piece from the configs and hand them to a :class:`Pretrainer`.

    Models are initialised from ``config.seed`` (a randomly initialised teacher is therefore the same in a
    resumed run). Superpixels are computed with ``data_config.superpixels`` when the method needs them and
    no source is given.
    """
    if not math.isfinite(config.lr):
        raise TrainingError(f"learning rate must be finite, got {config.lr}")
    torch.manual_seed(config.seed)
    if superpixels is None and config.method in SUPERPIXEL_METHODS:
        superpixels = Superpixelizer(data_config.superpixels)
    dataset = PairedBagDataset(data_config, train=True, seed=config.seed, superpixels=superpixels, bags=bags)
    loader = make_pretrain_loader(
        dataset, seed=config.seed, shuffle=config.shuffle, drop_last=config.drop_last
    )
    if len(loader) == 0:
        raise TrainingError(
            f"{len(dataset)} frames make no full batch of {data_config.loader.batch_size}; "
            "lower data.loader.batch_size or set drop_last false"
        )
    backbone = build_backbone(config.backbone)
    teacher = ImageTeacher(config.teacher, student_dim=config.backbone.out_dim)
    params: list[nn.Parameter] = [*backbone.parameters(), *teacher.trainable_parameters()]
    optimizer = torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        dampening=config.dampening,
        weight_decay=config.weight_decay,
    )
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=0.0)
        if config.schedule == "cosine"
        else None
    )
    log.info(
        "pretraining %s: %d frames, %d batches/epoch, %d epochs",
        config.method,
        len(dataset),
        len(loader),
        config.epochs,
    )
    return Pretrainer(
        config,
        backbone=backbone,
        teacher=teacher,
        loader=loader,
        optimizer=optimizer,
        scheduler=scheduler,
        device=device,
    )
