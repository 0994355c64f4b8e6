"""Per-scan inference latency of the deployment engine, per backend and preset (a benchmark, not a test).

For a nuScenes-sized scan (the real LIDAR_TOP fixture, 34,688 points) and a KITTI-sized one (the real
SemanticKITTI velodyne fixture, 124,668 points): latency p50 / p99 split into voxelize / kernel maps /
network / post-processing, throughput, peak memory (peak RSS of a fresh worker process per backend and
preset; CUDA: peak allocated) and the package size, for every backend available here and the ``small``
and full (``res16unet34c``) presets. Weights are random (seeded): speed does not depend on them.

python benchmarks/bench_inference.py [--presets small,res16unet34c] [--backends torch,onnxruntime]
    [--repeats 5] [--threads 2] [--device cpu] [--json out.json] [--no-paired]

With both torch and onnxruntime asked for, a paired run follows: both engines in one process, the scans
alternating between them, for a speed-up that a shared machine's neighbours do not bias towards one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("LIDAR_SSL_FIXTURES", ROOT.parent / "shared" / "fixtures"))
STAGES = ("voxelize", "kernel_maps", "network", "postprocess")


def scans() -> dict[str, np.ndarray]:
    """The two real scans (x y z intensity)."""
    (nus,) = (FIXTURES / "nuscenes-mini-1" / "samples" / "LIDAR_TOP").glob("*.pcd.bin")
    kitti = FIXTURES / "semantickitti" / "sequences" / "00" / "velodyne" / "000000.bin"
    return {
        "nuScenes 34k": np.fromfile(nus, np.float32).reshape(-1, 5)[:, :4],
        "KITTI 120k": np.fromfile(kitti, np.float32).reshape(-1, 4),
    }


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One (preset, backend) in this process: per-scan stage timings and peak memory."""
    import torch

    from lidar_ssl_core.deploy.engine import load_engine

    engine = load_engine(args.package, args.backend, device=args.device, threads=args.threads)
    out: dict[str, Any] = {}
    for name, points in scans().items():
        for _ in range(args.warmup):
            engine.segment_points(points)
        runs = []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            seg = engine.segment_points(points)
            total = 1e3 * (time.perf_counter() - t0)
            runs.append({**seg.timings_ms, "total": total, "cpu": 1e3 * (time.process_time() - c0)})
        table = {k: [r[k] for r in runs] for k in (*STAGES, "total", "cpu")}
        out[name] = {
            "points": len(points),
            "voxels": int(seg.num_voxels),
            "p50": {k: float(np.percentile(v, 50)) for k, v in table.items()},
            "p99": {k: float(np.percentile(v, 99)) for k, v in table.items()},
            "scans_per_s": 1e3 / float(np.mean(table["total"])),
        }
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.device.startswith("cuda"):
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def paired_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Every backend of ``--backend`` (comma-separated) loaded in this one process, scans alternating
    between them: on a shared machine each backend then meets the same neighbours, so the ratio of
    their p50 totals is steadier than that of two workers run one after the other."""
    from lidar_ssl_core.deploy.engine import load_engine

    names = args.backend.split(",")
    engines = {b: load_engine(args.package, b, device=args.device, threads=args.threads) for b in names}
    out: dict[str, Any] = {}
    for scan, points in scans().items():
        totals: dict[str, list[float]] = {b: [] for b in names}
        for rep in range(args.warmup + args.repeats):
            for b in names if rep % 2 == 0 else names[::-1]:
                t0 = time.perf_counter()
                engines[b].segment_points(points)
                if rep >= args.warmup:
                    totals[b].append(1e3 * (time.perf_counter() - t0))
        out[scan] = {b: float(np.percentile(v, 50)) for b, v in totals.items()}
    return out


def run_worker(package: Path, backend: str, args: argparse.Namespace) -> dict[str, Any] | str:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "--package",
        str(package),
        "--backend",
        backend,
        "--device",
        args.device,
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if "," in backend:
        cmd.append("--paired")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def available_backends(device: str) -> list[str]:
    names = ["torch", "onnxruntime"]
    if device.startswith("cuda"):
        names += ["spconv", "tensorrt"]
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="small,res16unet34c")
    parser.add_argument("--backends", default=None, help="default: all available on --device")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--no-paired",
        action="store_true",
        help="skip the paired run (torch and onnxruntime in one process, scans alternating)",
    )
    parser.add_argument("--paired", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--package", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="torch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(paired_worker(args) if args.paired else worker(args)))
        return

    from lidar_ssl_core.deploy.demo import random_segmentation_checkpoint
    from lidar_ssl_core.deploy.package import export_package
    from lidar_ssl_core.deploy.spec import spec_from_checkpoint
    from lidar_ssl_core.downstream.classes import NUSCENES

    backends = args.backends.split(",") if args.backends else available_backends(args.device)
    formats = ("onnx", "tensorrt") if "tensorrt" in backends else ("onnx",)
    results: dict[str, Any] = {"threads": args.threads, "device": args.device, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            ckpt = random_segmentation_checkpoint(Path(tmp) / f"{preset}.pt", NUSCENES, preset=preset)  # type: ignore[arg-type]
            package = Path(tmp) / f"{preset}_pkg"
            pkg = export_package(spec_from_checkpoint(ckpt), package, formats=formats)  # type: ignore[arg-type]
            size = {name: int(e["bytes"]) for name, e in pkg.manifest["files"].items()}
            results[preset] = {"package_bytes": size}
            for backend in backends:
                results[preset][backend] = run_worker(package, backend, args)
                print(f"{preset} {backend}: done", file=sys.stderr)
            if {"torch", "onnxruntime"} <= set(backends) and not args.no_paired:
                results[preset]["paired"] = run_worker(package, "torch,onnxruntime", args)
    print_tables(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def print_tables(results: dict[str, Any]) -> None:
    print(
        "| preset | backend | scan | voxels | p50 total ms | p99 total ms | voxelize | kernel maps | network "
        "| post | kernel-map share | scans/s | peak RSS MB | p50 CPU ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for preset, per in results.items():
        if not isinstance(per, dict) or "package_bytes" not in per:
            continue
        for backend, res in per.items():
            if backend in ("package_bytes", "paired"):
                continue
            if isinstance(res, str):
                print(f"| {preset} | {backend} | - | - | failed: {res} |||||||||")
                continue
            for scan, r in res.items():
                if not isinstance(r, dict):
                    continue
                p50 = r["p50"]
                share = 100 * p50["kernel_maps"] / max(p50["total"], 1e-9)
                stages = " | ".join(f"{p50[k]:.0f}" for k in STAGES)
                print(
                    f"| {preset} | {backend} | {scan} | {r['voxels']} | {p50['total']:.0f} "
                    f"| {r['p99']['total']:.0f} | {stages} | {share:.0f}% | {r['scans_per_s']:.2f} "
                    f"| {res['peak_rss_mb']:.0f} | {p50['cpu']:.0f} |"
                )
        sizes = ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in per["package_bytes"].items())
        print(f"\n{preset} package: {sizes}\n")
        paired = per.get("paired")
        if isinstance(paired, str):
            print(f"{preset} paired run failed: {paired}\n")
        elif paired:
            print(f"{preset}, paired run (one process, scans alternating), p50 total ms:\n")
            print("| scan | torch | onnxruntime | onnxruntime speed-up |\n|---|---|---|---|")
            for scan, r in paired.items():
                ratio = r["torch"] / r["onnxruntime"]
                print(f"| {scan} | {r['torch']:.0f} | {r['onnxruntime']:.0f} | {ratio:.2f}x |")
            print()


if __name__ == "__main__":
    main()
