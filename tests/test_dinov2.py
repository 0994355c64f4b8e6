"""DINOv2 teachers: both weight layouts load into transformers and give the reference's features exactly.

The reference is transformers' ``Dinov2Model`` / ``Dinov2WithRegistersModel`` run directly on the same
weights.
The official layout is written from it by an inverse key mapping transcribed here independently of the
loader (qkv and SwiGLU w12 concatenated, LayerScale ``gamma``). Small random ViTs keep it fast; the exact
official names and shapes of every released size are checked on the meta device, and a full random ViT-S/14
in the official layout is loaded strictly. Nothing is downloaded (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from lidar_ssl_core.models import ImageTeacher, TeacherConfig
from lidar_ssl_core.models.checkpoints import CheckpointError
from lidar_ssl_core.models.dinov2 import (
    OFFICIAL_SIZES,
    build_model,
    load_dinov2,
    official_size_config,
    official_to_hf,
)

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def small_config(registers: int, swiglu: bool) -> Any:
    common: dict[str, Any] = {
        "hidden_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "image_size": 70,
        "patch_size": 14,
        "layer_norm_eps": 1e-6,
        "use_swiglu_ffn": swiglu,
    }
    if registers:
        return transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **common)
    return transformers.Dinov2Config(**common)


def reference(registers: int, swiglu: bool, seed: int = 0) -> Any:
    """A transformers DINOv2 with distinctive random weights (LayerScale and norms not at their init)."""
    torch.manual_seed(seed)
    model = build_model(small_config(registers, swiglu))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lambda1" in name or "norm" in name or name.endswith("bias") or "token" in name:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith("weight") else 0.0))
    return model


def to_official(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers keys -> the official release's keys (inverse mapping, written independently)."""
    out: dict[str, torch.Tensor] = {
        "cls_token": sd["embeddings.cls_token"],
        "mask_token": sd["embeddings.mask_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    if "embeddings.register_tokens" in sd:
        out["register_tokens"] = sd["embeddings.register_tokens"]
    depth = len({k.split(".")[2] for k in sd if k.startswith("encoder.layer.")})
    for i in range(depth):
        s, d = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[d + f"norm1.{kind}"] = sd[s + f"norm1.{kind}"]
            out[d + f"norm2.{kind}"] = sd[s + f"norm2.{kind}"]
            out[d + f"attn.qkv.{kind}"] = torch.cat(
                [sd[s + f"attention.{n}_proj.{kind}"] for n in ("q", "k", "v")], dim=0
            )
            out[d + f"attn.proj.{kind}"] = sd[s + f"attention.o_proj.{kind}"]
            if s + "mlp.gate_proj.weight" in sd:
                out[d + f"mlp.w12.{kind}"] = torch.cat(
                    [sd[s + f"mlp.gate_proj.{kind}"], sd[s + f"mlp.up_proj.{kind}"]], dim=0
                )
                out[d + f"mlp.w3.{kind}"] = sd[s + f"mlp.down_proj.{kind}"]
            else:
                out[d + f"mlp.fc1.{kind}"] = sd[s + f"mlp.fc1.{kind}"]
                out[d + f"mlp.fc2.{kind}"] = sd[s + f"mlp.fc2.{kind}"]
        out[d + "ls1.gamma"] = sd[s + "layer_scale1.lambda1"]
        out[d + "ls2.gamma"] = sd[s + "layer_scale2.lambda1"]
    return {k: v.clone() for k, v in out.items()}


def reference_maps(model: Any, x: torch.Tensor, layers: tuple[int, ...], final_norm: bool) -> torch.Tensor:
    """Patch maps (B, C, h, w) from transformers' own forward (hidden_states / last_hidden_state)."""
    regs = int(getattr(model.config, "num_register_tokens", 0))
    b, _, height, width = x.shape
    maps = []
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
        for i in layers:
            tokens = out.hidden_states[i if i < 0 else i + 1]
            if final_norm:
                tokens = out.last_hidden_state if i == -1 else model.layernorm(tokens)
            maps.append(tokens[:, 1 + regs :].reshape(b, height // 14, width // 14, -1))
    return torch.cat(maps, -1).permute(0, 3, 1, 2)


def normalised(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (images - mean) / std


VARIANTS = [(0, False), (4, False), (0, True), (4, True)]


@pytest.mark.parametrize(("registers", "swiglu"), VARIANTS)
def test_both_layouts_give_the_reference_features(registers: int, swiglu: bool, tmp_path: Path) -> None:
    ref = reference(registers, swiglu)
    folder = tmp_path / "hf"
    ref.save_pretrained(folder)  # config.json + model.safetensors
    assert (folder / "model.safetensors").is_file()
    official = tmp_path / "official.pth"
    torch.save(to_official(ref.state_dict()), official)
    reloaded = type(ref).from_pretrained(folder, local_files_only=True).eval()  # transformers' own loader

    images = torch.rand(2, 3, 42, 70)
    expected = reference_maps(ref, normalised(images), (-1,), True)
    assert torch.equal(reference_maps(reloaded, normalised(images), (-1,), True), expected)
    for path in (folder, official):
        teacher = ImageTeacher(TeacherConfig(arch="dinov2", weights=path, out_dim=16))
        out = teacher(images)
        diff = float((out.backbone_features - expected).abs().max())
        assert diff == 0.0, (path.name, diff)
        assert out.pixel_features.shape == (2, 16, 42, 70)
        assert teacher.output_stride == 14


def test_intermediate_layers_and_pre_norm_features(tmp_path: Path) -> None:
    ref = reference(4, False, seed=1)
    path = tmp_path / "w.pth"
    torch.save(to_official(ref.state_dict()), path)
    images = torch.rand(1, 3, 28, 56)
    for layers, final_norm in (((0, -1), True), ((1, 2), False), ((-2,), True)):
        cfg = TeacherConfig(arch="dinov2", weights=path, layers=layers, final_norm=final_norm)
        feats = ImageTeacher(cfg)(images).backbone_features
        expected = reference_maps(ref, normalised(images), layers, final_norm)
        assert feats.shape == (1, 128 * len(layers), 2, 4)
        assert float((feats - expected).abs().max()) == 0.0, (layers, final_norm)


def test_training_checkpoint_and_legacy_hf_names(tmp_path: Path) -> None:
    """DINOv2 training checkpoints (teacher/backbone., chunked blocks) and transformers 4.x key names."""
    ref = reference(0, True, seed=2)
    images = torch.rand(1, 3, 28, 28)
    expected = reference_maps(ref, normalised(images), (-1,), True)
    official = to_official(ref.state_dict())
    chunked = {
        (
            "backbone." + k.replace("blocks.", "blocks.0.", 1) if k.startswith("blocks.") else "backbone." + k
        ): v
        for k, v in official.items()
    }
    chunked["dino_head.mlp.0.weight"] = torch.zeros(4, 4)
    torch.save({"teacher": chunked, "iteration": torch.tensor(7)}, tmp_path / "train.pth")
    legacy: dict[str, torch.Tensor] = {}
    for k, v in ref.state_dict().items():
        k = k.replace("attention.q_proj", "attention.attention.query")
        k = k.replace("attention.k_proj", "attention.attention.key")
        k = k.replace("attention.v_proj", "attention.attention.value")
        k = k.replace("attention.o_proj", "attention.output.dense").replace(
            "mlp.down_proj", "mlp.weights_out"
        )
        if "mlp.up_proj" in k:
            continue
        if "mlp.gate_proj" in k:
            up = ref.state_dict()[k.replace("gate_proj", "up_proj")]
            k, v = k.replace("mlp.gate_proj", "mlp.weights_in"), torch.cat([v, up], 0)
        legacy["dinov2." + k] = v.clone()
    legacy["classifier.weight"] = torch.zeros(3, 256)
    from safetensors.torch import save_file

    save_file(legacy, str(tmp_path / "legacy.safetensors"))
    for name in ("train.pth", "legacy.safetensors"):
        feats = ImageTeacher(TeacherConfig(arch="dinov2", weights=tmp_path / name))(images).backbone_features
        assert float((feats - expected).abs().max()) == 0.0, name


OFFICIAL_BLOCK_SHAPES = {
    "norm1.weight": ("D",),
    "norm1.bias": ("D",),
    "attn.qkv.weight": ("3D", "D"),
    "attn.qkv.bias": ("3D",),
    "attn.proj.weight": ("D", "D"),
    "attn.proj.bias": ("D",),
    "ls1.gamma": ("D",),
    "norm2.weight": ("D",),
    "norm2.bias": ("D",),
    "ls2.gamma": ("D",),
}


def official_keys(size: str, registers: int) -> dict[str, tuple[int, ...]]:
    """The released checkpoint's names and shapes (dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth)."""
    width, depth, swiglu = OFFICIAL_SIZES[size]
    dims = {"D": width, "3D": 3 * width, "4D": 4 * width, "H": 4096, "2H": 8192}
    keys: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, width),
        "pos_embed": (1, 1 + 37 * 37, width),
        "mask_token": (1, width),
        "patch_embed.proj.weight": (width, 3, 14, 14),
        "patch_embed.proj.bias": (width,),
        "norm.weight": (width,),
        "norm.bias": (width,),
    }
    if registers:
        keys["register_tokens"] = (1, registers, width)
    mlp = (
        {
            "mlp.w12.weight": ("2H", "D"),
            "mlp.w12.bias": ("2H",),
            "mlp.w3.weight": ("D", "H"),
            "mlp.w3.bias": ("D",),
        }
        if swiglu
        else {
            "mlp.fc1.weight": ("4D", "D"),
            "mlp.fc1.bias": ("4D",),
            "mlp.fc2.weight": ("D", "4D"),
            "mlp.fc2.bias": ("D",),
        }
    )
    for i in range(depth):
        for name, shape in {**OFFICIAL_BLOCK_SHAPES, **mlp}.items():
            keys[f"blocks.{i}.{name}"] = tuple(dims[s] for s in shape)
    return keys


@pytest.mark.parametrize("registers", [0, 4])
@pytest.mark.parametrize("size", ["s", "b", "l", "g"])
def test_every_official_key_maps_onto_transformers(size: str, registers: int) -> None:
    """All released sizes, on the meta device: every official tensor lands on a model tensor of its shape."""
    keys = official_keys(size, registers)
    sd = {k: torch.empty(shape, device="meta") for k, shape in keys.items()}
    converted = official_to_hf(sd)
    with torch.device("meta"):
        model = build_model(official_size_config(size, registers))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected


def test_real_vit_s_official_layout_loads_strictly(tmp_path: Path) -> None:
    """A random ViT-S/14 with the exact official names and shapes is consumed completely and runs."""
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(shape, generator=gen) * 0.02 for k, shape in official_keys("s", 0).items()}
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(sd, path)
    model = load_dinov2(path)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.num_attention_heads) == (
        384,
        12,
        6,
    )
    assert model.config.image_size == 518 and model.config.patch_size == 14
    loaded = model.state_dict()
    assert torch.equal(
        loaded["encoder.layer.11.attention.v_proj.weight"], sd["blocks.11.attn.qkv.weight"][768:]
    )
    assert torch.equal(loaded["encoder.layer.3.layer_scale2.lambda1"], sd["blocks.3.ls2.gamma"])
    teacher = ImageTeacher(TeacherConfig(arch="dinov2", weights=path))
    out = teacher(torch.rand(1, 3, 30, 60))  # resized to 28 x 56 for the ViT
    assert out.backbone_features.shape == (1, 384, 2, 4)
    assert out.pixel_features.shape == (1, 64, 30, 60)


def test_frozen_resize_and_head_upsampling(tmp_path: Path) -> None:
    ref = reference(0, False, seed=3)
    ref.save_pretrained(tmp_path / "hf")
    teacher = ImageTeacher(TeacherConfig(arch="dinov2", weights=tmp_path / "hf", out_dim=8))
    assert teacher.vit_input_size(50, 100) == (56, 98)
    assert [id(p) for p in teacher.trainable_parameters()] == [id(p) for p in teacher.head.parameters()]
    teacher.train()
    images = torch.rand(2, 3, 50, 100)
    out = teacher(images)
    resized = F.interpolate(normalised(images), size=(56, 98), mode="bilinear", antialias=True)
    assert float((out.backbone_features - reference_maps(ref, resized, (-1,), True)).abs().max()) == 0.0
    expected = F.normalize(
        F.interpolate(teacher.head(out.backbone_features), size=(50, 100), mode="bilinear"), dim=1
    )
    assert float((out.pixel_features - expected).abs().max().detach()) < 1e-6
    out.pixel_features.sum().backward()
    assert all(p.grad is None for p in teacher.backbone.parameters())
    assert teacher.head.weight.grad is not None
    assert not any(m.training for m in teacher.backbone.modules())
    fixed = ImageTeacher(TeacherConfig(arch="dinov2", weights=tmp_path / "hf", image_size=(28, 42)))
    assert fixed(images).backbone_features.shape == (2, 128, 2, 3)


def test_bad_weights_and_settings_are_named(tmp_path: Path) -> None:
    ref = reference(0, False, seed=4)
    official = to_official(ref.state_dict())
    with pytest.raises(ValidationError, match=r"needs teacher\.weights"):
        TeacherConfig(arch="dinov2")
    with pytest.raises(ValidationError, match="multiples of 14"):
        TeacherConfig(arch="dinov2", weights=tmp_path, image_size=(30, 28))
    path = tmp_path / "w.pth"
    torch.save({k: v for k, v in official.items() if k != "blocks.1.ls1.gamma"}, path)
    with pytest.raises(CheckpointError, match=r"missing: encoder\.layer\.1\.layer_scale1\.lambda1"):
        load_dinov2(path)
    torch.save({**official, "blocks.0.attn.extra.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match=r"unknown keys .*blocks\.0\.attn\.extra\.weight"):
        load_dinov2(path)
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="no DINOv2 tensors"):
        load_dinov2(path)
    with pytest.raises(CheckpointError, match=r"without config\.json"):
        load_dinov2(tmp_path)
    torch.save(official, path)
    with pytest.raises(CheckpointError, match="not blocks of a 3-block ViT"):
        ImageTeacher(TeacherConfig(arch="dinov2", weights=path, layers=(3,)))
    assert os.environ["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({"config.json": b"[1, 2]"}, "holds a JSON list"),
        ({"config.json": b"\xff\xfe"}, "not readable JSON"),
        ({"config.json": b'{"layer_norm_eps": "x"}'}, "layer_norm_eps 'x'"),
        ({"model.safetensors.index.json": b"{"}, "not readable JSON"),
        ({"model.safetensors.index.json": b'{"weight_map": [1]}'}, "weight_map"),
        ({"model.safetensors.index.json": b'{"weight_map": {"a": "../w.pth"}}'}, "weight_map"),
    ],
)
def test_malformed_hugging_face_folders_are_checkpoint_errors(
    files: dict[str, bytes], match: str, tmp_path: Path
) -> None:
    """Broken config.json / shard index: a CheckpointError naming the file, not a bare JSON error."""
    folder = tmp_path / "hf"
    reference(0, False, seed=5).save_pretrained(folder)
    if "model.safetensors.index.json" in files:
        (folder / "model.safetensors").unlink()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    with pytest.raises(CheckpointError, match=match):
        load_dinov2(folder)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_half_precision_on_cuda_is_close(tmp_path: Path) -> None:
    ref = reference(4, False, seed=5)
    ref.save_pretrained(tmp_path / "hf")
    teacher = ImageTeacher(TeacherConfig(arch="dinov2", weights=tmp_path / "hf")).cuda()
    images = torch.rand(2, 3, 42, 70)
    half = teacher(images.cuda()).backbone_features.cpu()
    assert half.dtype == torch.float32
    expected = reference_maps(ref, normalised(images), (-1,), True)
    assert float((half - expected).abs().max()) < 5e-2 * float(expected.abs().max())
