"""Downstream training: labelled sweeps, probing and fine-tuning rules, weight transfer, and the CLI chain
pretrain -> probe -> evaluate -> segment on the embedded bag."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lidar_ssl_core.bag import BagReader
from lidar_ssl_core.cli import app
from lidar_ssl_core.config import DataConfig, load_config
from lidar_ssl_core.data.dataset import collate
from lidar_ssl_core.data.sample import build_sample
from lidar_ssl_core.downstream.classes import IGNORE_INDEX, SYNTHETIC
from lidar_ssl_core.downstream.config import DownstreamConfig, protocol_epochs
from lidar_ssl_core.downstream.data import (
    LabelledSweepDataset,
    SweepRef,
    collate_sweeps,
    index_labelled_sweeps,
    network_input,
)
from lidar_ssl_core.downstream.model import (
    build_segmentation_model,
    load_pretrained_backbone,
    load_segmentation_model,
)
from lidar_ssl_core.downstream.train import SegmentationTrainer, select_training_sweeps
from lidar_ssl_core.errors import ConfigError, DatasetError, LidarSslError
from lidar_ssl_core.models.unet import BackboneConfig
from lidar_ssl_core.msg import read_cloud
from lidar_ssl_core.resources import default_bag
from lidar_ssl_core.synth import preset
from lidar_ssl_core.synth.bagfile import write_synthetic_bag
from lidar_ssl_core.train import PretrainConfig, build_pretraining

runner = CliRunner()
TINY = BackboneConfig(preset="tiny", normalize=False, bn_momentum=0.02)


@pytest.fixture(scope="module")
def data() -> DataConfig:
    return load_config().data


@pytest.fixture(scope="module")
def sweeps(data: DataConfig) -> list[SweepRef]:
    return index_labelled_sweeps([default_bag()], data).sweeps


def _downstream(tmp_path: Path, **kw: Any) -> DownstreamConfig:
    base: dict[str, Any] = {
        "backbone": TINY,
        "epochs": 1,
        "num_workers": 0,
        "batch_size": 2,
        "run_dir": tmp_path,
    }
    return DownstreamConfig.model_validate({**base, **kw})


def test_labelled_sweeps_are_indexed_and_remapped_to_training_ids(
    data: DataConfig, sweeps: list[SweepRef]
) -> None:
    assert len(sweeps) == 16
    ds = LabelledSweepDataset(sweeps, data, SYNTHETIC, train=False)
    raw = ds.read(3).label
    assert raw is not None and set(np.unique(raw)) <= set(range(1, 10))  # synthetic ids, 0 never on points
    sample = ds[3]
    np.testing.assert_array_equal(sample.labels, raw - 1)  # synthetic map: raw 1..9 -> 0..8
    batch = collate_sweeps([ds[0], ds[1]])
    v0 = ds[0].inputs.voxels.num_voxels
    assert batch["coords"].shape[0] == v0 + ds[1].inputs.voxels.num_voxels
    assert int(batch["point_to_voxel"][len(ds[0].labels)]) >= v0  # indices are batch-global
    # voxel label = label of the voxel's representative point
    torch.testing.assert_close(
        batch["voxel_labels"][:v0], torch.from_numpy(ds[0].labels[ds[0].inputs.voxels.voxel_to_point])
    )


def test_downstream_input_is_exactly_the_pretraining_input(data: DataConfig) -> None:
    """A pretrained backbone must see the same voxels and features when it is probed or served."""
    from lidar_ssl_core.data.bag_index import index_bag
    from lidar_ssl_core.data.frames import FrameLoader

    frame = FrameLoader(index_bag(default_bag(), data)).load(0)
    sample = build_sample(frame, data, np.random.default_rng(0), train=False, superpixels=None)
    batch = collate([sample])
    inputs = network_input(sample.xyz, sample.intensity, data.voxels)
    np.testing.assert_array_equal(batch["coords"][:, 1:].numpy(), inputs.coords)
    np.testing.assert_array_equal(batch["features"].numpy(), inputs.features)


def test_a_bag_without_labels_is_a_clear_error(tmp_path: Path, data: DataConfig) -> None:
    bag = write_synthetic_bag(tmp_path / "bag", preset("tiny", n_frames=2, seed=1))
    unlabelled = data.model_copy(
        update={"profile": data.profile.model_copy(update={"label_field": "semantic"})}
    )
    with pytest.raises(DatasetError, match="'semantic' field"):
        index_labelled_sweeps([bag], unlabelled)


def test_label_fraction_takes_whole_bags_or_whole_blocks(sweeps: list[SweepRef]) -> None:
    # one bag: blocks of 4 consecutive sweeps act as scenes
    picked = select_training_sweeps(sweeps, 0.25, seed=0, block_frames=4)
    stamps = sorted(s.stamp_ns for s in picked)
    assert len(picked) == 4 and stamps == sorted(s.stamp_ns for s in sweeps if s.stamp_ns in stamps)
    positions = [sweeps.index(s) for s in picked]
    assert positions == list(range(positions[0], positions[0] + 4)) and positions[0] % 4 == 0
    assert select_training_sweeps(sweeps, 1.0, 0, 4) == sweeps
    # several bags: whole bags
    other = [SweepRef(Path("/b"), s.topic, s.log_time_ns, s.stamp_ns) for s in sweeps]
    picked = select_training_sweeps(sweeps + other, 0.5, seed=3, block_frames=4)
    assert len({s.bag for s in picked}) == 1 and len(picked) == 16


def test_probe_changes_only_the_head_and_never_the_batchnorm_statistics(
    tmp_path: Path, data: DataConfig, sweeps: list[SweepRef]
) -> None:
    trainer = SegmentationTrainer(_downstream(tmp_path), data, SYNTHETIC, "probe", sweeps[:4])
    before = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    trainer.fit()
    after = trainer.network.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"final.weight", "final.bias"}  # running means/vars included in "unchanged"
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.0]  # cosine to 0 after the last epoch
    assert trainer.optimizer.param_groups[0]["initial_lr"] == 0.05


def test_cached_probe_trains_the_same_head_parameters(
    tmp_path: Path, data: DataConfig, sweeps: list[SweepRef]
) -> None:
    trainer = SegmentationTrainer(
        _downstream(tmp_path, probe_cache=True, epochs=2), data, SYNTHETIC, "probe", sweeps[:4]
    )
    before = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    losses = [trainer.train_epoch(e) for e in range(2)]
    changed = {k for k, v in trainer.network.state_dict().items() if not torch.equal(before[k], v)}
    assert changed == {"final.weight", "final.bias"} and all(np.isfinite(losses))


def test_finetune_learning_rates_follow_the_protocol(
    tmp_path: Path, data: DataConfig, sweeps: list[SweepRef]
) -> None:
    ckpt = _pretrained_checkpoint(tmp_path / "pre", data)
    pretrained = SegmentationTrainer(
        _downstream(tmp_path, pretrained=ckpt), data, SYNTHETIC, "finetune", sweeps[:2]
    )
    assert [g["lr"] for g in pretrained.optimizer.param_groups] == [2.0, 0.02]  # head, backbone
    head = pretrained.optimizer.param_groups[0]["params"]
    assert {id(p) for p in head} == {id(pretrained.network.final.weight), id(pretrained.network.final.bias)}
    random = SegmentationTrainer(_downstream(tmp_path), data, SYNTHETIC, "finetune", sweeps[:2])
    assert [g["lr"] for g in random.optimizer.param_groups] == [0.02]  # one lr for a random network
    assert protocol_epochs("finetune", 0.01) == 100 and protocol_epochs("finetune", 0.1) == 50
    assert protocol_epochs("probe", 0.01) == 50


def _pretrained_checkpoint(run: Path, data: DataConfig) -> Path:
    cfg = PretrainConfig.model_validate(
        {"run_dir": run, "backbone": {"preset": "tiny"}, "teacher": {"arch": "filterbank"}, "epochs": 1}
    )
    trainer = build_pretraining(
        cfg, data.model_copy(update={"loader": data.loader.model_copy(update={"num_workers": 0})})
    )
    saved = trainer.save()
    assert saved is not None
    return saved


def test_pretrained_backbone_transfers_everything_but_the_head(tmp_path: Path, data: DataConfig) -> None:
    ckpt = _pretrained_checkpoint(tmp_path, data)
    state = torch.load(ckpt, weights_only=True)
    model = build_segmentation_model(TINY, SYNTHETIC.num_classes)
    head_before = model.final.weight.clone()
    loaded = load_pretrained_backbone(model, ckpt, data.voxels)
    own = model.state_dict()
    assert loaded.kind == "pretraining" and loaded.skipped_head == 2
    assert all(torch.equal(own[k], v) for k, v in state["backbone"].items() if not k.startswith("final."))
    assert torch.equal(model.final.weight, head_before)  # new head (9 classes, not the 64-d projection)

    small = build_segmentation_model(BackboneConfig(preset="small", normalize=False), SYNTHETIC.num_classes)
    with pytest.raises(ConfigError, match="does not fit the 'small' backbone"):
        load_pretrained_backbone(small, ckpt)
    other_grid = data.voxels.model_copy(update={"size": (0.2, 1.0, 0.2)})
    with pytest.raises(ConfigError, match="same grid"):
        load_pretrained_backbone(model, ckpt, other_grid)


@pytest.mark.slow
def test_cli_chain_pretrain_probe_evaluate_segment(tmp_path: Path) -> None:
    """The whole downstream chain through the CLI ends with a finite mIoU and a segmented bag."""
    bag = write_synthetic_bag(
        tmp_path / "bag", preset("tiny", n_frames=4, image_width=192, image_height=108, seed=2)
    )
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "data:\n  loader:\n    num_workers: 0\n    batch_size: 2\n"
        "  augment:\n    crop_size: [96, 64]\n    min_pairs: 20\n  superpixels:\n    n_segments: 12\n"
        "pretrain:\n  epochs: 1\n  backbone:\n    preset: tiny\n  teacher:\n    arch: filterbank\n"
        "downstream:\n  num_workers: 0\n  backbone:\n    preset: tiny\n"
    )
    pre, probe, seg = tmp_path / "pre", tmp_path / "probe", tmp_path / "seg"
    steps = [
        "pretrain",
        "-c",
        str(cfg),
        "--run-dir",
        str(pre),
        "--max-steps",
        "2",
        "--method",
        "slidr",
        "--no-progress",
    ]
    result = runner.invoke(app, steps)
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        ["probe", "-c", str(cfg), "--pretrained", str(pre / "ckpt_last.pt"), "--epochs", "1",
         "--run-dir", str(probe), "--bags", str(bag), "--val-bags", str(bag)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    model = probe / "model_last.pt"
    result = runner.invoke(
        app,
        ["evaluate", "--model", str(model), "--bags", str(bag), "--out", str(tmp_path / "eval")],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert 0.0 <= report["miou"] <= 1.0 and (tmp_path / "eval" / "eval_iou.png").stat().st_size > 0
    assert "| road |" in result.output  # the per-class table is printed
    assert f"**{100 * report['miou']:.1f}**" in result.output  # with the same mIoU as the JSON report

    result = runner.invoke(app, ["segment", "--model", str(model), "--bag", str(bag), "--out", str(seg)])
    assert result.exit_code == 0, result.output
    seg_model = load_segmentation_model(model, "cpu")
    with BagReader(seg) as reader:
        msgs = list(reader.messages(["/lidar/segmentation"]))
        assert len(msgs) == 4
        cloud = read_cloud(msgs[0].msg, reshape_organized=False)
        labels = cloud["label"].astype(np.int64)
        assert set(np.unique(labels)) <= set(range(SYNTHETIC.num_classes)) | {IGNORE_INDEX}
        xyz = np.stack([cloud["x"], cloud["y"], cloud["z"]], 1)
        finite = np.isfinite(xyz).all(1)
        expected = seg_model.predict(xyz[finite], cloud["intensity"][finite])
        np.testing.assert_array_equal(labels[finite], expected)  # the bag holds the model's predictions


def test_setting_one_backbone_key_keeps_the_downstream_defaults() -> None:
    cfg = load_config(overrides={"downstream.backbone.preset": "small"}).downstream
    assert cfg.backbone.preset == "small" and cfg.backbone.bn_momentum == 0.02 and not cfg.backbone.normalize


def test_fraction_draw_is_by_bag_name_and_warns_when_scenes_are_too_long(
    sweeps: list[SweepRef], caplog: pytest.LogCaptureFixture
) -> None:
    here = [SweepRef(Path("/data/x") / f"scene-{i}", "/l", i, i) for i in range(6) for _ in range(2)]
    there = [SweepRef(Path("/mnt/y") / s.bag.name, s.topic, s.log_time_ns, s.stamp_ns) for s in here]
    a = select_training_sweeps(here, 0.3, seed=1, block_frames=4)
    b = select_training_sweeps(there, 0.3, seed=1, block_frames=4)
    assert [s.bag.name for s in a] == [s.bag.name for s in b]  # same scenes wherever the data lives
    with caplog.at_level("WARNING"):
        select_training_sweeps(here[:4], 0.1, seed=1, block_frames=4)  # 2 scenes: at least 50 % drawn
    assert "too long for this fraction" in caplog.text


def test_an_interrupted_finetune_resumes_after_its_last_epoch(
    tmp_path: Path, data: DataConfig, sweeps: list[SweepRef]
) -> None:
    full = SegmentationTrainer(_downstream(tmp_path / "a", epochs=2), data, SYNTHETIC, "finetune", sweeps[:2])
    full.fit()
    cut = SegmentationTrainer(_downstream(tmp_path / "b", epochs=2), data, SYNTHETIC, "finetune", sweeps[:2])
    cut.train_epoch(0)
    cut.save(1)  # what fit() writes at the end of epoch 1; then the process dies
    again = SegmentationTrainer(
        _downstream(tmp_path / "b", epochs=2), data, SYNTHETIC, "finetune", sweeps[:2]
    )
    assert again.resume() and again.start_epoch == 1
    again.fit()
    for k, v in full.network.state_dict().items():
        torch.testing.assert_close(again.network.state_dict()[k], v, msg=k)
    other = SegmentationTrainer(
        _downstream(tmp_path / "b", epochs=3), data, SYNTHETIC, "finetune", sweeps[:2]
    )
    with pytest.raises(LidarSslError, match="belongs to another run"):
        other.resume()


def test_a_run_dir_holding_another_backbone_or_initialisation_is_never_resumed(
    tmp_path: Path, data: DataConfig, sweeps: list[SweepRef]
) -> None:
    """A random-init baseline must not pick up a pretrained probe left in the same run_dir (it would
    report the pretrained model as the baseline), nor another architecture (a clear error, no
    state_dict traceback)."""
    ckpt = _pretrained_checkpoint(tmp_path / "pre", data)
    run = tmp_path / "probe"
    pretrained = SegmentationTrainer(_downstream(run, pretrained=ckpt), data, SYNTHETIC, "probe", sweeps[:2])
    pretrained.fit()
    baseline = SegmentationTrainer(_downstream(run), data, SYNTHETIC, "probe", sweeps[:2])
    with pytest.raises(LidarSslError, match=r"pretrained: .*pre.* there, random initialisation here"):
        baseline.resume()
    small = SegmentationTrainer(
        _downstream(run, pretrained=None, backbone=TINY.model_copy(update={"preset": "small"})),
        data,
        SYNTHETIC,
        "probe",
        sweeps[:2],
    )
    with pytest.raises(LidarSslError, match=r"belongs to another run .*backbone"):
        small.resume()
    again = SegmentationTrainer(_downstream(run, pretrained=ckpt), data, SYNTHETIC, "probe", sweeps[:2])
    assert again.resume()  # the same run resumes


def test_evaluation_skips_an_unreadable_sweep_instead_of_counting_another_twice(
    tmp_path: Path, data: DataConfig, sweeps: list[SweepRef]
) -> None:
    bad = SweepRef(sweeps[0].bag, sweeps[0].topic, sweeps[0].log_time_ns + 1, 0)  # no message there
    ds = LabelledSweepDataset([sweeps[0], bad], data, SYNTHETIC, train=False)
    batch = collate_sweeps([ds[0], ds[1]])
    assert batch["sources"] == [ds[0].source] and len(batch["skipped"]) == 1  # type: ignore[union-attr]
    model = build_segmentation_model(TINY, SYNTHETIC.num_classes)
    from torch.utils.data import DataLoader

    from lidar_ssl_core.downstream.train import evaluate

    cm = evaluate(model, DataLoader(ds, batch_size=2, collate_fn=collate_sweeps), 9, torch.device("cpu"))
    assert cm.total == int((ds[0].labels != IGNORE_INDEX).sum())  # type: ignore[union-attr]


def test_a_folder_of_bags_stands_for_the_bags_inside(tmp_path: Path, data: DataConfig) -> None:
    """A converter's output folder (one bag per scene) can be given as one path."""
    for name, seed in (("scene-a", 1), ("scene-b", 2)):
        write_synthetic_bag(tmp_path / "out" / name, preset("tiny", n_frames=2, seed=seed))
    index = index_labelled_sweeps([tmp_path / "out"], data)
    assert sorted({s.bag.name for s in index.sweeps}) == ["scene-a", "scene-b"] and len(index.sweeps) == 4
    assert index.scenes() == {str(tmp_path / "out" / "scene-a"): 2, str(tmp_path / "out" / "scene-b"): 2}


def test_a_class_map_that_ignores_nearly_every_point_is_refused(
    data: DataConfig, sweeps: list[SweepRef]
) -> None:
    """The wrong map would train and score on a handful of points (a 'perfect' mIoU on 4 points)."""
    from lidar_ssl_core.downstream.classes import SEMANTICKITTI
    from lidar_ssl_core.downstream.data import check_class_map

    assert check_class_map(LabelledSweepDataset(sweeps, data, SYNTHETIC, train=False)) == 0.0
    wrong = LabelledSweepDataset(sweeps, data, SEMANTICKITTI, train=False)
    with pytest.raises(ConfigError, match=r"class map 'semantickitti' ignores 100.0% .*downstream.class_map"):
        check_class_map(wrong)
