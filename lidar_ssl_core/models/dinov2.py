"""DINOv2 ViT/14 teachers (S, B, L, g; with or without registers) from a user-given path, run by transformers.

The network is ``transformers``' ``Dinov2Model`` / ``Dinov2WithRegistersModel`` (a maintained implementation;
we do not write a ViT). What this module adds is loading, without any download:

* **official layout** (the ``dinov2_vit*14[_reg4]_pretrain.pth`` releases): a ``.pth`` state dict with keys
  ``patch_embed.proj.weight``, ``blocks.<i>.attn.qkv.weight``, ``blocks.<i>.ls1.gamma``, ``pos_embed``,
  ``cls_token``, ``register_tokens``, ``mask_token``, ``norm.weight`` ... (ViT-g: SwiGLU ``mlp.w12``/``w3``;
  training checkpoints: chunked ``blocks.<c>.<i>``, under ``teacher`` with a ``backbone.`` prefix). It is
  renamed to transformers' keys (``qkv`` split into q/k/v, ``w12`` into gate/up).
* **Hugging Face layout**: a folder with ``config.json`` and ``model.safetensors`` (or a sharded index, or
  ``pytorch_model.bin``); older checkpoints' names (``attention.attention.query``, ``mlp.weights_in``) are
  renamed as transformers itself does. A single ``.safetensors``/``.pth`` file in this layout also works.

The size (width, depth, heads, MLP, registers, position grid) is read from the tensors, and loading is strict:
a missing or unexpected tensor is a :class:`CheckpointError` naming it (only the unused ``mask_token`` may be
absent). transformers is imported lazily, so importing :mod:`lidar_ssl_core.models` does not need it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from lidar_ssl_core.models.checkpoints import CheckpointError, read_checkpoint

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

DINOV2_LAYER_NORM_EPS = 1e-6
#: Official widths -> release name (for logs); heads are width / 64 in every release.
OFFICIAL_WIDTHS: dict[int, str] = {384: "ViT-S/14", 768: "ViT-B/14", 1024: "ViT-L/14", 1536: "ViT-g/14"}
#: (width, depth, swiglu) of the released sizes, for random-weight timing and tests.
OFFICIAL_SIZES: dict[str, tuple[int, int, bool]] = {
    "s": (384, 12, False),
    "b": (768, 12, False),
    "l": (1024, 24, False),
    "g": (1536, 40, True),
}
HEAD_DIM = 64
Dinov2Layout = Literal["official", "hf"]

_CONTAINERS = ("teacher", "model", "state_dict", "student")
_HF_LEGACY = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
    ("mlp.weights_out.", "mlp.down_proj."),
)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values())


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a ``torch.load``-able (``weights_only``) file, still wrapped."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as exc:  # safetensors raises its own SafetensorError for bad files
            raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    obj = read_checkpoint(path)
    return obj if isinstance(obj, dict) else {"": obj}


def unwrap_state_dict(
    obj: Mapping[str, Any], *, container: str | None = None, prefix: str | None = None, source: str = ""
) -> dict[str, torch.Tensor]:
    """The ViT's tensors: pick the container, strip ``module.``/``backbone.``/``dinov2.``, drop heads."""
    if container is not None:
        if container not in obj or not _is_state_dict(obj[container]):
            raise CheckpointError(f"{source}: no state dict under the top-level key {container!r}")
        obj = obj[container]
    elif not any(k in obj for k in ("cls_token", "embeddings.cls_token")):
        for key in _CONTAINERS:
            if key in obj and _is_state_dict(obj[key]):
                obj = obj[key]
                break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    prefixes = (
        (prefix,) if prefix is not None else ("module.backbone.", "backbone.", "module.", "dinov2.", "")
    )
    for p in prefixes:
        if any(k.startswith(p + "cls_token") or k.startswith(p + "embeddings.cls_token") for k in sd):
            return {k[len(p) :]: v for k, v in sd.items() if k.startswith(p)}
    raise CheckpointError(
        f"{source}: no DINOv2 tensors found (expected 'cls_token' or 'embeddings.cls_token'"
        f"{'' if prefix is None else f' after the prefix {prefix!r}'}); "
        "give teacher.container / teacher.prefix"
    )


def detect_layout(sd: Mapping[str, torch.Tensor]) -> Dinov2Layout:
    """``official`` (``blocks.*``, ``pos_embed``) or ``hf`` (``embeddings.*``, ``encoder.layer.*``)."""
    return "hf" if "embeddings.cls_token" in sd else "official"


def official_to_hf(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official-layout state dict to transformers' keys (every key is consumed or an error)."""
    out: dict[str, torch.Tensor] = {}
    top = {
        "cls_token": "embeddings.cls_token",
        "mask_token": "embeddings.mask_token",
        "pos_embed": "embeddings.position_embeddings",
        "register_tokens": "embeddings.register_tokens",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "norm.weight": "layernorm.weight",
        "norm.bias": "layernorm.bias",
    }
    block = {
        "norm1": "norm1",
        "norm2": "norm2",
        "attn.proj": "attention.o_proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
        "mlp.w3": "mlp.down_proj",
    }
    chunked = any(re.match(r"blocks\.\d+\.\d+\.", k) for k in sd)
    unknown: list[str] = []
    for key, value in sd.items():
        if key in top:
            if key == "mask_token" and value.ndim == 3:
                value = value.reshape(1, -1)
            out[top[key]] = value
            continue
        m = re.fullmatch(r"blocks\.(\d+\.)?(\d+)\.(.+)\.(weight|bias|gamma)", key)
        if m is None or (chunked != (m.group(1) is not None)):
            unknown.append(key)
            continue
        i, name, kind = m.group(2), m.group(3), m.group(4)
        dst = f"encoder.layer.{i}."
        if name in ("ls1", "ls2") and kind == "gamma":
            out[dst + f"layer_scale{name[-1]}.lambda1"] = value
        elif name == "attn.qkv":
            for part, chunk in zip(("q", "k", "v"), value.chunk(3, dim=0), strict=True):
                out[dst + f"attention.{part}_proj.{kind}"] = chunk
        elif name == "mlp.w12":
            for part, chunk in zip(("gate", "up"), value.chunk(2, dim=0), strict=True):
                out[dst + f"mlp.{part}_proj.{kind}"] = chunk
        elif name in block and kind != "gamma":
            out[dst + f"{block[name]}.{kind}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"unknown keys in an official-layout DINOv2 checkpoint: {_show(unknown)}")
    return out


def hf_legacy_to_current(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Older transformers names (split ``attention.attention.*``, ``mlp.weights_in``) -> the current ones."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if ".mlp.weights_in." in key:
            gate, up = value.chunk(2, dim=0)
            out[key.replace("mlp.weights_in.", "mlp.gate_proj.")] = gate
            out[key.replace("mlp.weights_in.", "mlp.up_proj.")] = up
            continue
        for old, new in _HF_LEGACY:
            key = key.replace(old, new)
        out[key] = value
    return out


def _show(keys: Sequence[str]) -> str:
    items = sorted(keys)
    return ", ".join(items[:5]) + (f" ... (+{len(items) - 5} more)" if len(items) > 5 else "")


def infer_config(sd: Mapping[str, torch.Tensor], source: str = "") -> Any:
    """A transformers config (with or without registers) matching the tensors of an hf-layout state dict."""
    from transformers import Dinov2Config, Dinov2WithRegistersConfig

    try:
        width = int(sd["embeddings.cls_token"].shape[-1])
        patch = int(sd["embeddings.patch_embeddings.projection.weight"].shape[-1])
        n_pos = int(sd["embeddings.position_embeddings"].shape[1]) - 1
    except KeyError as exc:
        raise CheckpointError(f"{source}: DINOv2 tensor {exc} is missing") from exc
    depth = 1 + max(
        (int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layer\.(\d+)\.", k))), default=-1
    )
    grid = round(n_pos**0.5)
    if depth == 0 or grid * grid != n_pos or width % HEAD_DIM:
        raise CheckpointError(
            f"{source}: not a DINOv2 ViT (width {width}, {depth} blocks, {n_pos} position embeddings)"
        )
    swiglu = "encoder.layer.0.mlp.gate_proj.weight" in sd
    if swiglu:
        hidden = int(sd["encoder.layer.0.mlp.gate_proj.weight"].shape[0])
        mlp_ratio = 4  # the released ViT-g's (transformers derives the SwiGLU size from it)
        if (int(width * mlp_ratio * 2 / 3) + 7) // 8 * 8 != hidden:
            raise CheckpointError(f"{source}: SwiGLU hidden size {hidden} does not follow mlp_ratio 4")
    else:
        fc1 = sd.get("encoder.layer.0.mlp.fc1.weight")
        if fc1 is None:
            raise CheckpointError(f"{source}: DINOv2 tensor encoder.layer.0.mlp.fc1.weight is missing")
        if int(fc1.shape[0]) % width:
            raise CheckpointError(f"{source}: MLP size {fc1.shape[0]} is not a multiple of the width {width}")
        mlp_ratio = int(fc1.shape[0]) // width
    common: dict[str, Any] = {
        "hidden_size": width,
        "num_hidden_layers": depth,
        "num_attention_heads": width // HEAD_DIM,
        "mlp_ratio": mlp_ratio,
        "patch_size": patch,
        "image_size": grid * patch,
        "layer_norm_eps": DINOV2_LAYER_NORM_EPS,
        "use_swiglu_ffn": swiglu,
    }
    if "embeddings.register_tokens" in sd:
        regs = int(sd["embeddings.register_tokens"].shape[1])
        return Dinov2WithRegistersConfig(num_register_tokens=regs, **common)
    return Dinov2Config(**common)


def build_model(config: Any) -> PreTrainedModel:
    """``Dinov2Model`` or ``Dinov2WithRegistersModel`` (random weights) for a config, in eval mode."""
    from transformers import Dinov2Model, Dinov2WithRegistersModel

    cls = Dinov2WithRegistersModel if getattr(config, "num_register_tokens", 0) else Dinov2Model
    model: PreTrainedModel = cls(config)
    model.train(False)
    return model


def official_size_config(size: str, registers: int = 0, image_size: int = 518) -> Any:
    """Config of a released size (``s``/``b``/``l``/``g``), for random-weight timing and tests."""
    from transformers import Dinov2Config, Dinov2WithRegistersConfig

    width, depth, swiglu = OFFICIAL_SIZES[size]
    common: dict[str, Any] = {
        "hidden_size": width,
        "num_hidden_layers": depth,
        "num_attention_heads": width // HEAD_DIM,
        "patch_size": 14,
        "image_size": image_size,
        "layer_norm_eps": DINOV2_LAYER_NORM_EPS,
        "use_swiglu_ffn": swiglu,
    }
    if registers:
        return Dinov2WithRegistersConfig(num_register_tokens=registers, **common)
    return Dinov2Config(**common)


def _read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file holding an object (config.json, a shard index), or a CheckpointError naming the file."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} holds a JSON {type(value).__name__}, expected an object")
    return value


def _read_hf_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and config.json of a Hugging Face model folder (single, sharded or .bin weights)."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(
            f"{folder} is a folder without config.json (expected a Hugging Face model folder)"
        )
    raw_config = _read_json_object(cfg_path)
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        return read_tensors(folder / "model.safetensors"), raw_config
    if index.is_file():
        weight_map = _read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) and v and Path(v).name == v for v in weight_map.values()
        ):
            raise CheckpointError(f"{index}: 'weight_map' must map tensor names to shard files of {folder}")
        sd: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            sd.update(read_tensors(folder / shard))
        return sd, raw_config
    if (folder / "pytorch_model.bin").is_file():
        return read_tensors(folder / "pytorch_model.bin"), raw_config
    raise CheckpointError(f"{folder} has no model.safetensors (or sharded index, or pytorch_model.bin)")


def load_dinov2(
    path: str | Path, *, container: str | None = None, prefix: str | None = None
) -> PreTrainedModel:
    """A frozen-ready transformers DINOv2 from ``path`` (official ``.pth``, HF folder or file); strict."""
    path = Path(path)
    raw_config: dict[str, Any] | None = None
    if path.is_dir():
        obj, raw_config = _read_hf_folder(path)
    elif path.is_file():
        obj = read_tensors(path)
    else:
        raise CheckpointError(f"DINOv2 weights {path} do not exist (give a .pth file or a model folder)")
    sd = unwrap_state_dict(obj, container=container, prefix=prefix, source=str(path))
    layout = detect_layout(sd)
    sd = official_to_hf(sd) if layout == "official" else hf_legacy_to_current(sd)
    sd = {k: v for k, v in sd.items() if not k.startswith(("classifier.", "pooler."))}
    config = infer_config(sd, str(path))
    eps = None if raw_config is None else raw_config.get("layer_norm_eps")
    if eps is not None:
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 < eps < 1:
            raise CheckpointError(
                f"{path}/config.json: layer_norm_eps {eps!r} is not a small positive number"
            )
        config.layer_norm_eps = float(eps)
    model = build_model(config)
    expected = model.state_dict()
    if "embeddings.mask_token" not in sd and "embeddings.mask_token" in expected:
        sd["embeddings.mask_token"] = torch.zeros_like(
            expected["embeddings.mask_token"]
        )  # unused at inference
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = [
        f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{path} ({layout} layout) does not match a DINOv2 "
            f"{OFFICIAL_WIDTHS.get(config.hidden_size, f'width {config.hidden_size}')}: "
            + "; ".join(
                f"{what}: {_show(keys)}"
                for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
                if keys
            )
        )
    model.load_state_dict(sd, strict=True)
    logger.info(
        "DINOv2 %s (%d blocks, %d registers, %s layout) loaded from %s",
        OFFICIAL_WIDTHS.get(config.hidden_size, f"width {config.hidden_size}"),
        config.num_hidden_layers,
        getattr(config, "num_register_tokens", 0),
        layout,
        path,
    )
    return model


class Dinov2Features(nn.Module):
    """Patch-token maps (B, C, h, w) of chosen blocks of a transformers DINOv2 (C = width x #layers).

    ``layers`` index the blocks (negative = from the end; -1 = last); ``final_norm`` applies the model's final
    LayerNorm to each (DINOv2's ``x_norm_patchtokens`` / ``get_intermediate_layers(norm=True)``); without it
    the raw block output (ScaLR's ``x_pre_norm``). Only the blocks up to the deepest chosen one run.
    """

    def __init__(
        self, model: PreTrainedModel, layers: Sequence[int] = (-1,), final_norm: bool = True
    ) -> None:
        super().__init__()
        self.model = model
        config = model.config
        depth = int(config.num_hidden_layers)
        resolved = [i % depth if -depth <= i < depth else None for i in layers]
        if not layers or any(i is None for i in resolved):
            raise CheckpointError(
                f"DINOv2 teacher layers {list(layers)} are not blocks of a {depth}-block ViT"
            )
        self.layers: list[int] = [i for i in resolved if i is not None]
        self.final_norm = final_norm
        self.patch_size: int = int(config.patch_size)
        self.output_stride: int = self.patch_size
        self.width: int = int(config.hidden_size)
        self.out_channels: int = self.width * len(self.layers)
        self.num_prefix_tokens: int = 1 + int(getattr(config, "num_register_tokens", 0))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W), H and W multiples of the patch size -> (B, C, H/14, W/14)."""
        b, _, height, width = pixel_values.shape
        h, w = height // self.patch_size, width // self.patch_size
        vit: Any = self.model
        hidden = vit.embeddings(pixel_values)
        picked: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(vit.encoder.layer[: max(self.layers) + 1]):
            hidden = layer(hidden, attention_mask=None)
            if index in self.layers:
                picked[index] = vit.layernorm(hidden) if self.final_norm else hidden
        maps = [picked[i][:, self.num_prefix_tokens :].reshape(b, h, w, -1) for i in self.layers]
        return torch.cat(maps, dim=-1).permute(0, 3, 1, 2).contiguous()
