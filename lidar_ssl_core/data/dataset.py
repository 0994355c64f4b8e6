"""A torch Dataset of paired point / pixel / superpixel samples over one or many bags.

Each bag is indexed once (:func:`index_bag`), frames are decoded on demand in the worker that needs
them, and the randomness of a sample depends only on (seed, epoch, position), so a run is reproducible
whatever the number of workers. A frame that cannot be decoded is logged and replaced by the next
one (the batch lists it under ``replaced``); a long job never dies for one bad message.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lidar_ssl_core.bag.discover import expand_bags
from lidar_ssl_core.config import DataConfig
from lidar_ssl_core.data.bag_index import BagIndex, index_bag
from lidar_ssl_core.data.frames import FrameLoader, ReaderPool
from lidar_ssl_core.data.sample import NO_LABEL, SuperpixelSource, TrainingSample, build_sample
from lidar_ssl_core.errors import DatasetError
from lidar_ssl_core.resources import default_bag

log = logging.getLogger(__name__)

MAX_REPLACEMENTS = 8


class PairedBagDataset(Dataset[TrainingSample]):
    """Training samples from bags in the project profile (``config.bags``, or the embedded sample)."""

    def __init__(
        self,
        config: DataConfig,
        *,
        train: bool = True,
        seed: int = 0,
        superpixels: SuperpixelSource | None = None,
        bags: Sequence[Path] | None = None,
        max_open_bags: int = 16,
        weak_labels: SuperpixelSource | None = None,
    ) -> None:
        # a folder of bags (a converter's output) or a quoted glob stands for the bags it holds
        paths = expand_bags(list(bags if bags is not None else config.bags) or [default_bag()])
        self.config = config
        self.train = train
        self.seed = seed
        # shared memory, so set_epoch reaches persistent DataLoader workers too
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()  # type: ignore[no-untyped-call]
        self.superpixels = superpixels
        self.weak_labels = weak_labels  # class masks per image (OLIVINE), e.g. data.weak_labels.MaskFiles
        self.indexes: list[BagIndex] = [index_bag(Path(p), config) for p in paths]
        self.readers = ReaderPool(max_open_bags)
        self.loaders = [
            FrameLoader(
                ix,
                image_scale=config.loader.image_scale,
                max_image_pixels=config.loader.max_image_pixels,
                label_field=config.profile.label_field,
                require_all_cameras=config.sync.require_all_cameras,
                readers=self.readers,
            )
            for ix in self.indexes
        ]
        self._positions = [(b, f) for b, ix in enumerate(self.indexes) for f in range(len(ix))]
        if not self._positions:
            raise DatasetError(f"no frame in {paths}")

    def __len__(self) -> int:
        return len(self._positions)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """New augmentations each epoch, still reproducible from (seed, epoch, position)."""
        self._epoch[0] = epoch

    def close(self) -> None:
        """Close the bags this process has open."""
        self.readers.close()

    def __getitem__(self, position: int) -> TrainingSample:
        if not 0 <= position < len(self):
            raise IndexError(f"sample {position} out of range 0..{len(self) - 1}")
        failed: list[str] = []
        last_error: Exception | None = None
        for attempt in range(MAX_REPLACEMENTS):
            pos = (position + attempt) % len(self)
            bag, frame_pos = self._positions[pos]
            bag_name = self.indexes[bag].path.name
            source = f"{bag_name}#{frame_pos}"
            try:
                frame = self.loaders[bag].load(frame_pos)
                rng = np.random.default_rng([self.seed, self.epoch, pos])
                sample = build_sample(
                    frame,
                    self.config,
                    rng,
                    train=self.train,
                    superpixels=self.superpixels,
                    source=source,
                    bag=bag_name,
                    weak_labels=self.weak_labels,
                )
            except Exception as err:  # one bad frame must not end a long job: replace it, report it
                log.warning("skipping frame %s (replaced by the next one): %s", source, err)
                failed.append(source)
                last_error = err
                continue
            return replace(sample, replaced=tuple(failed)) if failed else sample
        raise DatasetError(
            f"{MAX_REPLACEMENTS} consecutive frames could not be loaded ({', '.join(failed)}); last error: "
            f"{last_error}"
        ) from last_error


def collate(samples: Sequence[TrainingSample]) -> dict[str, Any]:
    """Batch samples into tensors with batch-global indices (what the models and losses consume).

    Keys: ``coords`` (V, 4) int32 [batch, c0, c1, c2]; ``features`` (V, 1) intensity of each voxel's
    representative point; ``point_to_voxel`` (N,); ``points`` (N, 3); ``point_batch`` (N,); ``labels``
    (N,) when every sample has them; ``images`` (I, 3, H, W) uint8; ``image_batch`` (I,);
    ``superpixels`` (I, H, W) with ids unique in the batch; ``pairing_points`` / ``pairing_voxels`` (M,);
    ``pairing_images`` (M, 3) [image, row, col]; ``pairing_superpixels`` (M,); ``cameras`` (I,) names;
    with weak labels: ``weak_labels`` (I, H, W) class ids and ``pairing_labels`` (M,), -1 = no label.
    """
    coords, feats, p2v, points, point_batch, labels = [], [], [], [], [], []
    images, image_batch, sps = [], [], []
    pair_pts, pair_vox, pair_img, pair_sp = [], [], [], []
    n_points = n_voxels = n_images = n_sp = 0
    for b, s in enumerate(samples):
        vox = s.voxels
        coords.append(np.hstack([np.full((vox.num_voxels, 1), b, np.int32), vox.coords]))
        feats.append(s.intensity[vox.voxel_to_point, None])
        p2v.append(vox.point_to_voxel + n_voxels)
        points.append(s.xyz)
        point_batch.append(np.full(len(s.xyz), b, np.int64))
        if s.labels is not None:
            labels.append(s.labels)
        images.append(s.images)
        image_batch.append(np.full(len(s.images), b, np.int64))
        pair_pts.append(s.pairs.point_index + n_points)
        pair_vox.append(s.pair_voxels + n_voxels)
        pair_img.append(np.column_stack([s.pairs.camera_index + n_images, s.pairs.pixel]))
        if s.superpixels is not None:
            # ids made unique per image: offset each image by the ids used before it
            per_image_max = s.superpixels.reshape(len(s.superpixels), -1).max(axis=1, initial=-1) + 1
            offsets = n_sp + np.concatenate([[0], np.cumsum(per_image_max)[:-1]]).astype(np.int64)
            sps.append(s.superpixels.astype(np.int64) + offsets[:, None, None])
            cam, px = s.pairs.camera_index, s.pairs.pixel
            pair_sp.append(s.superpixels[cam, px[:, 0], px[:, 1]].astype(np.int64) + offsets[cam])
            n_sp += int(per_image_max.sum())
        n_points += len(s.xyz)
        n_voxels += vox.num_voxels
        n_images += len(s.images)
    batch: dict[str, Any] = {
        "coords": torch.from_numpy(np.concatenate(coords)),
        "features": torch.from_numpy(np.concatenate(feats).astype(np.float32)),
        "point_to_voxel": torch.from_numpy(np.concatenate(p2v)),
        "points": torch.from_numpy(np.concatenate(points)),
        "point_batch": torch.from_numpy(np.concatenate(point_batch)),
        "images": torch.from_numpy(np.concatenate(images)).permute(0, 3, 1, 2).contiguous(),
        "image_batch": torch.from_numpy(np.concatenate(image_batch)),
        "pairing_points": torch.from_numpy(np.concatenate(pair_pts)),
        "pairing_voxels": torch.from_numpy(np.concatenate(pair_vox)),
        "pairing_images": torch.from_numpy(np.concatenate(pair_img)),
        "sources": [s.source for s in samples],
        "cameras": [c for s in samples for c in s.cameras],  # camera name of each image
        "replaced": [r for s in samples for r in s.replaced],  # frames that failed and were skipped
    }
    if len(labels) == len(samples):
        batch["labels"] = torch.from_numpy(np.concatenate(labels))
    weak = [s.weak_labels for s in samples if s.weak_labels is not None]
    if samples and len(weak) == len(samples):
        maps = torch.from_numpy(np.concatenate(weak).astype(np.int64))
        maps[maps == NO_LABEL] = -1
        img, rc = batch["pairing_images"][:, 0], batch["pairing_images"][:, 1:]
        batch["weak_labels"] = maps
        batch["pairing_labels"] = maps[img, rc[:, 0], rc[:, 1]]
    if len(sps) == len(samples):
        batch["superpixels"] = torch.from_numpy(np.concatenate(sps))
        batch["pairing_superpixels"] = torch.from_numpy(np.concatenate(pair_sp))
    return batch


def worker_init(worker_id: int) -> None:
    # workers decode and augment one sample each; the training process owns the cores' BLAS threads.
    # (cv2.setNumThreads is deliberately not called here: reconfiguring OpenCV's thread pool in a forked
    # child whose parent already used it deadlocks.)
    torch.set_num_threads(1)


def make_loader(dataset: PairedBagDataset, *, shuffle: bool, drop_last: bool = False) -> DataLoader[Any]:
    """DataLoader with the collate above; worker processes as set in ``data.loader``."""
    cfg = dataset.config.loader
    generator = torch.Generator()
    generator.manual_seed(dataset.seed)
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=shuffle,
        num_workers=cfg.num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        worker_init_fn=worker_init if cfg.num_workers > 0 else None,
        persistent_workers=cfg.num_workers > 0,
        generator=generator,
    )
