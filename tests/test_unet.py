"""Res16UNet 3D backbone: shapes, row order, l2 head, CPU training, spconv parity, parameter counts."""

from __future__ import annotations

import copy
import importlib.util
import sys
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor

from lidar_ssl_core.errors import ConfigError
from lidar_ssl_core.models.spconv_backend import SpconvUnavailableError, grid_for
from lidar_ssl_core.models.unet import (
    PRESETS,
    BackboneConfig,
    BackboneInputError,
    Res16UNet,
    parameter_count,
)

HAS_SPCONV = importlib.util.find_spec("spconv") is not None
needs_spconv = pytest.mark.skipif(not HAS_SPCONV, reason="spconv not installed: parity test skipped")


def _scene(n: int, seed: int = 0, batch: int = 2) -> Tensor:
    """~n unique LiDAR-like voxels (ground plane + walls + poles), negative coords, shuffled rows."""
    g = torch.Generator().manual_seed(seed)
    m = 3 * n
    u = torch.rand(m, generator=g)
    xy = (torch.rand(m, 2, generator=g) - 0.5) * 90.0
    z = torch.where(u < 0.6, torch.zeros(m), torch.rand(m, generator=g) * 12.0)  # ground or vertical
    wall = (u >= 0.6) & (u < 0.85)
    xy[wall, 0] = torch.round(xy[wall, 0] / 15.0) * 15.0 + 0.3  # walls every 15 voxels along x
    pole = u >= 0.85
    xy[pole] = torch.round(xy[pole] / 9.0) * 9.0 + torch.rand(int(pole.sum()), 2, generator=g)
    b = torch.randint(0, batch, (m, 1), generator=g)
    c = torch.cat([b, torch.floor(torch.cat([xy, z[:, None] - 3.0], 1)).long()], 1)
    c = torch.unique(c, dim=0)
    out: Tensor = c[torch.randperm(len(c), generator=g)[:n]].to(torch.int32)
    return out


def _randomise(model: Res16UNet, seed: int) -> None:
    """Non-trivial BN statistics/affines so eval-mode parity checks every term."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                c = mod.num_features
                assert mod.running_mean is not None and mod.running_var is not None
                mod.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(c, generator=g))
                mod.weight.copy_(0.8 + 0.4 * torch.rand(c, generator=g))
                mod.bias.copy_(0.1 * torch.randn(c, generator=g))
        bias = _param(model.final, "bias")
        bias.copy_(0.1 * torch.randn(bias.shape, generator=g))


def _param(module: torch.nn.Module, name: str) -> Tensor:
    value = getattr(module, name)
    assert isinstance(value, Tensor)
    return value


@pytest.fixture
def one_thread() -> Iterator[None]:
    """spconv's CPU forward races with >1 torch thread (wrong, varying outputs); reference runs use 1."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _tiny(**kw: object) -> Res16UNet:
    torch.manual_seed(0)
    return Res16UNet(BackboneConfig(preset="tiny", **kw))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- behaviour
def test_output_shape_row_order_and_l2() -> None:
    coords = _scene(3000, seed=1)
    feats = torch.rand(len(coords), 1)
    model = _tiny().eval()
    with torch.no_grad():
        y = model(coords, feats)
        perm = torch.randperm(len(coords), generator=torch.Generator().manual_seed(2))
        y_perm = model(coords[perm], feats[perm])
    assert y.shape == (len(coords), 64) and y.dtype == torch.float32
    assert torch.allclose(y.norm(dim=1), torch.ones(len(coords)), atol=1e-5)
    assert torch.allclose(y_perm, y[perm], atol=1e-5)  # rows follow the input order
    assert y.std(dim=0).mean() > 1e-2  # features vary across voxels
    raw = Res16UNet(BackboneConfig(preset="tiny", normalize=False)).eval()
    raw.load_state_dict(model.state_dict())
    with torch.no_grad():
        y_raw = raw(coords, feats)
    assert not torch.allclose(y_raw.norm(dim=1), torch.ones(len(coords)), atol=1e-2)
    assert torch.allclose(F.normalize(y_raw, dim=1), y, atol=1e-5)


def test_batch_items_are_independent() -> None:
    coords = _scene(2000, seed=3)
    feats = torch.rand(len(coords), 1)
    model = _tiny().eval()
    keep = coords[:, 0] == 1
    with torch.no_grad():
        both = model(coords, feats)
        alone = model(torch.cat([torch.zeros_like(coords[keep, :1]), coords[keep, 1:]], 1), feats[keep])
    assert torch.allclose(both[keep], alone, atol=1e-5)


def test_portable_trains_on_cpu() -> None:
    coords = _scene(2500, seed=4)
    feats = torch.rand(len(coords), 1)
    target = F.normalize(
        torch.sin(coords[:, 1:].float()[:, :, None] * torch.linspace(0.1, 2.0, 22)).flatten(1)[:, :64]
    )
    model = _tiny().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = 1.0 - (model(coords, feats) * target).sum(1).mean()
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert losses[-1] < losses[0] - 0.05, losses
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert no_grad == []


# --------------------------------------------------------------------------------------- spconv parity
def _parity(preset: str, n: int, seed: int) -> tuple[float, float]:
    coords = _scene(n, seed=seed)
    coords[:, 1] += 7  # odd offsets: the spconv shift must still group voxels like the portable floor
    feats = torch.rand(len(coords), 1)
    torch.manual_seed(seed)
    ref = Res16UNet(BackboneConfig(preset=preset, backend="spconv", normalize=False)).eval()  # type: ignore[arg-type]
    _randomise(ref, seed)
    ours = Res16UNet(BackboneConfig(preset=preset, backend="portable", normalize=False)).eval()  # type: ignore[arg-type]
    ours.load_state_dict(ref.state_dict())
    assert type(ref.conv0p1s1).__module__.startswith("spconv")
    with torch.no_grad():
        y_ref, y = ref(coords, feats), ours(coords, feats)
    err = float((y - y_ref).abs().max())
    scale = float(y_ref.abs().max())
    print(f"parity {preset}: {len(coords)} voxels, max |diff| {err:.2e}, max |y| {scale:.3f}")
    return err, scale


@needs_spconv
def test_tiny_matches_spconv(one_thread: None) -> None:
    err, scale = _parity("tiny", 3000, seed=5)
    assert scale > 0.1 and err < 1e-4 * max(1.0, scale), (err, scale)


@needs_spconv
def test_full_res16unet34c_matches_spconv(one_thread: None) -> None:
    err, scale = _parity("res16unet34c", 2000, seed=6)
    assert scale > 0.1 and err < 1e-4 * max(1.0, scale), (err, scale)


@pytest.mark.parametrize("backend", ["portable", pytest.param("spconv", marks=needs_spconv)])
def test_head_matmul_is_the_final_conv_of_the_backend(backend: str, one_thread: None) -> None:
    """``head`` (used by forward, probing and export) must compute exactly what ``final`` computes,
    including spconv's reshape (not transpose) convention for 1x1 weights."""
    model = Res16UNet(BackboneConfig(preset="tiny", backend=backend, out_dim=5, normalize=False))  # type: ignore[arg-type]
    _randomise(model, seed=3)
    coords = _scene(800, seed=3)
    feats = torch.randn(len(coords), model.feature_dim)
    with torch.no_grad():
        x = model.ops.make_input(coords, feats)
        by_conv = model.ops.features(model.final(x))
        by_head = model.head(feats)
    order = torch.arange(len(coords))  # both keep the input row order
    torch.testing.assert_close(by_head[order], by_conv, rtol=1e-5, atol=1e-5)


@needs_spconv
def test_state_dicts_identical_across_backends() -> None:
    a = Res16UNet(BackboneConfig(preset="small", backend="spconv"))
    b = Res16UNet(BackboneConfig(preset="small", backend="portable"))
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(sa[k].shape == sb[k].shape for k in sa)
    b.load_state_dict(sa)  # strict
    assert list(copy.deepcopy(a).state_dict()) == list(sa)  # deep-copyable (EMA teachers, checkpoints)
    assert torch.equal(_param(b.final, "weight"), _param(a.final, "weight"))


def test_spconv_missing_raises_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "spconv", None)
    monkeypatch.setitem(sys.modules, "spconv.pytorch", None)
    with pytest.raises(SpconvUnavailableError, match="backend='portable'") as info:
        Res16UNet(BackboneConfig(preset="tiny", backend="spconv"))
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ImportError)
    assert Res16UNet(BackboneConfig(preset="tiny")).ops.name == "portable"  # portable needs no spconv


def test_spconv_grid_is_16_aligned() -> None:
    coords = torch.tensor([[0, -17, 0, 5], [1, 30, -1, 40]], dtype=torch.int32)
    shift, shape = grid_for(coords)
    assert shift.tolist() == [32, 16, 0]
    assert shape == [64, 32, 48]
    shifted = coords[:, 1:].long() + shift
    assert bool((shifted >= 0).all()) and bool((shifted < torch.tensor(shape)).all())


# --------------------------------------------------------------------------------------- sizes, config
def test_parameter_counts() -> None:
    for name, arch in PRESETS.items():
        model = Res16UNet(BackboneConfig(preset=name))  # type: ignore[arg-type]
        assert sum(p.numel() for p in model.parameters()) == parameter_count(arch, 1, 64), name
    full = Res16UNet(BackboneConfig(in_channels=3, out_dim=20))
    n = sum(p.numel() for p in full.parameters())
    assert n == 37_846_644  # MinkowskiEngine Res16UNet34C (in 3, out 20): ~37.8M
    assert parameter_count(PRESETS["res16unet34c"], 1, 64) == 37_849_184  # SLidR: intensity in, F = 64
    assert full.feature_dim == 96
    assert (
        len(full.block4) == 6 and full.block4[0].downsample is not None and full.block4[1].downsample is None
    )


def test_config_and_input_validation() -> None:
    with pytest.raises(ValidationError):
        BackboneConfig(preset="huge")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        BackboneConfig(depth=3)  # type: ignore[call-arg]
    cfg = BackboneConfig()
    with pytest.raises(ValidationError):
        cfg.out_dim = 3  # type: ignore[misc]
    model = _tiny()
    coords = _scene(100, seed=7)
    with pytest.raises(BackboneInputError, match="in_channels=1"):
        model(coords, torch.rand(len(coords), 3))
    with pytest.raises(BackboneInputError, match="integer"):
        model(coords.float(), torch.rand(len(coords), 1))
    with pytest.raises(BackboneInputError, match="rows"):
        model(coords, torch.rand(len(coords) - 1, 1))


def test_full_preset_trains_end_to_end() -> None:
    coords = _scene(2000, seed=8)
    model = Res16UNet(BackboneConfig()).train()
    y = model(coords, torch.rand(len(coords), 1))
    y[:, 0].sum().backward()
    assert y.shape == (len(coords), 64)
    grad = _param(model.conv0p1s1, "weight").grad
    assert grad is not None and bool(grad.abs().sum() > 0)
