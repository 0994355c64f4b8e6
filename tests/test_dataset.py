"""The data path end to end: synthetic bag -> index -> frames -> samples -> batches, and its bad inputs."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lidar_ssl_core.bag.reader import BagReader
from lidar_ssl_core.bag.writer import BagWriter
from lidar_ssl_core.config import DataConfig, load_config
from lidar_ssl_core.data.bag_index import index_bag
from lidar_ssl_core.data.dataset import PairedBagDataset, collate, make_loader
from lidar_ssl_core.data.frames import FrameLoader
from lidar_ssl_core.errors import CalibrationError, DatasetError, TopicNotFoundError
from lidar_ssl_core.superpixels import Superpixelizer
from lidar_ssl_core.synth import generate_world, preset, simulate
from lidar_ssl_core.synth.bagfile import write_synthetic_bag

N_FRAMES = 4


def _config(**overrides: Any) -> DataConfig:
    return load_config(overrides={f"data.{k}": v for k, v in overrides.items()}).data


@pytest.fixture(scope="module")
def synth_cfg() -> Any:
    return preset("tiny", n_frames=N_FRAMES, image_width=240, image_height=135, seed=3)


@pytest.fixture(scope="module")
def synth_bag(tmp_path_factory: pytest.TempPathFactory, synth_cfg: Any) -> Path:
    return write_synthetic_bag(tmp_path_factory.mktemp("bags") / "tiny", synth_cfg)


def _copy_bag(src: Path, dst: Path, edit: Any) -> Path:
    """Copy a bag message by message; ``edit(topic, msg, writer)`` returns the message to write or None."""
    with BagReader(src) as reader, BagWriter(dst) as writer:
        for topic, msgtype in reader.topics.items():
            writer.add_topic(topic, msgtype, latched=topic == "/tf_static")
        for m in reader.messages():
            msg = edit(m.topic, m.msg, writer)
            if msg is not None:
                writer.write(m.topic, m.log_time_ns, msg)
    return dst


def test_index_finds_every_camera_and_frame(synth_bag: Path, synth_cfg: Any) -> None:
    index = index_bag(synth_bag, _config())
    assert index.report.cameras == tuple(sorted(synth_cfg.camera_names))
    assert len(index) == N_FRAMES
    assert index.report.bad_messages == {}
    assert all(len(f.views) == len(synth_cfg.cameras) for f in index.frames)
    assert index.lidar_frame == "lidar_top"


def test_pairs_land_on_pixels_of_the_same_class(synth_bag: Path, synth_cfg: Any) -> None:
    """Sync + calibration + ego-motion compensation put LiDAR points on image pixels of their own class."""
    truth = list(simulate(generate_world(synth_cfg), synth_cfg))
    agreement = {}
    for compensate in (True, False):
        cfg = _config(**{"projection.ego_motion_compensation": compensate})
        loader = FrameLoader(index_bag(synth_bag, cfg))
        hits = total = 0
        for pos in range(len(loader)):
            frame = loader.load(pos)
            gt = truth[pos]
            assert frame.cloud.stamp_ns == gt.stamp_ns
            pairs = frame.project(1.0)
            for c, name in enumerate(frame.cameras):
                sel = pairs.camera_index == c
                semantic = gt.cameras[name].semantic
                rows, cols = pairs.pixel[sel].T
                labels = frame.cloud.label[pairs.point_index[sel]]
                hits += int(np.count_nonzero(semantic[rows, cols] == labels))
                total += int(sel.sum())
        agreement[compensate] = hits / total
    assert total > 1000
    assert agreement[True] > 0.9
    # measured 0.94 vs 0.92 on this drive: compensation must visibly help, not merely not hurt
    assert agreement[True] - agreement[False] > 0.01, agreement


def test_samples_are_consistent_and_batch(synth_bag: Path) -> None:
    cfg = _config(**{"superpixels.n_segments": 40, "augment.min_pairs": 50})
    dataset = PairedBagDataset(cfg, bags=[synth_bag], superpixels=Superpixelizer(cfg.superpixels))
    sample = dataset[1]
    n = len(sample.xyz)
    assert sample.images.shape[1:] == (224, 416, 3)
    assert sample.superpixels is not None and sample.superpixels.shape == sample.images.shape[:3]
    assert len(sample.pairs) > 100
    assert sample.pairs.point_index.max() < n
    assert (sample.pairs.pixel >= 0).all()
    assert (sample.pairs.pixel[:, 0] < 224).all() and (sample.pairs.pixel[:, 1] < 416).all()
    assert sample.voxels.point_to_voxel.shape == (n,)
    assert sample.labels is not None and sample.labels.shape == (n,)

    batch = collate([dataset[0], dataset[1]])
    V, N, M = len(batch["coords"]), len(batch["points"]), len(batch["pairing_points"])
    assert batch["coords"].shape == (V, 4) and set(batch["coords"][:, 0].tolist()) == {0, 1}
    assert batch["features"].shape == (V, 1)
    assert batch["point_to_voxel"].max() < V and batch["pairing_voxels"].max() < V
    assert batch["pairing_points"].max() < N
    assert torch.equal(batch["point_to_voxel"][batch["pairing_points"]], batch["pairing_voxels"])
    img, row, col = batch["pairing_images"].T
    assert torch.equal(batch["superpixels"][img, row, col], batch["pairing_superpixels"])
    # superpixel ids are unique across the images of the batch
    ids_per_image = [set(torch.unique(sp).tolist()) for sp in batch["superpixels"]]
    assert sum(len(s) for s in ids_per_image) == len(set().union(*ids_per_image))
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape[1] == 3
    assert len(batch["pairing_superpixels"]) == M


def test_same_samples_with_and_without_worker_processes(synth_bag: Path) -> None:
    cfg0 = _config(**{"loader.num_workers": 0, "loader.batch_size": 2})
    cfg2 = _config(**{"loader.num_workers": 2, "loader.batch_size": 2})
    batches = []
    for cfg in (cfg0, cfg2):
        loader = make_loader(PairedBagDataset(cfg, bags=[synth_bag], seed=5), shuffle=False)
        batches.append(list(loader))
    for a, b in zip(*batches, strict=True):
        assert torch.equal(a["points"], b["points"])
        assert torch.equal(a["pairing_images"], b["pairing_images"])
        assert torch.equal(a["images"], b["images"])


def test_epochs_change_augmentations_reproducibly(synth_bag: Path) -> None:
    dataset = PairedBagDataset(_config(), bags=[synth_bag], seed=1)
    first = dataset[0].xyz
    assert np.array_equal(first, dataset[0].xyz)
    dataset.set_epoch(1)
    assert not np.array_equal(first, dataset[0].xyz)


def test_set_epoch_reaches_persistent_workers(synth_bag: Path) -> None:
    cfg = _config(**{"loader.num_workers": 1, "loader.batch_size": 1})
    dataset = PairedBagDataset(cfg, bags=[synth_bag], seed=1)
    loader = make_loader(dataset, shuffle=False)
    epoch0 = next(iter(loader))["points"]
    dataset.set_epoch(1)
    epoch1 = next(iter(loader))["points"]
    assert not torch.equal(epoch0, epoch1)
    dataset.set_epoch(0)
    assert torch.equal(epoch0, next(iter(loader))["points"])


def test_dataset_pickles_for_spawned_workers(synth_bag: Path) -> None:
    dataset = PairedBagDataset(_config(), bags=[synth_bag], seed=2)
    sample = dataset[2]
    dataset[0]  # opens a reader, which must not travel
    clone = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(clone[2].xyz, sample.xyz)
    np.testing.assert_array_equal(clone[2].images, sample.images)
    dataset.close()


def test_out_of_range_is_index_error(synth_bag: Path) -> None:
    dataset = PairedBagDataset(_config(), bags=[synth_bag])
    with pytest.raises(IndexError):
        dataset[len(dataset)]
    assert len(list(iter(dataset))) == len(dataset)  # plain iteration ends


def test_many_bags_make_one_dataset_without_superpixel_collisions(synth_bag: Path, tmp_path: Path) -> None:
    other = write_synthetic_bag(
        tmp_path / "other", preset("tiny", n_frames=2, image_width=240, image_height=135, seed=9)
    )
    keys: list[str] = []

    class Recorder:
        def __call__(self, rgb: np.ndarray, *, camera: str, stamp_ns: int) -> np.ndarray:
            keys.append(f"{camera}@{stamp_ns}")
            return np.zeros(rgb.shape[:2], np.int32)

    dataset = PairedBagDataset(_config(), bags=[synth_bag, other], superpixels=Recorder())
    assert len(dataset) == N_FRAMES + 2
    sources = {dataset[i].source.split("#")[0] for i in range(len(dataset))}
    assert sources == {"tiny", "other"}
    # both drives start at the same stamp: keys must still differ by bag
    assert len(keys) == len(set(keys))
    assert {k.split("/")[0] for k in keys} == {"tiny", "other"}


def test_frame_with_no_decodable_image_is_replaced_and_reported(synth_bag: Path, tmp_path: Path) -> None:
    seen: dict[str, int] = {}

    def break_second_frame_images(topic: str, msg: Any, writer: BagWriter) -> Any:
        if topic.endswith("/image/compressed"):
            seen[topic] = seen.get(topic, 0) + 1
            if seen[topic] == 2:  # keep the JPEG header (indexing passes), cut the entropy-coded data
                msg.data = np.ascontiguousarray(msg.data[:700])
        return msg

    bag = _copy_bag(synth_bag, tmp_path / "bad_images", break_second_frame_images)
    dataset = PairedBagDataset(_config(), bags=[bag])
    assert len(dataset) == N_FRAMES
    sample = dataset[1]
    assert sample.replaced == ("bad_images#1",)
    assert sample.source == "bad_images#2"
    batch = collate([dataset[0], sample])
    assert batch["replaced"] == ["bad_images#1"]


def test_require_all_cameras_ignores_uncalibrated_ones(synth_bag: Path, tmp_path: Path) -> None:
    bag = _copy_bag(
        synth_bag, tmp_path / "no_info", lambda t, m, w: None if t == "/cameras/back/camera_info" else m
    )
    index = index_bag(bag, _config(**{"sync.require_all_cameras": True}))
    assert len(index) == N_FRAMES
    assert all(len(f.views) == 5 for f in index.frames)


def test_malformed_sweep_is_skipped_and_counted(synth_bag: Path, tmp_path: Path) -> None:
    stamps: list[int] = []

    def corrupt_second_sweep(topic: str, msg: Any, writer: BagWriter) -> Any:
        if topic == "/lidar/points":
            stamps.append(msg.header.stamp.sec)
            if len(stamps) == 2:
                msg.point_step = 7  # smaller than the fields need
        return msg

    bag = _copy_bag(synth_bag, tmp_path / "bad_sweep", corrupt_second_sweep)
    index = index_bag(bag, _config())
    assert len(index) == N_FRAMES - 1
    assert sum(n for k, n in index.report.bad_messages.items() if k.startswith("/lidar/points")) == 1


def test_camera_without_camera_info_is_left_out_by_name(synth_bag: Path, tmp_path: Path) -> None:
    bag = _copy_bag(
        synth_bag, tmp_path / "no_info", lambda t, m, w: None if t == "/cameras/front/camera_info" else m
    )
    index = index_bag(bag, _config())
    assert "front" in index.report.uncalibrated
    assert "CameraInfo" in index.report.uncalibrated["front"]
    assert all(v.camera != "front" for f in index.frames for v in f.views)
    assert len(index) == N_FRAMES


def test_no_calibration_at_all_is_a_clear_error(synth_bag: Path, tmp_path: Path) -> None:
    bag = _copy_bag(synth_bag, tmp_path / "no_tf_static", lambda t, m, w: None if t == "/tf_static" else m)
    with pytest.raises(CalibrationError, match="lidar_top"):
        index_bag(bag, _config())


def test_wrong_lidar_topic_lists_candidates(synth_bag: Path) -> None:
    with pytest.raises(TopicNotFoundError, match="/lidar/points"):
        index_bag(synth_bag, _config(**{"profile.lidar_topic": "/velodyne_points"}))


def test_unknown_camera_is_named(synth_bag: Path) -> None:
    with pytest.raises(DatasetError, match="nonexistent"):
        index_bag(synth_bag, _config(**{"profile.cameras": ["front", "nonexistent"]}))


def test_truncated_bag_still_gives_the_frames_before_the_damage(synth_bag: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "cut"
    damaged.mkdir()
    (mcap,) = synth_bag.glob("*.mcap")
    data = mcap.read_bytes()
    (damaged / mcap.name).write_bytes(data[: int(len(data) * 0.7)])
    index = index_bag(damaged, _config())
    assert 1 <= len(index) < N_FRAMES
    frame = FrameLoader(index).load(0)
    assert len(frame.cloud) > 1000 and len(frame.images) == 6
