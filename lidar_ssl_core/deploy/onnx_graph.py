"""The portable Res16UNet as an ONNX graph: sparse convs as gathers and matmuls over neighbour tables.

The graph is written node by node with ``onnx.helper`` from the network's (eval-mode) weights; no tracing,
so the data-dependent kernel-map construction stays outside it and the graph holds only ``Gather``,
``MatMul``, ``Add``, ``Relu``, ``Concat`` and ``ReduceSum``: ops that ONNX Runtime's CPU and CUDA
providers and TensorRT's ONNX parser all take, with no custom plugin. BatchNorm is folded into the
preceding conv (``W' = W * gamma / sqrt(var + eps)``, ``b' = beta - mean * gamma / sqrt(var + eps)``).

Inputs (every voxel count is a dynamic dimension; tables come from
:func:`lidar_ssl_core.deploy.kernel_maps.graph_tables`):

- ``features`` (V1, in_channels) float32;
- per level ``l`` in 1, 2, 4, 8, 16: ``s{l}_g{j}`` (26 gather lists, one per non-centre offset) and
  ``s{l}_pos`` (V_l, 26): a 3x3x3 submanifold conv is ``X @ W_centre + sum_j (Xpad[g_j] @ W_j)[pos]``;
- per level ``l`` in 1, 2, 4, 8: ``d{l}_g{k}`` (8 lists) and ``d{l}_pos`` (V_2l, 8) for the stride-2
  conv from ``l`` to ``2l``; ``u{l}_g{k}`` (8 lists) and ``u{l}_pos`` (V_l,) for the transposed conv back.

Output: ``logits`` (V1, num_classes) float32, rows in the order of the level-1 voxels.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from lidar_ssl_core.deploy.backends import build_network
from lidar_ssl_core.deploy.kernel_maps import DOWN_VOLUME, LEVELS, SUBM_CENTRE, SUBM_VOLUME
from lidar_ssl_core.deploy.spec import ModelSpec
from lidar_ssl_core.models.unet import BasicBlock, Res16UNet

OPSET = 17
Reduction = Literal["gather", "scatter"]
Array = npt.NDArray[np.float32]


def _fold(bn: nn.BatchNorm1d) -> tuple[Array, Array]:
    """(scale, shift) of an eval-mode BatchNorm1d."""
    assert bn.running_mean is not None and bn.running_var is not None
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() - bn.running_mean * scale
    return scale.numpy().astype(np.float32), shift.numpy().astype(np.float32)


def _param(module: nn.Module, name: str) -> Array:
    """A parameter of ``module`` as float32 numpy (a missing one is a defect of the walker)."""
    value = getattr(module, name, None)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no tensor '{name}'")
    return value.detach().cpu().numpy().astype(np.float32)


def _bn(module: nn.Module) -> nn.BatchNorm1d:
    bn = getattr(module, "bn", module)
    if not isinstance(bn, nn.BatchNorm1d):
        raise TypeError(f"expected a BatchNorm1d, got {type(bn).__name__}")
    return bn


class _Graph:
    """A small ONNX graph builder: initializers and nodes with generated names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self._n = 0
        self._zeros: dict[int, str] = {}
        self._axes1 = ""

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, hint: str, value: npt.NDArray[Any]) -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        out = self.name(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def index_input(self, name: str, dims: list[str | int]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.INT32, dims))
        return name

    def pad(self, x: str, channels: int) -> str:
        """``x`` with one zero row appended (what every sentinel index reads)."""
        if channels not in self._zeros:
            self._zeros[channels] = self.const(f"zero{channels}", np.zeros((1, channels), np.float32))
        return self.op("Concat", [x, self._zeros[channels]], "pad", axis=0)

    def reduce_rows(self, x: str) -> str:
        if not self._axes1:
            self._axes1 = self.const("axes1", np.array([1], np.int64))
        return self.op("ReduceSum", [x, self._axes1], "sum", keepdims=0)


class _UNetWriter:
    """Walks a portable Res16UNet and writes its folded ops into a :class:`_Graph`."""

    def __init__(self, net: Res16UNet, reduction: Reduction) -> None:
        self.net = net
        self.reduction = reduction
        self._zero1 = ""
        self.g = _Graph()
        self._declared: set[str] = set()

    def _lists(self, prefix: str, count: int) -> list[str]:
        names = [f"{prefix}_g{k}" for k in range(count)]
        if prefix not in self._declared:
            self._declared.add(prefix)
            for k, n in enumerate(names):
                self.g.index_input(n, [f"{prefix}_m{k}"])
        return names

    def _pos(self, prefix: str, dims: list[str | int]) -> str:
        name = f"{prefix}_pos"
        if name not in self._declared:
            self._declared.add(name)
            self.g.index_input(name, dims)
        return name

    def _weights(self, conv: nn.Module, bn: nn.BatchNorm1d | None) -> tuple[Array, Array]:
        """Weight (Cout, K, Cin) and bias (Cout,) with ``bn`` folded in."""
        w = _param(conv, "weight")
        c_out, c_in = w.shape[0], w.shape[-1]
        w = w.reshape(c_out, -1, c_in)
        b = np.zeros(c_out, np.float32)
        if getattr(conv, "bias", None) is not None:
            b = _param(conv, "bias")
        if bn is not None:
            scale, shift = _fold(bn)
            w = w * scale[:, None, None]
            b = b * scale + shift
        return w, b

    def _products(self, xpad: str, w: Array, lists: list[str], ks: list[int]) -> list[str]:
        """``Xpad[g_k] @ W_k`` for every offset: exact FLOPs (only existing pairs, plus one zero row)."""
        return [
            self.g.op(
                "MatMul",
                [self.g.op("Gather", [xpad, g], "gather", axis=0), self.g.const("w", w[:, k].T)],
                "mm",
            )
            for g, k in zip(lists, ks, strict=True)
        ]

    def _offset_products(self, x: str, c_in: int, w: Array, lists: list[str], ks: list[int]) -> str:
        return self.g.op("Concat", self._products(self.g.pad(x, c_in), w, lists, ks), "cat", axis=0)

    def _scatter_sum(self, data: str, parts: list[str], prefix: str, rows_of: str) -> str:
        """``data`` (V + 1 rows, the last a dump row) plus each offset's products added at their output
        rows, one ScatterND per offset: within one offset an output has at most one input, so indices are
        unique and a multi-threaded scatter has no race; the sentinel rows land in the dump row, which is
        cut off (the first ``rows_of`` rows are kept)."""
        for k, part in enumerate(parts):
            name = f"{prefix}_o{k}"
            if name not in self._declared:
                self._declared.add(name)
                dims: list[str | int] = [f"{prefix}_m{k}", 1]
                self.g.inputs.append(helper.make_tensor_value_info(name, TensorProto.INT64, dims))
            data = self.g.op("ScatterND", [data, name, part], "scatter", reduction="add")
        if not self._zero1:
            self._zero1 = self.g.const("zero1", np.array([0], np.int64))
        end = self.g.op("Shape", [rows_of], "rows", start=0, end=1)
        return self.g.op("Slice", [data, self._zero1, end], "cut")

    def subm(self, x: str, level: int, conv: nn.Module, bn: nn.BatchNorm1d | None) -> str:
        w, b = self._weights(conv, bn)
        c_in = w.shape[2]
        if w.shape[1] == 1:  # 1x1: spconv's (Cout, 1, 1, 1, Cin) read as an (in, out) matrix by reshape
            raw = _param(conv, "weight").reshape(c_in, -1)
            if bn is not None:
                scale, _ = _fold(bn)
                raw = raw * scale[None, :]
            y = self.g.op("MatMul", [x, self.g.const("w1", raw)], "mm")
            return self.g.op("Add", [y, self.g.const("b", b)], "bias")
        assert w.shape[1] == SUBM_VOLUME
        ks = [k for k in range(SUBM_VOLUME) if k != SUBM_CENTRE]
        wc = self.g.const("wc", w[:, SUBM_CENTRE].T)
        lists = self._lists(f"s{level}", len(ks))
        if self.reduction == "scatter":
            xpad = self.g.pad(x, c_in)
            centre = self.g.op("MatMul", [xpad, wc], "mm")  # V + 1 rows: the last is the dump row
            # the bias joins the centre product (one Gemm) rather than a pass over the summed output
            centre = self.g.op("Add", [centre, self.g.const("b", b)], "bias")
            return self._scatter_sum(centre, self._products(xpad, w, lists, ks), f"s{level}", x)
        else:
            centre = self.g.op("MatMul", [x, wc], "mm")
            cat = self._offset_products(x, c_in, w, lists, ks)
            pos = self._pos(f"s{level}", [f"V{level}", len(ks)])
            gathered = self.g.op("Gather", [cat, pos], "gpos", axis=0)
            y = self.g.op("Add", [centre, self.g.reduce_rows(gathered)], "add")
        return self.g.op("Add", [y, self.g.const("b", b)], "bias")

    def down(self, x: str, level: int, conv: nn.Module, bn: nn.BatchNorm1d) -> str:
        w, b = self._weights(conv, bn)
        ks = list(range(DOWN_VOLUME))
        lists = self._lists(f"d{level}", DOWN_VOLUME)
        pos = self._pos(f"d{level}", [f"V{2 * level}", DOWN_VOLUME])
        if self.reduction == "scatter":
            # (coarse voxels + 1 dump row, Cout); the position table gives the coarse count
            shape = self.g.op("Shape", [pos], "shape", start=0, end=1)
            one = self.g.const("one", np.array([1], np.int64))
            cols = self.g.const("cols", np.array([w.shape[0]], np.int64))
            dims = self.g.op("Concat", [self.g.op("Add", [shape, one], "plus1"), cols], "dims", axis=0)
            start = self.g.op("Expand", [self.g.const("b", b), dims], "bias")  # every row starts at the bias
            parts = self._products(self.g.pad(x, w.shape[2]), w, lists, ks)
            return self._scatter_sum(start, parts, f"d{level}", pos)
        else:
            cat = self._offset_products(x, w.shape[2], w, lists, ks)
            y = self.g.reduce_rows(self.g.op("Gather", [cat, pos], "gpos", axis=0))
        return self.g.op("Add", [y, self.g.const("b", b)], "bias")

    def up(self, x: str, level: int, conv: nn.Module, bn: nn.BatchNorm1d) -> str:
        """Transposed conv from ``2 * level`` back to ``level``: every fine voxel reads its one parent."""
        w, b = self._weights(conv, bn)
        ks = list(range(DOWN_VOLUME))
        cat = self._offset_products(x, w.shape[2], w, self._lists(f"u{level}", DOWN_VOLUME), ks)
        y = self.g.op("Gather", [cat, self._pos(f"u{level}", [f"V{level}"])], "gpos", axis=0)
        return self.g.op("Add", [y, self.g.const("b", b)], "bias")

    def relu(self, x: str) -> str:
        return self.g.op("Relu", [x], "relu")

    def block(self, blk: BasicBlock, x: str, level: int) -> str:
        out = self.relu(self.subm(x, level, blk.conv1, blk.norm1.bn))
        out = self.subm(out, level, blk.conv2, blk.norm2.bn)
        res = x
        if blk.downsample is not None:
            res = self.subm(x, level, blk.downsample[0], _bn(blk.downsample[1]))
        return self.relu(self.g.op("Add", [out, res], "res"))

    def layer(self, seq: nn.Sequential, x: str, level: int) -> str:
        for blk in seq:
            assert isinstance(blk, BasicBlock)
            x = self.block(blk, x, level)
        return x

    def write(self) -> onnx.ModelProto:
        n, g = self.net, self.g
        g.inputs.append(
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["V1", n.config.in_channels])
        )
        p1 = self.relu(self.subm("features", 1, n.conv0p1s1, n.bn0.bn))
        x = self.relu(self.down(p1, 1, n.conv1p1s2, n.bn1.bn))
        b1 = self.layer(n.block1, x, 2)
        x = self.relu(self.down(b1, 2, n.conv2p2s2, n.bn2.bn))
        b2 = self.layer(n.block2, x, 4)
        x = self.relu(self.down(b2, 4, n.conv3p4s2, n.bn3.bn))
        b3 = self.layer(n.block3, x, 8)
        x = self.relu(self.down(b3, 8, n.conv4p8s2, n.bn4.bn))
        x = self.layer(n.block4, x, 16)
        decoder = (
            (n.convtr4p16s2, n.bntr4, b3, n.block5, 8),
            (n.convtr5p8s2, n.bntr5, b2, n.block6, 4),
            (n.convtr6p4s2, n.bntr6, b1, n.block7, 2),
            (n.convtr7p2s2, n.bntr7, p1, n.block8, 1),
        )
        for conv, bn, skip, blocks, level in decoder:
            up = self.relu(self.up(x, level, conv, bn.bn))
            x = self.layer(blocks, g.op("Concat", [up, skip], "skip", axis=1), level)
        weight = _param(n.final, "weight")
        head = weight.reshape(weight.shape[-1], weight.shape[0])  # spconv 1x1 convention (see Res16UNet.head)
        bias = _param(n.final, "bias")
        y = g.op("MatMul", [x, g.const("head", head)], "mm")
        g.nodes.append(helper.make_node("Add", [y, g.const("head_b", bias)], ["logits"]))
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["V1", int(weight.shape[0])])
        graph = helper.make_graph(g.nodes, "res16unet_segmentation", g.inputs, [out], g.inits)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lidar_ssl"
        )
        model.ir_version = 8  # readable by every onnxruntime / TensorRT parser of the last years
        return model


def build_onnx(spec: ModelSpec, reduction: Reduction = "gather") -> bytes:
    """The serialized ONNX graph of ``spec``'s network (fp32, BatchNorm folded), checked by onnx.

    ``reduction="gather"`` sums each output's contributions with Gather + ReduceSum over the position
    tables (every op TensorRT takes); ``"scatter"`` adds them with ScatterND(reduction=add), which
    moves only the existing pairs (faster on CPU, but TensorRT has no scatter-add). Weights and
    products are identical; only how the per-offset products are summed differs.
    """
    with torch.no_grad():
        net = build_network(spec, "portable", torch.device("cpu"))
        model = _UNetWriter(net, reduction).write()
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def _is_scatter_add(node: onnx.NodeProto) -> bool:
    return node.op_type == "ScatterND" and any(
        a.name == "reduction" and helper.get_attribute_value(a) == b"add" for a in node.attribute
    )


def fuse_scatter_chains(data: bytes) -> bytes:
    """The scatter-add graph with every chain of per-offset ``ScatterND`` (one per kernel offset of a conv)
    made one ``ScatterND`` over the concatenated indices and products: one copy of the output instead of
    one per offset (5-10 % of the network's time on a CPU core). For a session on **one** intra-op thread
    only: ONNX Runtime's CPU ScatterND splits the rows over its threads and loses additions when two of
    them add into the same output row (onnxruntime 1.32, 2 threads: wrong sums in half the runs), though
    the ONNX spec defines repeated indices under ``reduction="add"``. Weights and inputs are unchanged."""
    model = onnx.load_from_string(data)
    nodes = list(model.graph.node)
    uses: dict[str, int] = {o.name: 1 for o in model.graph.output}
    for node in nodes:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    producer = {out: node for node in nodes for out in node.output}
    nxt: dict[int, onnx.NodeProto] = {}  # id of a chain link -> the ScatterND that adds on top of it
    for node in nodes:
        prev = producer.get(node.input[0]) if _is_scatter_add(node) else None
        if prev is not None and _is_scatter_add(prev) and uses[prev.output[0]] == 1:
            nxt[id(prev)] = node
    heads = [
        n for n in nodes if _is_scatter_add(n) and id(n) in nxt and not _feeds_from_chain(n, producer, nxt)
    ]
    replaced: dict[int, list[onnx.NodeProto]] = {}  # id of a chain's last node -> the fused nodes
    dropped: set[int] = set()
    for head in heads:
        chain = [head]
        while id(chain[-1]) in nxt:
            chain.append(nxt[id(chain[-1])])
        tail = chain[-1].output[0]
        idx, upd = f"{tail}_idx", f"{tail}_upd"
        replaced[id(chain[-1])] = [
            helper.make_node("Concat", [n.input[1] for n in chain], [idx], axis=0),
            helper.make_node("Concat", [n.input[2] for n in chain], [upd], axis=0),
            helper.make_node("ScatterND", [head.input[0], idx, upd], [tail], reduction="add"),
        ]
        dropped.update(id(n) for n in chain)
    fused: list[onnx.NodeProto] = []
    for node in nodes:  # the fused nodes take the chain's last place: every product is made by then
        fused.extend(replaced.get(id(node), [] if id(node) in dropped else [node]))
    graph = helper.make_graph(fused, model.graph.name, model.graph.input, model.graph.output)
    graph.initializer.extend(model.graph.initializer)  # moved, not copied one by one
    model.graph.CopyFrom(graph)
    onnx.checker.check_model(model)
    out: bytes = model.SerializeToString()
    return out


def _feeds_from_chain(
    node: onnx.NodeProto, producer: dict[str, onnx.NodeProto], nxt: dict[int, onnx.NodeProto]
) -> bool:
    prev = producer.get(node.input[0])
    return prev is not None and nxt.get(id(prev)) is node


def input_names(levels: tuple[int, ...] = LEVELS) -> list[str]:
    """Every input of the graph, ``features`` first (matches :meth:`GraphTables.feeds`)."""
    names = ["features"]
    for level in levels:
        names += [f"s{level}_g{j}" for j in range(SUBM_VOLUME - 1)] + [f"s{level}_pos"]
    for level in levels[:-1]:
        names += [f"d{level}_g{k}" for k in range(DOWN_VOLUME)] + [f"d{level}_pos"]
        names += [f"u{level}_g{k}" for k in range(DOWN_VOLUME)] + [f"u{level}_pos"]
    return names
