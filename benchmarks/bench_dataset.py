"""Training-sample throughput on nuScenes-sized input (a benchmark, not a test).

Writes (once, cached under .cache/bench/) a synthetic bag of the ``nuscenes_like`` preset: six cameras at
1600x900 JPEG and a 32-beam sweep of about 34k points per frame, then times the full sample path
(random access into the bag, JPEG decode, superpixels, projection, augmentations, voxelisation, collate)
through a torch DataLoader with 0 and 2 worker processes, with a cold and a warm superpixel cache.

    python benchmarks/bench_dataset.py [--frames 12] [--batches 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from lidar_ssl_core.config import load_config
from lidar_ssl_core.data.dataset import PairedBagDataset, make_loader
from lidar_ssl_core.superpixels import Superpixelizer
from lidar_ssl_core.synth import preset
from lidar_ssl_core.synth.bagfile import write_synthetic_bag

ROOT = Path(__file__).resolve().parents[1]


def bench_bag(frames: int) -> Path:
    path = ROOT / ".cache" / "bench" / f"nuscenes_like_{frames}"
    if not path.exists():
        start = time.perf_counter()
        write_synthetic_bag(path, preset("nuscenes_like", n_frames=frames, seed=7))
        print(f"generated {path} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return path


def run(
    bag: Path, workers: int, method: str, cache: Path | None, batches: int, batch_size: int
) -> tuple[float, dict[str, float]]:
    overrides: dict[str, object] = {
        "data.bags": [str(bag)],
        "data.loader.num_workers": workers,
        "data.loader.batch_size": batch_size,
        "data.superpixels.method": method,
        "data.superpixels.cache_dir": str(cache) if cache else None,
    }
    cfg = load_config(overrides=overrides)
    dataset = PairedBagDataset(cfg.data, train=True, superpixels=Superpixelizer(cfg.data.superpixels))
    loader = make_loader(dataset, shuffle=False)
    n = 0
    stats = {"points": 0.0, "pairs": 0.0, "voxels": 0.0}
    start = time.perf_counter()
    for i, batch in enumerate(loader):
        if i >= batches:
            break
        n += int(batch["coords"][:, 0].max()) + 1
        stats["points"] += len(batch["points"])
        stats["pairs"] += len(batch["pairing_points"])
        stats["voxels"] += len(batch["coords"])
    elapsed = time.perf_counter() - start
    return n / elapsed, {k: v / max(n, 1) for k, v in stats.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bag = bench_bag(args.frames)
    print(f"CPU cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}")
    print("| superpixels | cache | workers | samples/s | points/sample | voxels/sample | pairs/sample |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for method in ("fast", "slic"):
        for workers in (0, 2):
            cache = Path(tempfile.mkdtemp(prefix="sp_cache_"))
            try:
                for state in ("cold", "warm"):
                    rate, per = run(bag, workers, method, cache, args.batches, args.batch_size)
                    print(
                        f"| {method} | {state} | {workers} | {rate:.2f} | {per['points']:.0f} | "
                        f"{per['voxels']:.0f} | {per['pairs']:.0f} |",
                        flush=True,
                    )
            finally:
                shutil.rmtree(cache, ignore_errors=True)
    print(f"\ncommand: python benchmarks/bench_dataset.py --frames {args.frames} --batches {args.batches}")


if __name__ == "__main__":
    main()
