"""Pure-PyTorch sparse conv backend: parity with spconv, with dense conv3d, gradients, caching."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lidar_ssl_core.sparse import (
    SparseConv3d,
    SparseInverseConv3d,
    SparseTensor,
    SubMConv3d,
    build_downsample_map,
    build_submanifold_map,
    pack_keys,
    unpack_keys,
)

HAS_SPCONV = importlib.util.find_spec("spconv") is not None


def _rand_coords(n: int, size: int, batch: int = 2, seed: int = 0) -> Tensor:
    """n unique random voxels in [0, size)^3 over `batch` items, in shuffled order."""
    g = torch.Generator().manual_seed(seed)
    c = torch.cat(
        [torch.randint(0, batch, (3 * n, 1), generator=g), torch.randint(0, size, (3 * n, 3), generator=g)], 1
    )
    c = torch.unique(c, dim=0)
    out: Tensor = c[torch.randperm(len(c), generator=g)[:n]].to(torch.int32)
    return out


def _sorted(coords: Tensor, feats: Tensor) -> tuple[Tensor, Tensor]:
    order = torch.argsort(pack_keys(coords[:, 0], coords[:, 1:]))
    return coords[order].long(), feats[order]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """spconv's CPU wheel gives wrong, run-to-run varying outputs with >1 torch thread (a race), so
    reference runs use one thread."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _net(c_in: int = 4) -> tuple[SubMConv3d, SparseConv3d, SubMConv3d, SparseInverseConv3d]:
    torch.manual_seed(1)
    return SubMConv3d(c_in, 8, 3), SparseConv3d(8, 6, 2, 2), SubMConv3d(6, 6, 3), SparseInverseConv3d(6, 5, 2)


# --------------------------------------------------------------------------------------- spconv parity
@pytest.mark.skipif(not HAS_SPCONV, reason="spconv not installed (pip install spconv): parity test skipped")
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_submconv_matches_spconv(kernel_size: int, one_thread: None) -> None:
    import spconv.pytorch as spconv

    size = 24
    coords = _rand_coords(3000, size)
    feats = torch.randn(len(coords), 4)
    ref = spconv.SubMConv3d(4, 7, kernel_size, bias=False, indice_key="s")
    torch.nn.init.normal_(ref.weight)
    ours = SubMConv3d(4, 7, kernel_size)
    ours.load_state_dict(ref.state_dict())
    assert ours.weight.shape == ref.weight.shape == (7, kernel_size, kernel_size, kernel_size, 4)
    with torch.no_grad():
        y_ref = ref(spconv.SparseConvTensor(feats, coords, [size] * 3, 2))
        y = ours(SparseTensor(feats, coords))
    c_ref, f_ref = _sorted(y_ref.indices, y_ref.features)
    c, f = _sorted(y.coords, y.features)
    assert torch.equal(c_ref, c)
    assert torch.allclose(f, f_ref, atol=1e-5, rtol=1e-5)
    assert f.abs().max() > 1.0  # not trivially zero


@pytest.mark.skipif(not HAS_SPCONV, reason="spconv not installed (pip install spconv): parity test skipped")
def test_encoder_decoder_chain_matches_spconv(one_thread: None) -> None:
    """SubM -> down(2,2) -> SubM -> inverse: same weights, same sites, same features as spconv."""
    import spconv.pytorch as spconv

    size = 32
    coords = _rand_coords(4000, size, seed=3)
    feats = torch.randn(len(coords), 4)
    refs = [
        spconv.SubMConv3d(4, 8, 3, bias=False, indice_key="s1"),
        spconv.SparseConv3d(8, 6, 2, 2, bias=False, indice_key="d1"),
        spconv.SubMConv3d(6, 6, 3, bias=False, indice_key="s2"),
        spconv.SparseInverseConv3d(6, 5, 2, bias=False, indice_key="d1"),
    ]
    ours = _net()
    for r, o in zip(refs, ours, strict=True):
        torch.nn.init.normal_(r.weight, std=0.3)
        o.load_state_dict(r.state_dict())
    with torch.no_grad():
        x_ref = spconv.SparseConvTensor(feats, coords, [size] * 3, 2)
        x = SparseTensor(feats, coords)
        for r, o in zip(refs, ours, strict=True):
            x_ref, x = r(x_ref), o(x)
            c_ref, f_ref = _sorted(x_ref.indices, x_ref.features)
            c, f = _sorted(x.coords, x.features)
            assert torch.equal(c_ref, c), type(o).__name__
            assert torch.allclose(f, f_ref, atol=1e-5, rtol=1e-5), type(o).__name__
    assert x.stride == 1 and torch.equal(x.coords, coords)  # inverse restores the input sites, same order


@pytest.mark.skipif(not HAS_SPCONV, reason="spconv not installed (pip install spconv): parity test skipped")
def test_flipped_weight_breaks_spconv_parity(one_thread: None) -> None:
    """Guards the test itself: a mirrored kernel must NOT match, so the offset order really is pinned."""
    import spconv.pytorch as spconv

    coords = _rand_coords(2000, 16, seed=5)
    feats = torch.randn(len(coords), 3)
    ref = spconv.SubMConv3d(3, 4, 3, bias=False)
    ours = SubMConv3d(3, 4, 3)
    with torch.no_grad():
        ours.weight.copy_(ref.weight.flip(1))
        y_ref = ref(spconv.SparseConvTensor(feats, coords, [16] * 3, 2))
        y = ours(SparseTensor(feats, coords))
    assert not torch.allclose(
        _sorted(y.coords, y.features)[1], _sorted(y_ref.indices, y_ref.features)[1], atol=1e-3
    )


# --------------------------------------------------------------------------------------- dense reference
def _dense(coords: Tensor, feats: Tensor, size: int, batch: int) -> Tensor:
    grid = torch.zeros(batch, feats.shape[1], size, size, size, dtype=feats.dtype)
    c = coords.long()
    grid[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]] = feats
    return grid


def _at(grid: Tensor, coords: Tensor) -> Tensor:
    c = coords.long()
    return grid[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_submconv_matches_dense_conv3d_at_active_sites(kernel_size: int) -> None:
    size, batch = 10, 2
    coords = _rand_coords(400, size, batch, seed=7)
    feats = torch.randn(len(coords), 3, dtype=torch.float64)
    conv = SubMConv3d(3, 5, kernel_size).double()
    y = conv(SparseTensor(feats, coords))
    dense = F.conv3d(
        _dense(coords, feats, size, batch), conv.weight.permute(0, 4, 1, 2, 3), padding=kernel_size // 2
    )
    assert torch.equal(y.coords, coords)
    assert torch.allclose(y.features, _at(dense, coords), atol=1e-10)


def test_down_and_inverse_match_dense_conv3d() -> None:
    size, batch = 12, 2
    coords = _rand_coords(500, size, batch, seed=8)
    feats = torch.randn(len(coords), 3, dtype=torch.float64)
    down = SparseConv3d(3, 4, 2, 2).double()
    up = SparseInverseConv3d(4, 2, 2).double()
    y = down(SparseTensor(feats, coords))
    dense_y = F.conv3d(_dense(coords, feats, size, batch), down.weight.permute(0, 4, 1, 2, 3), stride=2)
    assert y.stride == 2
    expected_sites = torch.unique(torch.cat([coords[:, :1], coords[:, 1:] // 2], 1), dim=0)
    assert torch.equal(_sorted(y.coords, y.features)[0], expected_sites.long())
    assert torch.allclose(y.features, _at(dense_y, y.coords), atol=1e-10)
    z = up(y)
    dense_z = F.conv_transpose3d(
        _dense(y.coords, y.features, size // 2, batch), up.weight.permute(4, 0, 1, 2, 3), stride=2
    )
    assert z.stride == 1 and torch.equal(z.coords, coords)
    assert torch.allclose(z.features, _at(dense_z, coords), atol=1e-10)


# --------------------------------------------------------------------------------------- gradients
def test_gradcheck_all_modules_float64() -> None:
    coords = _rand_coords(40, 5, batch=2, seed=9)
    feats = torch.randn(len(coords), 2, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(2)
    m1, m2, m3 = (
        SubMConv3d(2, 3, 3).double(),
        SparseConv3d(3, 2, 2).double(),
        SparseInverseConv3d(2, 2, 2).double(),
    )
    w1, w2, w3 = (m.weight for m in (m1, m2, m3))

    def fn(f: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
        from torch.func import functional_call

        x = SparseTensor(f, coords)
        x = functional_call(m1, {"weight": a}, (x,))
        x = functional_call(m2, {"weight": b}, (x,))
        y: SparseTensor = functional_call(m3, {"weight": c}, (x,))
        return y.features

    args = tuple(t.detach().clone().requires_grad_(True) for t in (feats, w1, w2, w3))
    assert torch.autograd.gradcheck(fn, args, atol=1e-7)


# --------------------------------------------------------------------------------------- maps and cache
def test_cache_builds_each_map_once_and_inverse_needs_downsample() -> None:
    coords = _rand_coords(300, 8, seed=11)
    x = SparseTensor(torch.randn(len(coords), 4), coords)
    a, b = SubMConv3d(4, 4), SubMConv3d(4, 4)
    y = b(a(x))
    assert list(x.cache.maps) == [("subm", 1, 3)]
    assert y.cache is x.cache
    with pytest.raises(ValueError, match="inverse conv"):
        SparseInverseConv3d(4, 4)(SparseTensor(torch.randn(len(coords), 4), coords, stride=2))


def test_algorithms_agree() -> None:
    coords = _rand_coords(600, 10, seed=12)
    x = SparseTensor(torch.randn(len(coords), 4), coords)
    conv = SubMConv3d(4, 6)
    y1 = conv(x).features
    conv.algo = "im2col"
    assert torch.allclose(conv(x).features, y1, atol=1e-5)


def test_submanifold_map_pairs_are_true_neighbours() -> None:
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, -1, -1, 1]], dtype=torch.int32)
    kmap = build_submanifold_map(coords, 3)
    assert kmap.counts[13] == 4  # centre offset: every site is its own neighbour
    # (0,0,0,0) <-> (0,1,0,0) differ by +x: offset (+1,0,0) -> index (2*3+1)*3+1 = 22, and its mirror 4
    d = coords[kmap.in_idx].long() - coords[kmap.out_idx].long()
    offs = torch.stack([kmap.kernel_idx // 9, kmap.kernel_idx // 3 % 3, kmap.kernel_idx % 3], 1) - 1
    assert torch.equal(d[:, 1:], offs) and bool((d[:, 0] == 0).all())
    assert kmap.in_idx.numel() == 4 + 2 + 2  # self pairs, 0<->1 pair, 0<->3 pair (diagonal)


def test_pack_roundtrip_and_negative_downsample() -> None:
    coords = torch.tensor([[3, -5, 7, -32768], [0, 32767, -1, 0]], dtype=torch.int32)
    assert torch.equal(unpack_keys(pack_keys(coords[:, 0], coords[:, 1:])), coords)
    kmap, out = build_downsample_map(torch.tensor([[0, -1, -2, 3], [0, -2, -1, 2]], dtype=torch.int32), 2)
    assert out.tolist() == [[0, -1, -1, 1]] and kmap.num_out == 1
    assert sorted(kmap.kernel_idx.tolist()) == [(0 * 2 + 1) * 2 + 0, (1 * 2 + 0) * 2 + 1]


def test_bad_inputs_raise() -> None:
    dup = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1]], dtype=torch.int32)
    with pytest.raises(ValueError, match="duplicate"):
        SubMConv3d(1, 1)(SparseTensor(torch.ones(2, 1), dup))
    with pytest.raises(ValueError, match="packable"):
        build_submanifold_map(torch.tensor([[0, 40000, 0, 0]], dtype=torch.int32), 3)
    with pytest.raises(ValueError, match="rows"):
        SparseTensor(torch.ones(3, 1), dup)
