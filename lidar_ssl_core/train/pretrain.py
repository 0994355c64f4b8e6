"""A plain pretraining loop with its pieces injected (style.md item 11).

:func:`build_pretraining` builds the dataset, loader, 3D backbone, the method (its image networks, heads and
loss: :mod:`lidar_ssl_core.train.methods`), optimiser and schedule from the configs; :class:`Pretrainer` only
runs them and knows no method by name. The data order of an epoch is a function of (seed, epoch), and a
checkpoint stores the position inside the epoch, so a resumed run replays exactly the batches it had left.

Resume is bit-exact in a single process (every RNG state is restored). Under DDP the checkpoint holds rank
0's RNG states only, so after loading every process re-seeds its loss-sampling generator and the global
RNGs from (seed, rank, global step): a resumed DDP run is deterministic given (seed, world size, step), but
does not draw the same random numbers as an uninterrupted one.

Every decision that could differ between processes (resume or not, a non-finite loss, a failed checkpoint
write) is agreed through a collective first, so all processes raise together instead of some waiting
forever in the next collective.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from lidar_ssl_core.config import DataConfig, VoxelConfig
from lidar_ssl_core.data.dataset import PairedBagDataset, collate, worker_init
from lidar_ssl_core.data.sample import SuperpixelSource
from lidar_ssl_core.errors import ConfigError, LidarSslError
from lidar_ssl_core.losses import Gather, all_gather_rows
from lidar_ssl_core.models.unet import Res16UNet, build_backbone
from lidar_ssl_core.train.checkpoint import (
    FORMAT,
    LAST,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from lidar_ssl_core.train.config import PretrainConfig
from lidar_ssl_core.train.distributed import (
    DistContext,
    all_min_max,
    all_sum,
    all_true,
    broadcast_flag,
)
from lidar_ssl_core.train.methods import (
    MethodSetup,
    PretrainMethod,
    StepContext,
    build_method,
    method_class,
)
from lidar_ssl_core.train.scalars import ScalarLog
from lidar_ssl_core.train.schedule import build_scheduler, steps_every_iteration

log = logging.getLogger(__name__)


#: pretrain settings that define what a run learns: a checkpoint is only continued with the same values
RUN_DEFINING_KEYS = (
    "method",
    "epochs",
    "lr",
    "momentum",
    "dampening",
    "weight_decay",
    "schedule",
    "warmup_steps",
    "min_lr",
    "seed",
    "backbone",
    "teacher",
    "loss",
    "nclr",
    "olivine",
    "scalr",
)


class TrainingError(LidarSslError):
    """Training cannot go on (non-finite loss, batch without the keys the method needs)."""


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of an epoch in an order fixed by (seed, epoch), starting at any batch (for exact resume).

    Distributed, the epoch's order is cut into global batches of ``batch_size * world_size`` frames and
    process ``rank`` takes its ``batch_size`` slice of each: every process has the same number of batches
    and together they see each frame of the epoch once.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool,
        drop_last: bool,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise TrainingError(f"rank {rank} is not in a world of {world_size} processes")
        if world_size > 1 and not drop_last:
            raise TrainingError(
                "distributed training needs `pretrain.drop_last: true` (equal batches on every process)"
            )
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, batch: int) -> None:
        """The next iteration begins at this batch of the epoch (used once, then back to 0)."""
        self._start = batch

    def __len__(self) -> int:
        per_step = self.batch_size * self.world_size
        return self.size // per_step if self.drop_last else -(-self.size // per_step)

    def __iter__(self) -> Iterator[list[int]]:
        start, self._start = self._start, 0  # read now: the DataLoader may prefetch past this point
        order = (
            np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
            if self.shuffle
            else np.arange(self.size)
        )
        per_step = self.batch_size * self.world_size
        for b in range(start, len(self)):
            begin = b * per_step + self.rank * self.batch_size
            yield order[begin : begin + self.batch_size].tolist()


def make_pretrain_loader(
    dataset: PairedBagDataset,
    *,
    seed: int,
    shuffle: bool = True,
    drop_last: bool = True,
    dist: DistContext | None = None,
) -> DataLoader[Any]:
    """Like :func:`~lidar_ssl_core.data.dataset.make_loader`, with the resumable (and sharded) sampler."""
    cfg = dataset.config.loader
    dist = dist or DistContext()
    sampler = EpochBatchSampler(
        len(dataset),
        cfg.batch_size,
        seed=seed,
        shuffle=shuffle,
        drop_last=drop_last,
        rank=dist.rank,
        world_size=dist.world_size,
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=collate,
        worker_init_fn=worker_init if cfg.num_workers > 0 else None,
        persistent_workers=cfg.num_workers > 0,
    )


def _rank_seeds(seed: int, rank: int, step: int) -> list[int]:
    """Four 32-bit seeds derived from (seed, rank, step): distinct streams per process, reproducible."""
    sequence = np.random.SeedSequence([seed % (1 << 64), rank, step])
    return [int(v) for v in sequence.generate_state(4, np.uint32)]


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


@dataclass(frozen=True)
class StepStats:
    """What one optimiser step did, for progress display (the CLI's bar) and the scalar log."""

    epoch: int
    step_in_epoch: int
    global_step: int
    steps_per_epoch: int
    loss: float
    lr: float
    samples_per_s: float
    pairs: int
    superpixels: int
    replaced: int
    terms: dict[str, float] = field(default_factory=dict)
    sources: tuple[str, ...] = ()  # this process's frames of the batch, "<bag>#<frame>"

    def scalars(self) -> dict[str, float]:
        scalars = {
            "loss/train": self.loss,
            "lr": self.lr,
            "throughput/samples_per_s": self.samples_per_s,
            "batch/pairs": float(self.pairs),
            "batch/replaced_frames": float(self.replaced),
            "epoch": float(self.epoch),
        }
        if self.superpixels:
            scalars["batch/superpixels"] = float(self.superpixels)
        scalars.update({f"loss/{name}": value for name, value in self.terms.items()})
        return scalars


StepCallback = Callable[[StepStats], None]


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
        method: PretrainMethod,
        loader: DataLoader[Any],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        device: torch.device | str | None = None,
        dist: DistContext | None = None,
        voxels: VoxelConfig | None = None,
    ) -> None:
        self.config = config
        self.voxels = voxels  # stored in checkpoints: downstream must use the same grid
        self.dist = dist or DistContext()
        if self.dist.is_distributed:
            self.device = self.dist.device
        else:
            self.device = torch.device(
                device or config.device or ("cuda" if torch.cuda.is_available() else "cpu")
            )
        self.backbone = backbone.to(self.device)
        self.method = method.to(self.device)
        self._backbone_fwd: nn.Module = self.backbone
        self._method_fwd: nn.Module = self.method
        if self.dist.is_distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._backbone_fwd = DistributedDataParallel(self.backbone, device_ids=ids)
            if self.method.trainable_parameters():
                self._method_fwd = DistributedDataParallel(
                    self.method,
                    device_ids=ids,
                    find_unused_parameters=self.method.ddp_find_unused_parameters,
                )
        self._gather: Gather | None = (
            all_gather_rows if self.dist.is_distributed and config.loss.gather_negatives else None
        )
        self.loader = loader
        self.optimizer = optimizer
        self.scheduler = scheduler
        self._per_step_schedule = steps_every_iteration(config)  # else stepped at epoch ends
        self.use_amp = config.amp and self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if config.amp_dtype == "bfloat16" else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.loss_generator = torch.Generator(device=self.device)
        self.loss_generator.manual_seed(config.seed + self.dist.rank)  # each process samples its own pairs
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.last_terms: dict[str, float] = {}
        self.scalars = ScalarLog(
            config.run_dir if self.dist.is_main else None, tensorboard=config.tensorboard
        )

    @property
    def checkpoint_path(self) -> Path:
        return self.config.run_dir / LAST

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.use_amp:
            return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def step_context(self) -> StepContext:
        """What the method may use in this step (generator, DDP gather, autocast, position)."""
        return StepContext(
            generator=self.loss_generator,
            gather=self._gather,
            autocast=self._autocast,
            global_step=self.global_step,
            epoch=self.epoch,
        )

    def forward_loss(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Loss of one (device) batch in train mode, without an optimiser step; the method's logged terms
        are kept in ``last_terms``."""
        self.backbone.train()
        self.method.train()
        step = self.step_context()
        batch = self.method.prepare_batch(dict(batch), step)
        self.method.check_batch(batch)
        with self._autocast():
            point_feats = self._backbone_fwd(batch["coords"], batch["features"])
        # losses in float32: the softmax over in-batch negatives is where half precision hurts
        out = self._method_fwd(batch, point_feats.float(), step)
        self.last_terms = {k: float(v.detach()) for k, v in out.terms.items()}
        return out.loss  # type: ignore[no-any-return]

    def train_step(self, batch: Mapping[str, Any]) -> float:
        """One optimiser step on ``batch`` (a collated batch); returns the loss."""
        batch = _to_device(batch, self.device)
        loss = self.forward_loss(batch)
        finite = bool(torch.isfinite(loss))
        if not all_true(finite, self.device):  # all processes agree, then all raise (none left waiting)
            what = (
                f"non-finite loss {float(loss.detach())}"
                if not finite
                else "a non-finite loss on another process"
            )
            key = self.method.lr_setting()
            raise TrainingError(
                f"{what} at epoch {self.epoch} step {self.step_in_epoch} (rank {self.dist.rank}, "
                f"frames {batch.get('sources')}); lower the learning rate `{key}` (now "
                f"{self.optimizer.param_groups[0]['lr']:.3g}; -s {key}=...) or check the inputs"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.after_step(self.step_context())
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
    def fit(self, *, max_steps: int | None = None, on_step: StepCallback | None = None) -> FitResult:
        """Train until ``config.epochs``; ``max_steps`` stops after that many global steps, like an
        interruption would (no extra checkpoint), e.g. to split a run into jobs. ``on_step`` receives
        each step's :class:`StepStats` (on every process; the CLI draws its progress bar with it)."""
        result = FitResult()
        cfg = self.config
        self.scalars.truncate_after(self.global_step)
        while self.epoch < cfg.epochs:
            log.info(
                "epoch %d/%d (from step %d), lr %.5g",
                self.epoch + 1,
                cfg.epochs,
                self.step_in_epoch,
                self.optimizer.param_groups[0]["lr"],
            )
            tick = time.perf_counter()
            for batch in self._epoch_batches():
                if max_steps is not None and self.global_step >= max_steps:
                    return self._stop(result, finished=False)
                lr = float(self.optimizer.param_groups[0]["lr"])
                loss = self.train_step(batch)
                self.step_in_epoch += 1
                self.global_step += 1
                if self.scheduler is not None and self._per_step_schedule:
                    self.scheduler.step()  # before any checkpoint below: a resumed run stays exact
                now = time.perf_counter()
                stats = self._stats(loss, lr, batch, now - tick)
                tick = now
                result.losses.append(stats.loss)
                self._log(stats, batch)
                if on_step is not None:
                    on_step(stats)
                if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0:
                    self.save()
            self.epoch += 1
            self.step_in_epoch = 0
            if self.scheduler is not None and not self._per_step_schedule:
                self.scheduler.step()
            self.save()
        return self._stop(result, finished=True)

    def _stop(self, result: FitResult, *, finished: bool) -> FitResult:
        result.epoch, result.global_step, result.finished = self.epoch, self.global_step, finished
        self.scalars.flush()
        return result

    def _stats(self, loss: float, lr: float, batch: Mapping[str, Any], seconds: float) -> StepStats:
        """Step statistics of the global batch: the loss is the mean over the processes; pairs, superpixels
        and replaced frames are sums over them (one all_reduce)."""
        frames = len(batch.get("sources") or ()) or int(self.loader.batch_size or 0)
        local = [
            loss,
            float(batch["pairing_points"].shape[0]) if "pairing_points" in batch else 0.0,
            float(_count_superpixels(batch)),
            float(len(batch.get("replaced") or ())),
        ]
        names = sorted(self.last_terms)  # the same terms on every process (one method, one code path)
        sums = all_sum([*local, *(self.last_terms[n] for n in names)], self.device)
        loss_sum, pairs, superpixels, replaced = sums[:4]
        terms = {n: v / self.dist.world_size for n, v in zip(names, sums[4:], strict=True)}
        return StepStats(
            epoch=self.epoch,
            step_in_epoch=self.step_in_epoch,
            global_step=self.global_step,
            steps_per_epoch=len(self.loader),
            loss=loss_sum / self.dist.world_size,
            lr=lr,
            samples_per_s=frames * self.dist.world_size / max(seconds, 1e-9),
            pairs=round(pairs),
            superpixels=round(superpixels),
            replaced=round(replaced),
            terms=terms,
            sources=tuple(batch.get("sources") or ()),
        )

    def _log(self, stats: StepStats, batch: Mapping[str, Any]) -> None:
        if not self.dist.is_main:
            return
        if batch.get("replaced"):
            log.warning("step %d: frames skipped and replaced: %s", self.global_step, batch["replaced"])
        if self.global_step % self.config.log_every == 0:
            log.info(
                "epoch %d step %d (global %d): loss %.4f, %.2f samples/s",
                self.epoch + 1,
                self.step_in_epoch,
                self.global_step,
                stats.loss,
                stats.samples_per_s,
            )
        self.scalars.write(self.global_step, stats.scalars())

    # --- checkpoints -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: models, optimiser, schedule, scaler, RNGs, data position."""
        return {
            "format": FORMAT,
            "backbone": self.backbone.state_dict(),
            "method_name": self.method.name,
            "method": self.method.checkpoint_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng(),
            "loss_generator": self.loss_generator.get_state(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "config": self.config.model_dump(mode="json"),
            **({"voxels": self.voxels.model_dump(mode="json")} if self.voxels is not None else {}),
        }

    def check_same_run(self, state: Mapping[str, Any]) -> None:
        """Refuse to continue a checkpoint of another setup (method, networks, schedule, voxel grid).

        Continuing such a run would silently mix two experiments (or fail deep in ``load_state_dict``).
        Settings that do not change what is learnt (logging, checkpoint cadence, device) may differ.
        """
        saved = state.get("config")
        ours = self.config.model_dump(mode="json")
        diffs = []
        if isinstance(saved, Mapping):
            for key in RUN_DEFINING_KEYS:
                if key in saved and saved[key] != ours.get(key):
                    diffs.append(f"pretrain.{key}: checkpoint {saved[key]!r}, now {ours.get(key)!r}")
        voxels = state.get("voxels")
        if isinstance(voxels, Mapping) and self.voxels is not None:
            now = self.voxels.model_dump(mode="json")
            if dict(voxels) != now:
                diffs.append(f"data.voxels: checkpoint {dict(voxels)}, now {now}")
        if diffs:
            raise ConfigError(
                f"{self.checkpoint_path} belongs to another run ({'; '.join(diffs)}); use the same settings, "
                "another --run-dir, or --no-resume to start over"
            )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`; optional parts that are missing are warned about, not fatal."""
        self.check_same_run(state)
        self.backbone.load_state_dict(state["backbone"])
        self.method.load_checkpoint_state(state.get("method", state))
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
        if self.dist.is_distributed:
            self._reseed_for_rank()

    def _reseed_for_rank(self) -> None:
        """Under DDP after loading: the checkpoint holds rank 0's RNG states, which every process has just
        restored; re-seed this process's loss sampler and global RNGs from (seed, rank, global step), so that
        processes draw different pairs again, reproducibly for a given (seed, world size, step)."""
        loss_seed, torch_seed, numpy_seed, python_seed = _rank_seeds(
            self.config.seed, self.dist.rank, self.global_step
        )
        self.loss_generator.manual_seed(loss_seed)
        torch.manual_seed(torch_seed)  # CUDA generators too
        np.random.seed(numpy_seed)  # noqa: NPY002  (the legacy global state, as capture_rng stores)
        random.seed(python_seed)
        log.info(
            "rank %d: RNGs re-seeded from (seed %d, rank, step %d) after resume",
            self.dist.rank,
            self.config.seed,
            self.global_step,
        )

    def save(self, path: Path | None = None) -> Path | None:
        """Write the checkpoint (``run_dir/ckpt_last.pt`` by default) on the main process; the others wait
        for it, so that a checkpoint on disk is never older than the step any process has reached.

        Rank 0 broadcasts whether the write succeeded: when it failed, rank 0 raises the write error and
        every other process a :class:`TrainingError`, instead of waiting at a barrier that rank 0 never
        reaches."""
        written = None
        error: Exception | None = None
        if self.dist.is_main:
            try:
                self.scalars.flush()
                written = save_checkpoint(self.state_dict(), path or self.checkpoint_path)
            except Exception as err:  # re-raised below, after the others have been told
                error = err
        if not broadcast_flag(error is None, self.device):
            if error is not None:
                raise error
            raise TrainingError(
                f"rank 0 could not write the checkpoint {path or self.checkpoint_path} (see its error); "
                f"rank {self.dist.rank} stops too"
            )
        return written

    def close(self) -> None:
        """Close the scalar log (TensorBoard's writer thread included)."""
        self.scalars.close()

    def load(self, path: Path) -> None:
        """Continue from the checkpoint at ``path``."""
        self.load_state_dict(load_checkpoint(path, map_location=self.device))
        log.info("resumed from %s at epoch %d step %d", path, self.epoch, self.step_in_epoch)

    def resume(self) -> bool:
        """Continue from ``run_dir/ckpt_last.pt`` when it exists; False (fresh start) otherwise.

        Under DDP rank 0 decides (whether it sees the file) and tells the others; a process that cannot
        read the file rank 0 found raises :class:`TrainingError` (the run folder must be on a filesystem
        shared by all nodes), and so do the others. After loading, the processes check that they are all
        at the same (epoch, step in epoch, global step).
        """
        path = self.checkpoint_path
        if not self.dist.is_distributed:
            if not path.is_file():
                return False
            self.load(path)
            return True
        if not broadcast_flag(self.dist.is_main and path.is_file(), self.device):
            return False
        error: Exception | None = None
        try:
            self.load(path)
        except Exception as err:  # every process must reach the agreement below, then raise
            error = err
        if not all_true(error is None, self.device):
            if error is None:
                raise TrainingError(
                    f"another process could not read the checkpoint {path} (see its error); "
                    f"rank {self.dist.rank} stops too"
                )
            if not self.dist.is_main and not path.is_file():
                raise TrainingError(
                    f"rank {self.dist.rank} cannot see the checkpoint {path} that rank 0 found: the run "
                    "folder (pretrain.run_dir) must be on a filesystem shared by all nodes"
                ) from error
            raise error
        position = [self.epoch, self.step_in_epoch, self.global_step]
        lo, hi = all_min_max(position, self.device)
        if lo != hi:
            raise TrainingError(
                f"the processes resumed from {path} at different positions (epoch, step in epoch, global "
                f"step) between {tuple(lo)} and {tuple(hi)}; rank {self.dist.rank} is at {tuple(position)}. "
                "The run folder must be one folder shared by all nodes, not a copy per node"
            )
        return True


def build_pretraining(
    config: PretrainConfig,
    data_config: DataConfig,
    *,
    bags: Sequence[Path] | None = None,
    superpixels: SuperpixelSource | None = None,
    device: torch.device | str | None = None,
    dist: DistContext | None = None,
) -> Pretrainer:
    """Build every piece from the configs and hand them to a :class:`Pretrainer`.

    Models are initialised from ``config.seed`` (a randomly initialised teacher is therefore the same in a
    resumed run). The method names the per-image sources it needs (superpixels computed with
    ``data_config.superpixels``, weak labels); a ``superpixels`` source given here replaces the default.
    """
    if not math.isfinite(config.lr):
        raise TrainingError(f"learning rate must be finite, got {config.lr}")
    dist = dist or DistContext()
    target = (
        dist.device
        if dist.is_distributed
        else torch.device(device or config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    )
    if config.sync_batchnorm and target.type != "cuda":
        raise ConfigError(
            f"pretrain.sync_batchnorm: true needs CUDA devices (SyncBatchNorm has no {target.type} / gloo "
            "implementation); set pretrain.sync_batchnorm: false or train on GPUs"
        )
    torch.manual_seed(config.seed)
    sources = method_class(config.method).dataset_sources(config, data_config)
    if superpixels is not None:
        sources["superpixels"] = superpixels
    dataset = PairedBagDataset(data_config, train=True, seed=config.seed, bags=bags, **sources)
    loader = make_pretrain_loader(
        dataset, seed=config.seed, shuffle=config.shuffle, drop_last=config.drop_last, dist=dist
    )
    if len(loader) == 0:
        raise TrainingError(
            f"{len(dataset)} frames make no full batch of {data_config.loader.batch_size} per process "
            f"x {dist.world_size} processes; lower `data.loader.batch_size` or set "
            "`pretrain.drop_last: false` (-s pretrain.drop_last=false)"
        )
    backbone = build_backbone(config.backbone)
    if config.sync_batchnorm and dist.is_distributed:
        backbone = nn.SyncBatchNorm.convert_sync_batchnorm(backbone)  # type: ignore[no-untyped-call,assignment]
    method = build_method(config, MethodSetup(student_dim=config.backbone.out_dim, voxels=data_config.voxels))
    optimizer = method.build_optimizer(method.parameter_groups(backbone))
    scheduler = build_scheduler(config, optimizer, len(loader))
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
        method=method,
        loader=loader,
        optimizer=optimizer,
        scheduler=scheduler,
        device=device,
        dist=dist,
        voxels=data_config.voxels,
    )


def _count_superpixels(batch: Mapping[str, Any]) -> int:
    """Distinct superpixels with a paired point in the batch (the SLidR anchors M); 0 without superpixels."""
    psp = batch.get("pairing_superpixels")
    if not isinstance(psp, torch.Tensor) or psp.numel() == 0:
        return 0
    return int(torch.unique(psp[psp >= 0]).numel())
