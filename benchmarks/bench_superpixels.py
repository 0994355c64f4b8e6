"""Fast SLIC vs scikit-image's SLIC (SLidR settings) at 1600x900: speed and quality (a benchmark, not a test).

Speed: the six nuScenes fixture images (``$LIDAR_SSL_FIXTURES/nuscenes-mini-1/samples/CAM_*/*.jpg``,
default ``<repo>/../shared/fixtures``), median of ``--repeats`` runs each, one process, OpenCV limited to
one thread and then with its default threads (scikit-image is single-threaded either way).
Quality: boundary recall (2 px) and undersegmentation error of both against the per-pixel
instance-within-class truth of the synthetic ``nuscenes_like`` world (6 cameras x ``--seeds`` seeds).

    python benchmarks/bench_superpixels.py [--repeats 3] [--seeds 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from lidar_ssl_core.superpixels import boundary_recall, slic_fast, slic_reference, undersegmentation_error
from lidar_ssl_core.synth import generate_world, preset, simulate

ROOT = Path(__file__).resolve().parents[1]
Segmenter = Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.int32]]


def fixture_images() -> list[tuple[str, npt.NDArray[np.uint8]]]:
    root = Path(os.environ.get("LIDAR_SSL_FIXTURES", ROOT.parent / "shared" / "fixtures"))
    paths = sorted((root / "nuscenes-mini-1" / "samples").glob("CAM_*/*.jpg"))
    if not paths:
        raise SystemExit(f"no nuScenes fixture images under {root}; set LIDAR_SSL_FIXTURES")
    out = []
    for path in paths:
        bgr = cv2.imread(str(path))
        if bgr is None:
            raise SystemExit(f"cannot read {path}")
        rgb: npt.NDArray[np.uint8] = np.ascontiguousarray(bgr[..., ::-1], dtype=np.uint8)
        out.append((path.parent.name, rgb))
    return out


def median_time(segment: Segmenter, rgb: npt.NDArray[np.uint8], repeats: int) -> tuple[float, int]:
    times, n = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        labels = segment(rgb)
        times.append(time.perf_counter() - start)
        n = int(labels.max()) + 1
    return statistics.median(times), n


def speed_table(repeats: int) -> list[str]:
    images = fixture_images()
    default_threads = cv2.getNumThreads()
    rows = [
        "| image | skimage s | fast s (cv2 1 thread) | speed-up | fast s (cv2 default threads) | speed-up "
        "| segments skimage / fast |",
        "|---|---|---|---|---|---|---|",
    ]
    totals = np.zeros(3)
    for name, rgb in images:
        slic_fast(rgb)  # warm-up (imports, allocator)
        t_ref, n_ref = median_time(slic_reference, rgb, repeats)
        cv2.setNumThreads(1)
        t_one, n_fast = median_time(slic_fast, rgb, repeats)
        cv2.setNumThreads(default_threads)
        t_def, _ = median_time(slic_fast, rgb, repeats)
        totals += (t_ref, t_one, t_def)
        rows.append(
            f"| {name} {rgb.shape[1]}x{rgb.shape[0]} | {t_ref:.3f} | {t_one:.3f} | {t_ref / t_one:.1f}x "
            f"| {t_def:.3f} | {t_ref / t_def:.1f}x | {n_ref} / {n_fast} |"
        )
    k = len(images)
    rows.append(
        f"| **mean** | {totals[0] / k:.3f} | {totals[1] / k:.3f} | {totals[0] / totals[1]:.1f}x "
        f"| {totals[2] / k:.3f} | {totals[0] / totals[2]:.1f}x | |"
    )
    rows.append(f"\n(cv2 default threads here = {default_threads}; skimage is single-threaded)")
    return rows


def quality_table(seeds: int) -> list[str]:
    rows = [
        "| seed | camera | BR skimage | BR fast | UE skimage | UE fast | segments skimage / fast |",
        "|---|---|---|---|---|---|---|",
    ]
    metrics = []
    for seed in range(seeds):
        cfg = preset("nuscenes_like", n_frames=1, seed=seed)
        frame = next(iter(simulate(generate_world(cfg), cfg)))
        for name, cam in frame.cameras.items():
            gt = cam.instance.astype(np.int64) * 64 + cam.semantic
            ref, fast = slic_reference(cam.rgb), slic_fast(cam.rgb)
            m = (
                boundary_recall(ref, gt),
                boundary_recall(fast, gt),
                undersegmentation_error(ref, gt),
                undersegmentation_error(fast, gt),
            )
            metrics.append(m)
            rows.append(
                f"| {seed} | {name} | {m[0]:.3f} | {m[1]:.3f} | {m[2]:.3f} | {m[3]:.3f} "
                f"| {int(ref.max()) + 1} / {int(fast.max()) + 1} |"
            )
    mean = np.mean(np.array(metrics), axis=0)
    rows.append(f"| **mean** | | {mean[0]:.3f} | {mean[1]:.3f} | {mean[2]:.3f} | {mean[3]:.3f} | |")
    rows.append(f"\nboundary recall fast - skimage = {mean[1] - mean[0]:+.4f} (absolute)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs")
    print(f"load average at start: {os.getloadavg()}\n")
    print("## Speed (nuScenes fixture images, median of", args.repeats, "runs)\n")
    print("\n".join(speed_table(args.repeats)))
    print(f"\n## Quality (synthetic nuscenes_like, 6 cameras x {args.seeds} seeds, 1600x900)\n")
    print("\n".join(quality_table(args.seeds)))
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
