"""Frozen 2D teacher: torchvision-compatible ResNet-50, checkpoint layouts, frozenness, shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from lidar_ssl_core.errors import ConfigError, LidarSslError
from lidar_ssl_core.models import (
    CheckpointError,
    ImageTeacher,
    TeacherConfig,
    load_backbone_weights,
    resnet50,
)
from lidar_ssl_core.models.checkpoints import detect_layout
from lidar_ssl_core.models.image_teacher import FrozenTeacherError
from lidar_ssl_core.models.resnet import Bottleneck, ResNet

H, W = 64, 112  # multiple of 4 (dilated) ; strided tests use 64 x 128 (multiple of 32)


@pytest.fixture(scope="module")
def source_sd() -> dict[str, torch.Tensor]:
    """A torchvision-layout ResNet-50 state dict (with fc) whose every tensor is distinctive."""
    torch.manual_seed(0)
    sd = resnet50(include_fc=True).state_dict()
    gen = torch.Generator().manual_seed(1)
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            value.fill_(7)
        elif key.endswith("running_var"):
            value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
        elif (
            (value.is_floating_point() and not key.endswith(".weight"))
            or ".bn" in key
            or "downsample.1" in key
        ):
            value.copy_(torch.randn(value.shape, generator=gen) * 0.1)
    return {k: v.clone() for k, v in sd.items()}


def _backbone(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def _prefixed(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def _decoy(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Same names, wrong values: parts of a checkpoint that must not be loaded (a few keys, to stay small)."""
    return {k: torch.zeros_like(sd[k]) for k in ("conv1.weight", "bn1.weight", "layer4.2.bn3.running_var")}


def _assert_loaded(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    expected = _backbone(sd)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def _layouts(sd: dict[str, torch.Tensor]) -> dict[str, tuple[Any, str, dict[str, Any]]]:
    bb = _backbone(sd)
    mlp = {
        "fc.0.weight": torch.randn(16, 2048),
        "fc.0.bias": torch.randn(16),
        "fc.2.weight": torch.randn(8, 16),
    }
    return {
        "torchvision_with_fc": (dict(sd), "torchvision", {}),
        "dino_backbone_only": (dict(bb), "torchvision", {}),
        "ddp_state_dict": ({"state_dict": _prefixed(bb, "module.")}, "torchvision", {}),
        "moco_v2": (
            {
                "epoch": 800,
                "arch": "resnet50",
                "state_dict": {
                    **_prefixed({**bb, **mlp}, "module.encoder_q."),
                    **_prefixed({**_decoy(bb), **mlp}, "module.encoder_k."),
                    "module.queue": torch.randn(128, 16),
                    "module.queue_ptr": torch.zeros(1, dtype=torch.long),
                },
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.03, "params": [0, 1]}]},
            },
            "moco",
            {},
        ),
        "swav": (
            {
                **_prefixed(bb, "module."),
                "module.projection_head.0.weight": torch.randn(16, 2048),
                "module.prototypes.weight": torch.randn(3000, 128),
            },
            "swav",
            {},
        ),
        "swav_in_state_dict": (
            {"state_dict": {**_prefixed(bb, "module."), "module.prototypes.weight": torch.randn(30, 8)}},
            "swav",
            {},
        ),
        "dino_full_teacher": (
            {
                "teacher": {**_prefixed(bb, "backbone."), "head.mlp.0.weight": torch.randn(4, 4)},
                "student": _prefixed(_decoy(bb), "module.backbone."),
                "epoch": 100,
            },
            "dino",
            {},
        ),
        "dino_full_student": (
            {
                "teacher": _prefixed(_decoy(bb), "backbone."),
                "student": {
                    **_prefixed(bb, "module.backbone."),
                    "module.head.last_layer.weight": torch.randn(4),
                },
            },
            "dino",
            {"container": "student"},
        ),
        "obow_network": ({"network": dict(bb), "epoch": 199}, "obow", {}),
        "obow_generic_prefix": (
            {"network": _prefixed(bb, "_feature_extractor.")},
            "obow",
            {"prefix": "_feature_extractor."},
        ),
        "densecl": (
            {
                "state_dict": {
                    **_prefixed(bb, "backbone."),
                    "neck.mlp.0.weight": torch.randn(8, 8),
                    "head.weight": torch.randn(2),
                }
            },
            "densecl",
            {},
        ),
    }


def test_resnet50_is_torchvision_layout() -> None:
    """Parameter count and dilation pattern of torchvision's resnet50 / replace_stride_with_dilation."""
    full = resnet50(include_fc=True)
    assert sum(p.numel() for p in full.parameters()) == 25_557_032  # torchvision resnet50
    assert len(full.state_dict()) == 320
    assert {"layer4.2.bn3.running_var", "layer1.0.downsample.0.weight", "layer2.0.downsample.1.bias"} <= set(
        full.state_dict()
    )
    net = resnet50(dilated=True)
    assert "fc.weight" not in net.state_dict() and net.output_stride == 4
    stages = [
        [b for b in layer.modules() if isinstance(b, Bottleneck)]
        for layer in (net.layer2, net.layer3, net.layer4)
    ]
    assert [[b.conv2.dilation[0] for b in st] for st in stages] == [
        [1, 2, 2, 2],
        [2, 4, 4, 4, 4, 4],
        [4, 8, 8],
    ]
    assert all(
        m.stride == (1, 1) for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m is not net.conv1
    )
    plain = resnet50()
    strides = [m.conv2.stride[0] for m in plain.modules() if isinstance(m, Bottleneck)]
    assert plain.output_stride == 32 and strides == [1] * 3 + [2, 1, 1, 1] + [2] + [1] * 5 + [2, 1, 1]


@pytest.fixture(scope="module")
def target() -> ResNet:
    return resnet50(dilated=True)


def _wiped(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for value in model.state_dict().values():
            value.zero_()
    return model


@pytest.mark.parametrize(
    ("case", "check_explicit"),
    [
        ("torchvision_with_fc", False),
        ("dino_backbone_only", False),
        ("ddp_state_dict", False),
        ("moco_v2", True),
        ("swav", False),
        ("swav_in_state_dict", False),
        ("dino_full_teacher", True),
        ("dino_full_student", False),
        ("obow_network", False),
        ("obow_generic_prefix", False),
        ("densecl", True),
    ],
)
def test_checkpoint_layouts_load_exactly(
    case: str,
    check_explicit: bool,
    source_sd: dict[str, torch.Tensor],
    target: ResNet,
    tmp_path: Path,
) -> None:
    obj, expected_layout, overrides = _layouts(source_sd)[case]
    path = tmp_path / f"{case}.pth.tar"
    torch.save(obj, path)
    weights = load_backbone_weights(_wiped(target), path, **overrides)
    assert weights.layout == expected_layout
    _assert_loaded(target, source_sd)
    if check_explicit:  # the explicit layout gives the same result as auto-detection
        load_backbone_weights(_wiped(target), path, layout=expected_layout, **overrides)  # type: ignore[arg-type]
        _assert_loaded(target, source_sd)


def test_old_checkpoint_without_bn_counters_loads(
    source_sd: dict[str, torch.Tensor], target: ResNet, tmp_path: Path
) -> None:
    sd = {k: v for k, v in _backbone(source_sd).items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": _prefixed(sd, "module.encoder_q.")}, tmp_path / "old.pth")
    model = _wiped(target)
    load_backbone_weights(model, tmp_path / "old.pth")
    for key, value in sd.items():
        assert torch.equal(model.state_dict()[key], value)


def test_missing_unexpected_and_misshaped_keys_are_named(
    source_sd: dict[str, torch.Tensor], target: ResNet, tmp_path: Path
) -> None:
    bb = _backbone(source_sd)
    missing = {k: v for k, v in bb.items() if k != "layer3.2.conv2.weight"}
    torch.save({"state_dict": _prefixed(missing, "module.encoder_q.")}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing\.pth.*1 missing key\(s\): layer3\.2\.conv2\.weight"):
        load_backbone_weights(target, tmp_path / "missing.pth")

    extra = {**bb, "layer5.0.conv1.weight": torch.zeros(1), "bogus": torch.zeros(1)}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(
        CheckpointError, match=r"extra\.pth.*2 unexpected key\(s\): bogus, layer5\.0\.conv1\.weight"
    ):
        load_backbone_weights(target, tmp_path / "extra.pth")

    shaped = {**bb, "conv1.weight": torch.zeros(64, 3, 3, 3)}
    torch.save(shaped, tmp_path / "shape.pth")
    with pytest.raises(
        CheckpointError, match=r"shape\.pth.*conv1\.weight \(64, 3, 3, 3\) vs \(64, 3, 7, 7\)"
    ):
        load_backbone_weights(target, tmp_path / "shape.pth")

    # Forcing the wrong layout on a MoCo file leaves encoder_k/queue keys: unexpected, not silently loaded.
    torch.save(_layouts(source_sd)["moco_v2"][0], tmp_path / "moco.pth")
    with pytest.raises(CheckpointError, match=r"moco\.pth.*unexpected key\(s\): encoder_k\."):
        load_backbone_weights(target, tmp_path / "moco.pth", layout="swav")
    with pytest.raises(CheckpointError, match=r"moco\.pth.*no key starts with prefix 'nope\.'"):
        load_backbone_weights(target, tmp_path / "moco.pth", prefix="nope.")
    # A failed load leaves the model untouched.
    model = target
    before = model.conv1.weight.clone()
    with pytest.raises(CheckpointError):
        load_backbone_weights(model, tmp_path / "missing.pth")
    assert torch.equal(model.conv1.weight, before)


class _Evil:
    """Unpickling this would run code; weights_only loading must refuse it."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (print, ("pwned",))


def test_weights_only_refuses_arbitrary_objects(
    source_sd: dict[str, torch.Tensor],
    target: ResNet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _backbone(source_sd), "extra": _Evil()}, path)
    capsys.readouterr()
    with pytest.raises(CheckpointError, match=r"evil\.pth.*weights_only"):
        load_backbone_weights(target, path)
    assert "pwned" not in capsys.readouterr().out


def test_torch_load_called_safely(
    source_sd: dict[str, torch.Tensor],
    target: ResNet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[dict[str, Any]] = []
    real_load = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    torch.save(_backbone(source_sd), tmp_path / "tv.pth")
    load_backbone_weights(target, tmp_path / "tv.pth")
    assert calls == [{"map_location": "cpu", "weights_only": True}]


def test_not_a_checkpoint_is_named(target: ResNet, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes\.txt is not a readable PyTorch checkpoint"):
        load_backbone_weights(target, text)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"list\.pth is not a checkpoint"):
        load_backbone_weights(target, tmp_path / "list.pth")
    torch.save({"epoch": 3, "arch": "resnet50"}, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match=r"meta\.pth is not a checkpoint"):
        load_backbone_weights(target, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match=r"absent\.pth does not exist"):
        load_backbone_weights(target, tmp_path / "absent.pth")
    assert issubclass(CheckpointError, ConfigError) and issubclass(CheckpointError, LidarSslError)


def test_detect_layout() -> None:
    t = torch.zeros(1)
    assert detect_layout({"conv1.weight": t}) == "torchvision"
    assert detect_layout({"state_dict": {"module.encoder_q.conv1.weight": t}}) == "moco"
    assert detect_layout({"module.prototypes.weight": t, "module.conv1.weight": t}) == "swav"
    assert detect_layout({"teacher": {"backbone.conv1.weight": t}}) == "dino"
    assert detect_layout({"network": {"conv1.weight": t}}) == "obow"
    assert detect_layout({"state_dict": {"backbone.conv1.weight": t}}) == "densecl"


@pytest.fixture(scope="module")
def teacher() -> ImageTeacher:
    torch.manual_seed(0)
    return ImageTeacher(TeacherConfig(form="dilated"))


def _images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (b, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def test_dilated_shapes_norm_and_reference_head(teacher: ImageTeacher) -> None:
    teacher.eval()
    x = _images(1, H, W)
    out = teacher(x)
    assert teacher.output_stride == 4
    assert out.backbone_features.shape == (1, 2048, H // 4, W // 4)
    assert out.pixel_features.shape == (1, 64, H, W)
    norms = out.pixel_features.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    # Same as the reference head: Conv1x1 -> Upsample(x4, bilinear, align_corners=True) -> l2.
    ref = F.normalize(
        F.interpolate(
            teacher.head(out.backbone_features), scale_factor=4, mode="bilinear", align_corners=True
        ),
        dim=1,
    )
    assert torch.allclose(out.pixel_features, ref, atol=1e-6)
    # Determinism: same input, same output, bit for bit; uint8 and float [0, 1] inputs agree.
    x = _images(1, 32, 48, seed=3)
    out = teacher(x)
    again = teacher(x)
    assert torch.equal(again.pixel_features, out.pixel_features)
    assert torch.equal(again.backbone_features, out.backbone_features)
    as_float = teacher(x.float() / 255.0)
    assert torch.allclose(as_float.pixel_features, out.pixel_features, atol=1e-6)


def test_strided_form_shapes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    strided = ImageTeacher(TeacherConfig(form="strided", out_dim=32))
    assert strided.output_stride == 32
    out = strided(_images(1, 64, 128))
    assert out.backbone_features.shape == (1, 2048, 2, 4)
    assert out.pixel_features.shape == (1, 32, 64, 128)
    assert torch.allclose(out.pixel_features.norm(dim=1), torch.ones(1, 64, 128), atol=1e-5)


def test_frozen_backbone_gets_no_grads_and_keeps_bn_stats(teacher: ImageTeacher) -> None:
    teacher.train()
    assert teacher.training and teacher.head.training
    assert not any(m.training for m in teacher.backbone.modules())
    stats = {k: v.clone() for k, v in teacher.backbone.state_dict().items()}
    teacher.head.zero_grad(set_to_none=True)
    for seed in range(2):
        out = teacher(_images(1, 32, 48, seed=seed))
        (out.pixel_features[:, 0].sum() + out.pixel_features.std()).backward()
    assert not out.backbone_features.requires_grad
    assert all(p.grad is None and not p.requires_grad for p in teacher.backbone.parameters())
    assert teacher.head.weight.grad is not None and teacher.head.weight.grad.abs().sum() > 0
    for key, value in teacher.backbone.state_dict().items():
        assert torch.equal(value, stats[key]), key  # running stats and counters untouched
    assert [id(p) for p in teacher.trainable_parameters()] == [id(p) for p in teacher.head.parameters()]
    teacher.eval()
    assert not teacher.training and not teacher.head.training


def test_tampering_with_frozenness_is_refused(teacher: ImageTeacher) -> None:
    x = _images(1, 32, 32)
    teacher.backbone.train()
    with pytest.raises(FrozenTeacherError, match="train mode"):
        teacher(x)
    teacher.train(False)  # the teacher's own train/eval restores the backbone's eval mode
    teacher.backbone.conv1.weight.requires_grad_(True)
    with pytest.raises(FrozenTeacherError, match="requires_grad"):
        teacher(x)
    teacher.backbone.requires_grad_(False)
    teacher(x)


def test_bad_inputs_and_config(
    source_sd: dict[str, torch.Tensor], tmp_path: Path, teacher: ImageTeacher
) -> None:
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        teacher(torch.full((1, 3, 8, 8), 2.0))
    with pytest.raises(ConfigError, match="RGB"):
        teacher(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ConfigError, match="student feature size 96"):
        ImageTeacher(TeacherConfig(), student_dim=96)
    with pytest.raises(ValidationError):
        TeacherConfig(weights=tmp_path / "absent.pth")
    with pytest.raises(ValidationError):
        TeacherConfig(form="dilatd")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        TeacherConfig(out_dims=64)  # type: ignore[call-arg]


def test_teacher_loads_weights_from_config(source_sd: dict[str, torch.Tensor], tmp_path: Path) -> None:
    path = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    torch.save(_layouts(source_sd)["moco_v2"][0], path)
    cfg = TeacherConfig(weights=path, layout="moco", form="strided")
    t = ImageTeacher(cfg, student_dim=64)
    _assert_loaded(t.backbone, source_sd)
    assert set(t.state_dict()) == {f"backbone.{k}" for k in _backbone(source_sd)} | {
        "head.weight",
        "head.bias",
    }
