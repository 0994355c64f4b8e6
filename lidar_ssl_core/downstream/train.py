"""Linear probing and fine-tuning of a (pre)trained backbone for semantic segmentation, and evaluation.

The loss is computed on voxels (each voxel takes the label of its representative point, as the reference
code does); evaluation maps voxel predictions back to every original point and accumulates a confusion
matrix. Probing keeps the backbone in eval mode (frozen BatchNorm statistics) and runs it without
gradients, so a probe step costs one forward pass and a matmul.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lidar_ssl_core.config import DataConfig
from lidar_ssl_core.downstream.classes import IGNORE_INDEX, ClassMap
from lidar_ssl_core.downstream.config import PROTOCOL_LR_HEAD, DownstreamConfig, Mode, protocol_epochs
from lidar_ssl_core.downstream.data import LabelledSweepDataset, SweepRef, check_class_map, collate_sweeps
from lidar_ssl_core.downstream.lovasz import lovasz_softmax
from lidar_ssl_core.downstream.metrics import ConfusionMatrix, voxel_to_point
from lidar_ssl_core.downstream.model import (
    HEAD_PREFIX,
    SEGMENTATION_FORMAT,
    SEGMENTATION_REQUIRED,
    build_segmentation_model,
    load_pretrained_backbone,
    segmentation_state,
)
from lidar_ssl_core.downstream.splits import select_frames, select_scenes
from lidar_ssl_core.errors import DatasetError, LidarSslError
from lidar_ssl_core.models.unet import Res16UNet
from lidar_ssl_core.train.checkpoint import load_checkpoint, save_checkpoint
from lidar_ssl_core.train.pretrain import EpochBatchSampler

log = logging.getLogger(__name__)

LAST = "model_last.pt"


class SegmentationTrainingError(LidarSslError):
    """Segmentation training cannot go on (non-finite loss, nothing to train on)."""


def select_training_sweeps(
    sweeps: Sequence[SweepRef], fraction: float, seed: int, block_frames: int
) -> list[SweepRef]:
    """The label fraction, drawn by whole bags (scenes); with one bag, by blocks of consecutive sweeps.

    Scenes are keyed by the bag's *name*, so the same seed draws the same scenes wherever the dataset
    lives. A draw that overshoots the fraction by more than 2x (few, long bags: e.g. SemanticKITTI's
    sequences) is logged: split long bags into scenes, or use one bag and ``block_frames``.
    """
    if fraction >= 1.0:
        return list(sweeps)
    counts = Counter(s.bag.name for s in sweeps)
    if len(counts) > 1:
        if len({s.bag for s in sweeps}) != len(counts):
            raise DatasetError("two training bags have the same name: scenes are drawn by bag name")
        keep = set(select_scenes(sorted(counts), fraction, seed, frames_per_scene=dict(counts)))
        chosen = [s for s in sweeps if s.bag.name in keep]
    else:
        chosen = [sweeps[int(i)] for i in select_frames(len(sweeps), fraction, seed, block_frames)]
    achieved = len(chosen) / len(sweeps)
    if achieved > 2 * fraction:
        log.warning(
            "label fraction %.3g drew %d of %d sweeps (%.3g): the scenes are too long for this fraction",
            fraction,
            len(chosen),
            len(sweeps),
            achieved,
        )
    return chosen


def segmentation_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, lovasz: bool, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Cross-entropy (+ Lovasz-softmax, plain sum as the reference code) over labelled voxels."""
    ce = F.cross_entropy(logits, labels, ignore_index=ignore_index)
    if not lovasz:
        return ce
    return ce + lovasz_softmax(F.softmax(logits, dim=1), labels, ignore_index=ignore_index)


@dataclass(frozen=True)
class EpochStats:
    """One epoch of segmentation training."""

    epoch: int
    epochs: int
    loss: float
    lr_head: float
    seconds: float
    miou: float | None = None  # validation mIoU, when validated this epoch


@dataclass
class SegmentationResult:
    history: list[EpochStats] = field(default_factory=list)
    confusion: ConfusionMatrix | None = None


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate(
    network: Res16UNet, loader: DataLoader[Any], num_classes: int, device: torch.device
) -> ConfusionMatrix:
    """Point-wise confusion matrix of the network over a loader of labelled sweeps (eval mode)."""
    network.eval()
    cm = ConfusionMatrix(num_classes)
    skipped: list[str] = []
    for batch in loader:
        skipped += batch["skipped"]
        if not batch["sources"]:
            continue
        batch = _to(batch, device)
        logits = network(batch["coords"], batch["features"])
        cm.update(voxel_to_point(logits, batch["point_to_voxel"]), batch["labels"])
    if skipped:
        log.warning("evaluation skipped %d unreadable sweeps: %s", len(skipped), skipped[:5])
    return cm


class SegmentationTrainer:
    """Probe or fine-tune a backbone on labelled sweeps; checkpoints at every epoch end (atomic)."""

    def __init__(
        self,
        config: DownstreamConfig,
        data: DataConfig,
        class_map: ClassMap,
        mode: Mode,
        train_sweeps: Sequence[SweepRef],
        val_sweeps: Sequence[SweepRef] = (),
    ) -> None:
        self.config, self.data, self.class_map, self.mode = config, data, class_map, mode
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.manual_seed(config.seed)
        self.network = build_segmentation_model(config.backbone, class_map.num_classes)
        self.pretrained = (
            load_pretrained_backbone(self.network, config.pretrained, data.voxels)
            if config.pretrained is not None
            else None
        )
        if self.pretrained is None and mode == "probe":
            log.warning("linear probe of a randomly initialised backbone: the random-init baseline")
        self.network.to(self.device)
        self.train_set = LabelledSweepDataset(train_sweeps, data, class_map, train=True, seed=config.seed)
        check_class_map(self.train_set)
        self.val_set = LabelledSweepDataset(val_sweeps, data, class_map, train=False) if val_sweeps else None
        self.sampler = EpochBatchSampler(
            len(self.train_set), config.batch_size, seed=config.seed, shuffle=True, drop_last=False
        )
        self.loader: DataLoader[Any] = DataLoader(
            self.train_set,
            batch_sampler=self.sampler,
            num_workers=config.num_workers,
            collate_fn=collate_sweeps,
            persistent_workers=False,
        )
        self.epochs = config.epochs or protocol_epochs(mode, config.label_fraction)
        self.optimizer = torch.optim.SGD(
            self._param_groups(),
            momentum=config.momentum,
            dampening=config.dampening,
            weight_decay=config.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=self.epochs)
        self._cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.start_epoch = 0

    def _param_groups(self) -> list[dict[str, Any]]:
        cfg = self.config
        lr_head = cfg.lr_head if cfg.lr_head is not None else PROTOCOL_LR_HEAD[self.mode]
        head = [p for n, p in self.network.named_parameters() if n.startswith(HEAD_PREFIX)]
        body = [p for n, p in self.network.named_parameters() if not n.startswith(HEAD_PREFIX)]
        if self.mode == "probe":
            for p in body:
                p.requires_grad_(False)
            return [{"params": head, "lr": lr_head}]
        if self.pretrained is None:  # the paper: one learning rate for a randomly initialised network
            return [{"params": head + body, "lr": cfg.lr_backbone}]
        return [{"params": head, "lr": lr_head}, {"params": body, "lr": cfg.lr_backbone}]

    def _logits(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.mode == "probe":
            self.network.eval()  # frozen BatchNorm statistics
            with torch.no_grad():
                feats = self.network.trunk(batch["coords"], batch["features"])
            return self.network.head(feats)
        self.network.train()
        logits: torch.Tensor = self.network(batch["coords"], batch["features"])
        return logits

    @torch.no_grad()
    def _cache_features(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(features, voxel labels) of every training sweep through the frozen trunk, unaugmented."""
        plain = LabelledSweepDataset(self.train_set.sweeps, self.data, self.class_map, train=False)
        self.network.eval()
        cache = []
        for i in range(len(plain)):
            batch = collate_sweeps([plain[i]])
            if not batch["sources"]:
                continue  # unreadable: logged by the dataset
            batch = _to(batch, self.device)
            cache.append((self.network.trunk(batch["coords"], batch["features"]), batch["voxel_labels"]))
        log.info("probe: cached the features of %d sweeps", len(cache))
        return cache

    def _train_epoch_cached(self, epoch: int) -> float:
        if self._cache is None:
            self._cache = self._cache_features()
        order = np.random.default_rng([self.config.seed, epoch]).permutation(len(self._cache))
        losses = []
        for start in range(0, len(order), self.config.batch_size):
            chunk = [self._cache[int(i)] for i in order[start : start + self.config.batch_size]]
            feats = torch.cat([f for f, _ in chunk])
            labels = torch.cat([lab for _, lab in chunk])
            loss = segmentation_loss(self.network.head(feats), labels, lovasz=self.config.lovasz)
            self._step(loss, epoch, "cached features")
            losses.append(float(loss.detach()))
        self.scheduler.step()
        return float(np.mean(losses)) if losses else float("nan")

    def _step(self, loss: torch.Tensor, epoch: int, sources: object) -> None:
        if not torch.isfinite(loss):
            raise SegmentationTrainingError(
                f"non-finite loss at epoch {epoch + 1} (sweeps {sources}); lower the learning rate"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()

    def train_epoch(self, epoch: int) -> float:
        if self.mode == "probe" and self.config.probe_cache:
            return self._train_epoch_cached(epoch)
        self.train_set.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        losses = []
        for batch in self.loader:
            batch = _to(batch, self.device)
            loss = segmentation_loss(self._logits(batch), batch["voxel_labels"], lovasz=self.config.lovasz)
            self._step(loss, epoch, batch["sources"])
            losses.append(float(loss.detach()))
        self.scheduler.step()
        return float(np.mean(losses)) if losses else float("nan")

    def val_loader(self) -> DataLoader[Any]:
        if self.val_set is None:
            raise DatasetError("no validation sweeps were given")
        return DataLoader(
            self.val_set,
            batch_size=self.config.batch_size,
            num_workers=self.config.num_workers,
            collate_fn=collate_sweeps,
        )

    def fit(
        self, *, validate_every: int = 0, on_epoch: Callable[[EpochStats], None] | None = None
    ) -> SegmentationResult:
        """Train all epochs; validate every ``validate_every`` epochs (0: at the end only, if val sweeps)."""
        result = SegmentationResult()
        for epoch in range(self.start_epoch, self.epochs):
            start = time.perf_counter()
            lr = float(self.optimizer.param_groups[0]["lr"])
            loss = self.train_epoch(epoch)
            miou = None
            last = epoch + 1 == self.epochs
            if self.val_set is not None and (last or (validate_every and (epoch + 1) % validate_every == 0)):
                result.confusion = evaluate(
                    self.network, self.val_loader(), self.class_map.num_classes, self.device
                )
                miou = result.confusion.miou()
            stats = EpochStats(epoch, self.epochs, loss, lr, time.perf_counter() - start, miou)
            result.history.append(stats)
            log.info(
                "%s epoch %d/%d: loss %.4f%s",
                self.mode,
                epoch + 1,
                self.epochs,
                loss,
                f", val mIoU {100 * miou:.2f}" if miou is not None else "",
            )
            if on_epoch is not None:
                on_epoch(stats)
            self.save(epoch + 1)
        return result

    @property
    def checkpoint_path(self) -> Path:
        return self.config.run_dir / LAST

    def save(self, epoch: int, path: Path | None = None) -> Path:
        """The self-describing model checkpoint, plus what resuming needs (optimiser, schedule, epoch)."""
        state = segmentation_state(
            self.network,
            self.class_map,
            self.data.voxels,
            mode=self.mode,
            epoch=epoch,
            epochs=self.epochs,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            config=self.config.model_dump(mode="json"),
            pretrained_sha256=self.pretrained.sha256 if self.pretrained is not None else "",
        )
        return save_checkpoint(state, path or self.checkpoint_path)

    def _identity(self) -> dict[str, Any]:
        """What makes a checkpoint in ``run_dir`` this run's: resuming anything else would train (or
        report) another model under this run's name."""
        return {
            "mode": self.mode,
            "class map": self.class_map.name,
            "epochs": self.epochs,
            "backbone": self.network.config.model_dump(mode="json"),
            "voxels": self.data.voxels.model_dump(mode="json"),
            "pretrained": self.pretrained.sha256 if self.pretrained is not None else "",
        }

    def resume(self) -> bool:
        """Continue an interrupted run from ``run_dir/model_last.pt`` (written at every epoch end).

        Returns False (fresh start) when there is no checkpoint. A checkpoint of another mode, class map
        or schedule length is refused: that is another run, give it another ``run_dir``.
        """
        if not self.checkpoint_path.is_file():
            return False
        state = load_checkpoint(
            self.checkpoint_path, formats=(SEGMENTATION_FORMAT,), required=(*SEGMENTATION_REQUIRED, "epoch")
        )
        ours = self._identity()
        theirs = {
            "mode": state.get("mode"),
            "class map": state["class_map"].get("name"),
            "epochs": state.get("epochs"),
            "backbone": state.get("backbone"),
            "voxels": state.get("voxels"),
            "pretrained": state.get("pretrained_sha256"),
        }
        differ = [k for k in ours if ours[k] != theirs[k]]
        if "pretrained" in differ:  # say which backbone each run started from
            theirs["pretrained"] = _describe_init(
                state.get("config", {}).get("pretrained"), theirs["pretrained"]
            )
            ours["pretrained"] = _describe_init(self.config.pretrained, ours["pretrained"])
        if differ or "optimizer" not in state:
            what = (
                "; ".join(f"{k}: {theirs[k]} there, {ours[k]} here" for k in differ) or "no optimiser state"
            )
            raise SegmentationTrainingError(
                f"{self.checkpoint_path} belongs to another run ({what}); use another run_dir "
                "(--run-dir) or delete it"
            )
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch = int(state["epoch"])
        log.info("resumed %s from %s after epoch %d", self.mode, self.checkpoint_path, self.start_epoch)
        return True


def _describe_init(path: object, sha256: object) -> str:
    """How a downstream run's backbone was initialised, for an error message."""
    if not sha256:
        return "random initialisation" if sha256 == "" else "an unrecorded initialisation"
    return f"{path} (sha256 {str(sha256)[:12]})"
