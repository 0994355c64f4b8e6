"""NCLR and OLIVINE in the trainer: they train what they own, resume bit-exactly, and their data paths
(the perturbed, re-voxelised cloud; weak labels through the augmentations) keep the pairs right."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from lidar_ssl_core.config import DataConfig, load_config
from lidar_ssl_core.data.dataset import PairedBagDataset, collate
from lidar_ssl_core.data.weak_labels import MaskFiles
from lidar_ssl_core.synth import preset
from lidar_ssl_core.synth.bagfile import write_synthetic_bag
from lidar_ssl_core.synth.config import nuscenes_rig
from lidar_ssl_core.synth.weak_masks import MaskNoise, write_weak_masks
from lidar_ssl_core.train import PretrainConfig, Pretrainer, build_pretraining
from lidar_ssl_core.train.methods import StepContext

SMALL_NCLR = {
    "image_layers": (1, 1, 1, 1),
    "fpn_dim": 16,
    "keypoints": 128,
    "num_pairs": 64,
    "fusion_ffn": 32,
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2-frame, 2-camera synthetic bag with noisy and exact weak-label masks beside it."""
    root = tmp_path_factory.mktemp("methods")
    cfg = preset("tiny", n_frames=2, image_width=160, image_height=96, seed=5, cameras=nuscenes_rig()[:2])
    bag = write_synthetic_bag(root / "bag", cfg)
    write_weak_masks(cfg, bag.name, root / "masks")
    write_weak_masks(cfg, bag.name, root / "exact", MaskNoise(0.0, 0.0, 0, 0.0))
    return {"bag": bag, "masks": root / "masks", "exact": root / "exact"}


def _data() -> DataConfig:
    overrides: dict[str, Any] = {
        "data.loader.batch_size": 1,
        "data.loader.num_workers": 0,
        "data.augment.crop_size": (96, 64),
        "data.augment.min_pairs": 20,
    }
    return load_config(overrides=overrides).data


def _build(world: dict[str, Path], run: Path, method: str, **overrides: Any) -> Pretrainer:
    config = PretrainConfig.model_validate(
        {
            "run_dir": run,
            "method": method,
            "epochs": 1,
            "checkpoint_every": 1,
            "backbone": {"preset": "tiny"},
            "teacher": {"arch": "filterbank"},
            "nclr": SMALL_NCLR,
            "olivine": {
                "mask_dir": world["masks"],
                "num_classes": 10,
                "num_matches": 128,
                "kl_warmup_steps": 1,
            },
            **overrides,
        }
    )
    return build_pretraining(config, _data(), bags=[world["bag"]], device="cpu")


def _state(trainer: Pretrainer) -> dict[str, torch.Tensor]:
    out = {f"backbone.{k}": v.clone() for k, v in trainer.backbone.state_dict().items()}
    out.update({f"method.{k}": v.clone() for k, v in trainer.method.state_dict().items()})
    return out


def _assert_resume_is_exact(world: dict[str, Path], tmp_path: Path, method: str) -> dict[str, float]:
    """2 steps straight vs. 1 step, a new process state, resume, 1 step: the same weights and method state."""
    full = _build(world, tmp_path / "full", method)
    before = _state(full)
    result = full.fit()
    assert result.finished and result.global_step == 2
    terms = dict(full.last_terms)
    first = _build(world, tmp_path / "cut", method)
    first.fit(max_steps=1)
    del first
    torch.manual_seed(99)
    resumed = _build(world, tmp_path / "cut", method)
    assert resumed.resume() and resumed.global_step == 1
    resumed.fit()
    assert result.losses[1:] == [pytest.approx(x, abs=0) for x in resumed_losses(resumed, result)]
    expected, got = _state(full), _state(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    changed = [k for k in before if k.startswith("method.") and not torch.equal(before[k], expected[k])]
    terms["changed_method_tensors"] = float(len(changed))
    return terms


def resumed_losses(resumed: Pretrainer, full: Any) -> list[float]:
    """The resumed run's losses (read back from its metrics, the trainer keeps only this call's)."""
    from lidar_ssl_core.train.scalars import read_metrics

    return [float(r["loss/train"]) for r in read_metrics(resumed.config.run_dir) if r["step"] >= 2]


def test_olivine_trains_its_heads_switches_on_the_kl_term_and_resumes_exactly(
    world: dict[str, Path], tmp_path: Path
) -> None:
    terms = _assert_resume_is_exact(world, tmp_path, "olivine")
    assert "vmf_kl" in terms and terms["labelled_pairs"] > 0.5  # the KL term is on after the 1-step warm-up
    assert terms["changed_method_tensors"] >= 5  # heads (2D sem, 3D pp/sem, teacher head) and statistics
    state = torch.load(tmp_path / "full" / "ckpt_last.pt", weights_only=True)
    assert int(state["method"]["statistics.seen"].max()) == 2  # the class statistics are checkpointed


def test_nclr_trains_the_image_branch_and_w_f_and_resumes_exactly(
    world: dict[str, Path], tmp_path: Path
) -> None:
    terms = _assert_resume_is_exact(world, tmp_path, "nclr")
    assert {"lta_infonce", "overlap", "pose"} <= terms.keys()
    assert terms["pose_images"] >= 1  # the ground-truth camera fit accepted the images
    assert terms["changed_method_tensors"] >= 10
    state = torch.load(tmp_path / "full" / "ckpt_last.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == pytest.approx(1e-3)  # AdamW, paper
    assert "w_param" in state["method"] and any(k.startswith("image_branch.") for k in state["method"])


def test_nclr_perturbation_is_rigid_keeps_the_pairs_and_stays_in_range(
    world: dict[str, Path], tmp_path: Path
) -> None:
    trainer = _build(world, tmp_path, "nclr")
    batch = next(iter(trainer.loader))
    moved = trainer.method.prepare_batch(dict(batch), StepContext(generator=torch.Generator().manual_seed(0)))
    theta, tx, ty = moved["nclr_perturbation"][0].tolist()
    assert abs(theta) <= torch.pi and abs(tx) <= 15.0 and abs(ty) <= 15.0
    a, b = batch["points"].double(), moved["points"].double()
    assert (
        float((torch.cdist(a[:50], a[50:100]) - torch.cdist(b[:50], b[50:100])).abs().max()) < 1e-3
    )  # rigid
    assert float((a - b).norm(dim=1).max()) > 1.0  # and it moved
    # every pair still names its own point, and its voxel holds that point
    pv, pp = moved["pairing_voxels"], moved["pairing_points"]
    assert torch.equal(moved["point_to_voxel"][pp], pv)
    assert moved["coords"].shape[0] == int(moved["point_to_voxel"].max()) + 1
    assert moved["features"].shape == (moved["coords"].shape[0], 1)


def test_weak_labels_ride_through_the_augmentations_with_their_pixels(world: dict[str, Path]) -> None:
    data = _data()
    dataset = PairedBagDataset(
        data, train=True, seed=3, bags=[world["bag"]], weak_labels=MaskFiles(world["exact"])
    )
    batch = collate([dataset[0], dataset[1]])
    labels, point_labels = batch["pairing_labels"], batch["labels"][batch["pairing_points"]]
    labelled = labels >= 0
    assert int(labelled.sum()) > 100
    agree = float((labels[labelled] == point_labels[labelled]).double().mean())
    assert agree > 0.85, agree  # exact masks: a pair's label is its point's class (edges and occlusion aside)
    assert batch["weak_labels"].shape[0] == batch["images"].shape[0]


@pytest.mark.parametrize("arch", ["dinov2", "filterbank"])
def test_olivine_sem_map_is_upsampled_like_the_teachers_pp_map(arch: str, tmp_path: Path) -> None:
    """With the sem head equal to the teacher's pp head, both per-pixel maps must be equal: ViT maps are
    upsampled at patch centres (align_corners=False), ResNet-like maps at the corners."""
    from test_dinov2 import reference

    from lidar_ssl_core.train.methods import MethodSetup, build_method

    teacher: dict[str, Any] = {"arch": arch, "out_dim": 8}
    if arch == "dinov2":
        reference(0, False, seed=3).save_pretrained(tmp_path / "hf")
        teacher["weights"] = tmp_path / "hf"
    config = PretrainConfig.model_validate(
        {"method": "olivine", "teacher": teacher, "olivine": {"mask_dir": tmp_path}}
    )
    method: Any = build_method(config, MethodSetup(student_dim=8))
    assert method.teacher.aligns_corners == (arch != "dinov2")
    method.sem_head_2d.load_state_dict(method.teacher.head.state_dict())
    images = torch.rand(1, 3, 50, 100, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = method.teacher(images)
        sem = method.semantic_map(out.backbone_features, images.shape[-2:], StepContext())
    assert sem.shape == out.pixel_features.shape == (1, 8, 50, 100)
    assert float((sem - out.pixel_features).abs().max()) < 1e-5


def test_nclr_pose_loss_joins_at_pose_start_and_is_logged_before(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """pose_start 0.5 of 2 epochs: epoch 0 trains L_f and L_o only (the pose still solved and logged),
    epoch 1 adds 0.2 L_p, as the authors' code adds it for the last epochs."""
    from lidar_ssl_core.train.scalars import read_metrics

    trainer = _build(world, tmp_path, "nclr", epochs=2, nclr={**SMALL_NCLR, "pose_start": 0.5})
    assert trainer.fit().global_step == 4
    rows = read_metrics(tmp_path)
    assert [r["loss/pose_on"] for r in rows] == [0.0, 0.0, 1.0, 1.0]
    for r in rows:
        assert r["loss/pose_images"] >= 1 and r["loss/pose"] > 0  # solved and logged in every step
        without_pose = r["loss/lta_infonce"] + 0.5 * r["loss/overlap"]
        expected = without_pose + 0.2 * r["loss/pose"] * r["loss/pose_on"]
        assert r["loss/train"] == pytest.approx(expected, rel=1e-5)
