"""Labelled LiDAR sweeps from bags, for semantic segmentation (fine-tuning, probing, evaluation).

Only the LiDAR topic is read: sweeps that carry the profile's per-point ``label`` field are the labelled
frames (nuScenes bags have it on keyframes only). Raw dataset ids are mapped to training ids by a
:class:`~lidar_ssl_core.downstream.classes.ClassMap`. The network input is built by
:func:`network_input`, the same function pretraining's collate follows and the live node uses: voxels of
the configured grid, each with the intensity of its representative (first) point.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset

from lidar_ssl_core.augment import flip_xy, rotate_z
from lidar_ssl_core.bag.discover import expand_bags
from lidar_ssl_core.bag.reader import BagReader
from lidar_ssl_core.config import DataConfig, VoxelConfig
from lidar_ssl_core.data.frames import ReaderPool
from lidar_ssl_core.downstream.classes import ClassMap
from lidar_ssl_core.errors import (
    ConfigError,
    DatasetError,
    LidarSslError,
    MalformedMessageError,
    MessageError,
)
from lidar_ssl_core.msg.pointcloud2 import cloud_to_pointcloud, pointcloud2_header_and_fields
from lidar_ssl_core.types import PointCloud
from lidar_ssl_core.voxels import Voxelization, voxelize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepRef:
    """Where one labelled sweep lies: its bag, topic and log time (the key for random access)."""

    bag: Path
    topic: str
    log_time_ns: int
    stamp_ns: int


@dataclass
class SweepIndex:
    """The labelled sweeps of some bags, and what was skipped while indexing them."""

    sweeps: list[SweepRef] = field(default_factory=list)
    unlabelled: Counter[str] = field(default_factory=Counter)  # per bag: sweeps without the label field
    bad: Counter[str] = field(default_factory=Counter)  # per bag: messages that could not be read

    def scenes(self) -> dict[str, int]:
        """Labelled sweeps per bag (a bag is a scene/sequence for label fractions)."""
        return dict(Counter(str(s.bag) for s in self.sweeps))


def index_labelled_sweeps(bags: Sequence[Path], config: DataConfig) -> SweepIndex:
    """One pass over each bag's LiDAR topic, keeping the sweeps that carry the label field.

    ``bags`` may hold folders of bags and quoted globs (:func:`~lidar_ssl_core.bag.discover.expand_bags`).
    Only each message's header and field list are parsed, so indexing costs a read of the topic, not a
    decode of every cloud. A message that cannot be read is counted and skipped, never fatal; a bag
    without the LiDAR topic is a ``TopicNotFoundError`` naming it.
    """
    topic, label_field = config.profile.lidar_topic, config.profile.label_field
    index = SweepIndex()
    for bag in expand_bags(bags):  # folders of bags and quoted globs stand for the bags they hold
        with BagReader(bag) as reader:
            # only the CDR prefix of each cloud is parsed (header + field list): no point data is decoded
            for message in reader.raw_messages([topic], on_error="skip"):
                try:
                    stamp, _, fields = pointcloud2_header_and_fields(message.raw)
                except MessageError as err:
                    index.bad[str(bag)] += 1
                    log.warning("%s: %s at log time %d: %s", bag, topic, message.log_time_ns, err)
                    continue
                if label_field in fields:
                    index.sweeps.append(SweepRef(Path(bag), topic, message.log_time_ns, stamp))
                else:
                    index.unlabelled[str(bag)] += 1
            index.bad[str(bag)] += reader.stats.n_skipped
    if not index.sweeps:
        raise DatasetError(
            f"no sweep on {topic} carries the '{label_field}' field in {[str(b) for b in bags]}; "
            "segmentation needs labelled bags (the converters write labels when the dataset has them)"
        )
    return index


@dataclass(frozen=True)
class NetworkInput:
    """One sweep as the network sees it: voxel cells and features, and the point -> voxel map."""

    coords: npt.NDArray[np.int32]  # (V, 3)
    features: npt.NDArray[np.float32]  # (V, 1) intensity of each voxel's representative point
    voxels: Voxelization


def network_input(
    xyz: npt.NDArray[np.floating], intensity: npt.NDArray[np.floating], voxels: VoxelConfig
) -> NetworkInput:
    """Voxelise a sweep exactly as pretraining does (so a pretrained backbone sees the same input)."""
    vox = voxelize(xyz, voxels)
    feats = np.asarray(intensity, np.float32)[vox.voxel_to_point, None]
    return NetworkInput(vox.coords, feats, vox)


@dataclass(frozen=True)
class LabelledSweep:
    """A sweep ready for collation: points, training labels (IGNORE_INDEX where unknown), network input."""

    xyz: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    inputs: NetworkInput
    source: str


class LabelledSweepDataset(Dataset["LabelledSweep | SkippedSweep"]):
    """Random access to labelled sweeps; training draws a z-rotation and x/y flips per (seed, epoch, item).

    In training a sweep that cannot be read is replaced by the next readable one (logged), like the
    pretraining dataset. In evaluation it is skipped and reported instead (a :class:`SkippedSweep`), so
    that no sweep is ever counted twice.
    """

    def __init__(
        self,
        sweeps: Sequence[SweepRef],
        config: DataConfig,
        class_map: ClassMap,
        *,
        train: bool,
        seed: int = 0,
    ) -> None:
        if not sweeps:
            raise DatasetError("the labelled dataset has no sweep (check the bags and the label fraction)")
        self.sweeps = list(sweeps)
        self.config = config
        self.class_map = class_map
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.readers = ReaderPool(capacity=8)

    def __len__(self) -> int:
        return len(self.sweeps)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def read(self, position: int) -> PointCloud:
        """The sweep at ``position`` as decoded (no augmentation)."""
        ref = self.sweeps[position]
        reader = self.readers.get(ref.bag)
        for message in reader.messages(
            [ref.topic], start_ns=ref.log_time_ns, stop_ns=ref.log_time_ns + 1, on_error="skip"
        ):
            try:
                return cloud_to_pointcloud(message.msg, label_field=self.config.profile.label_field)
            except MessageError as err:
                raise err.with_context(topic=ref.topic, stamp_ns=ref.stamp_ns) from err
            except Exception as err:  # a decoder defect must cost this sweep only, not the job
                raise MalformedMessageError(
                    f"sweep could not be decoded ({type(err).__name__}: {err})",
                    topic=ref.topic,
                    stamp_ns=ref.stamp_ns,
                ) from err
        raise DatasetError(f"{ref.bag}: sweep on {ref.topic} at log time {ref.log_time_ns} is unreadable")

    def __getitem__(self, position: int) -> LabelledSweep | SkippedSweep:
        if not self.train:
            try:
                return self._sample(position)
            except LidarSslError as err:
                log.warning("sweep %d (%s) skipped: %s", position, self.sweeps[position].bag.name, err)
                return SkippedSweep(self._source(position), str(err))
        last: LidarSslError | None = None
        for attempt in range(min(len(self), 8)):
            pos = (position + attempt) % len(self)
            try:
                return self._sample(pos)
            except LidarSslError as err:
                log.warning("sweep %d (%s) skipped: %s", pos, self.sweeps[pos].bag.name, err)
                last = err
        raise DatasetError(f"8 sweeps in a row from position {position} are unreadable; last: {last}")

    def _sample(self, position: int) -> LabelledSweep:
        cloud = self.read(position)
        if cloud.label is None:
            raise DatasetError(f"sweep {position} has no '{self.config.profile.label_field}' field")
        xyz = cloud.xyz
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, position])
            xyz = flip_xy(rotate_z(xyz, rng), rng)
        labels = self.class_map.remap(cloud.label)
        return LabelledSweep(
            xyz=np.asarray(xyz, np.float32),
            labels=labels,
            inputs=network_input(xyz, cloud.intensity, self.config.voxels),
            source=self._source(position),
        )

    def _source(self, position: int) -> str:
        ref = self.sweeps[position]
        return f"{ref.bag.name}@{ref.stamp_ns}"


@dataclass(frozen=True)
class SkippedSweep:
    """A sweep evaluation could not read (reported in the batch's ``skipped``, never counted)."""

    source: str
    reason: str


def collate_sweeps(items: Sequence[LabelledSweep | SkippedSweep]) -> dict[str, Any]:
    """Batch sweeps: ``coords`` (V, 4) [batch, c0, c1, c2], ``features`` (V, 1), ``point_to_voxel`` (N,)
    batch-global, ``labels`` (N,) per point, ``voxel_labels`` (V,) of each representative point,
    ``point_batch`` (N,), ``sources``, and ``skipped`` (sources of unreadable sweeps, left out)."""
    samples = [s for s in items if isinstance(s, LabelledSweep)]
    skipped = [f"{s.source}: {s.reason}" for s in items if isinstance(s, SkippedSweep)]
    if not samples:
        empty = torch.zeros(0, dtype=torch.int64)
        return {"sources": [], "skipped": skipped, "labels": empty, "point_to_voxel": empty}
    coords, feats, p2v, labels, vlabels, pbatch = [], [], [], [], [], []
    n_voxels = 0
    for b, s in enumerate(samples):
        vox = s.inputs.voxels
        coords.append(np.hstack([np.full((vox.num_voxels, 1), b, np.int32), s.inputs.coords]))
        feats.append(s.inputs.features)
        p2v.append(vox.point_to_voxel + n_voxels)
        labels.append(s.labels)
        vlabels.append(s.labels[vox.voxel_to_point])
        pbatch.append(np.full(len(s.labels), b, np.int64))
        n_voxels += vox.num_voxels
    return {
        "coords": torch.from_numpy(np.concatenate(coords)),
        "features": torch.from_numpy(np.concatenate(feats)),
        "point_to_voxel": torch.from_numpy(np.concatenate(p2v)),
        "labels": torch.from_numpy(np.concatenate(labels)),
        "voxel_labels": torch.from_numpy(np.concatenate(vlabels)),
        "point_batch": torch.from_numpy(np.concatenate(pbatch)),
        "sources": [s.source for s in samples],
        "skipped": skipped,
    }


#: share of labelled points a class map may leave out before it is suspected to be the wrong map
IGNORED_WARN, IGNORED_REFUSE = 0.5, 0.95


#: what to do about a wrong class map when it is a setting (probe, finetune)
SET_CLASS_MAP = (
    "set `downstream.class_map: NAME` (-s downstream.class_map=NAME; nuscenes, semantickitti, "
    "synthetic or a YAML file)"
)


def check_class_map(dataset: LabelledSweepDataset, n_sweeps: int = 3, remedy: str = SET_CLASS_MAP) -> float:
    """Share of the points of a few sweeps that the class map ignores; refuse an obviously wrong map.

    A map that ignores nearly every point (e.g. the synthetic map on SemanticKITTI ids) would train and
    score on a handful of points (a perfect mIoU on 4 points is not a result), so at 95 % it is a
    ``ConfigError`` naming the raw ids seen and ``remedy``; above 50 % a warning.
    """
    positions = np.unique(np.linspace(0, len(dataset) - 1, num=min(n_sweeps, len(dataset))).astype(int))
    raw_ids: list[npt.NDArray[np.int64]] = []
    for pos in positions:
        try:
            label = dataset.read(int(pos)).label
        except LidarSslError:
            continue
        if label is not None:
            raw_ids.append(np.asarray(label, np.int64))
    if not raw_ids:
        return 0.0
    raw = np.concatenate(raw_ids)
    ignored = (
        float((dataset.class_map.remap(raw) == dataset.class_map.ignore_index).mean()) if raw.size else 0.0
    )
    if ignored > IGNORED_WARN:
        ids, counts = np.unique(raw, return_counts=True)
        common = ", ".join(str(int(i)) for i in ids[np.argsort(-counts)][:8])
        message = (
            f"class map '{dataset.class_map.name}' ignores {100 * ignored:.1f}% of the labelled points "
            f"(most frequent raw ids: {common}); is it the dataset's map? {remedy}"
        )
        if ignored >= IGNORED_REFUSE:
            raise ConfigError(message)
        log.warning(message)
    return ignored
