"""Forward time of the frozen image teachers (DINOv2 ViT-S/B/L/g 14, ResNet-50) on small inputs.

Random weights (the cost does not depend on them): the DINOv2 sizes are built from their released configs
(:func:`lidar_ssl_core.models.dinov2.official_size_config`) on the meta device and filled with noise, then run
through :class:`~lidar_ssl_core.models.dinov2.Dinov2Features` as the teacher does (no gradient; float16
autocast on CUDA). Prints a markdown table; figures go to docs/teachers.md with the command.

    python benchmarks/bench_teachers.py                          # 1 image, 112x224 and 224x448, CPU
    python benchmarks/bench_teachers.py --sizes s b --shapes 1x224x448 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Any

import torch
from torch import nn

from lidar_ssl_core.models.dinov2 import Dinov2Features, build_model, official_size_config
from lidar_ssl_core.models.resnet import resnet50


def random_vit(size: str, registers: int) -> Dinov2Features:
    """A released-size DINOv2 with noise weights, built without transformers' slow initialisation."""
    with torch.device("meta"):
        model: Any = build_model(official_size_config(size, registers))
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    return Dinov2Features(model)


def time_forward(net: nn.Module, x: torch.Tensor, repeats: int, half: bool) -> list[float]:
    """Seconds per forward (after one warm-up), no gradient."""
    ctx = torch.autocast("cuda", dtype=torch.float16) if half else contextlib.nullcontext()
    times = []
    with torch.no_grad(), ctx:
        for i in range(repeats + 1):
            if x.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            net(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["s", "b", "l", "g"], choices=["s", "b", "l", "g"])
    parser.add_argument("--registers", type=int, default=0, help="register tokens (0 or 4)")
    parser.add_argument(
        "--shapes", nargs="+", default=["1x112x224", "1x224x448"], help="BxHxW, H, W % 14 == 0"
    )
    parser.add_argument("--max-tokens-g", type=int, default=128, help="skip ViT-g above this many patches")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--resnet", action="store_true", help="also time the dilated ResNet-50")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    half = device.type == "cuda"
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    print(f"device {device}, threads {torch.get_num_threads()}, float16 autocast: {half}")
    print("| teacher | params (M) | input BxHxW | patches | s / forward (median) |")
    print("|---|---|---|---|---|")
    nets: list[tuple[str, nn.Module]] = []
    if args.resnet:
        nets.append(("ResNet-50 dilated", resnet50(dilated=True, include_fc=False)))
    names = {"s": "S", "b": "B", "l": "L", "g": "g"}
    nets += [(f"DINOv2 ViT-{names[s]}/14", random_vit(s, args.registers)) for s in args.sizes]
    for name, net in nets:
        net = net.to(device).eval()
        params = sum(p.numel() for p in net.parameters()) / 1e6
        for b, h, w in shapes:
            patches = (h // 14) * (w // 14)
            if name.endswith("ViT-g/14") and patches > args.max_tokens_g:
                continue
            x = torch.randn(b, 3, h, w, device=device)
            times = time_forward(net, x, args.repeats, half and "DINOv2" in name)
            print(f"| {name} | {params:.0f} | {b}x{h}x{w} | {patches} | {statistics.median(times):.3f} |")
        del net


if __name__ == "__main__":
    main()
