"""Learning-signal benchmark: does image-to-LiDAR pretraining give the backbone anything a probe can use?

On the synthetic world (several training drives, one held-out validation drive, per-point ground truth):
pretrain the same backbone with PPKT, SLidR, ST-SLidR and ScaLR-style feature distillation from the
label-free filterbank teacher (``lidar_ssl_core/models/filterbank.py``), then linear-probe each one
(frozen backbone and BatchNorm, point-wise linear head; the protocol's lr 0.05 and 50 epochs, on
features computed once without augmentation) and a randomly initialised backbone the same way, and report
the validation mIoU of every probe. All on CPU; the default sizes take well under an hour on 2 cores.

    python benchmarks/bench_learning_signal.py                 # one seed (0) of the default methods
    python benchmarks/bench_learning_signal.py --quick         # a few minutes, for a smoke test

Several seeds, each in its own process (they share the cached world; generate it first), then the table
of mean and spread over the seeds that is in docs/downstream-evaluation.md:

    python benchmarks/bench_learning_signal.py --world-only --methods olivine
    for s in 0 1 2; do python benchmarks/bench_learning_signal.py --seed $s --threads 1 \
        --methods ppkt slidr st-slidr scalr nclr olivine & done; wait
    python benchmarks/bench_learning_signal.py --summarize

Results (markdown table and JSON) go to ``--out`` (default ``.cache/bench/learning-signal``): one
``seed<k>/`` folder per seed, and ``results.{md,json}`` of ``--summarize``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from lidar_ssl_core.config import DataConfig, load_config
from lidar_ssl_core.downstream.classes import SYNTHETIC
from lidar_ssl_core.downstream.config import DownstreamConfig
from lidar_ssl_core.downstream.data import index_labelled_sweeps
from lidar_ssl_core.downstream.train import SegmentationTrainer
from lidar_ssl_core.models.config import BackboneConfig
from lidar_ssl_core.synth import preset
from lidar_ssl_core.synth.bagfile import write_synthetic_bag
from lidar_ssl_core.synth.weak_masks import write_weak_masks
from lidar_ssl_core.train import PretrainConfig, build_pretraining

log = logging.getLogger("bench_learning_signal")


def make_world(out: Path, n_train: int, frames: int, *, masks: bool = False) -> tuple[list[Path], list[Path]]:
    """Training drives (seeds 101..) and one validation drive (seed 900), generated once and cached; with
    ``masks``, the noisy weak-label masks of the training drives too (OLIVINE; synth/weak_masks.py)."""
    train: list[Path] = []
    val: list[Path] = []
    for i, seed in enumerate([*range(101, 101 + n_train), 900]):
        path = out / "world" / (f"train_{seed}" if i < n_train else f"val_{seed}")
        config = preset("sample", n_frames=frames, seed=seed)
        if not path.exists():
            write_synthetic_bag(path, config)
        if masks and i < n_train and not (out / "masks" / path.name).exists():
            write_weak_masks(config, path.name, out / "masks")
        (train if i < n_train else val).append(path)
    return train, val


#: per-method settings of the benchmark: NCLR's image branch at a CPU size, OLIVINE's synthetic masks
def method_settings(method: str, args: argparse.Namespace) -> dict[str, Any]:
    if method == "nclr":  # the whole ResNet-50 + FPN would dominate a CPU run; AdamW at the paper's lr
        return {"nclr": {"image_layers": (1, 1, 1, 1), "fpn_dim": 64, "keypoints": 1024, "num_pairs": 512}}
    if method == "olivine":  # the synthetic classes; the warm-up scaled to the short run
        return {"olivine": {"mask_dir": args.out / "masks", "num_classes": 10, "kl_warmup_steps": 20}}
    if method == "scalr":  # ScaLR's 3,500-step warm-up exceeds the whole run: the common per-epoch cosine
        return {"schedule": "cosine", "min_lr": 0.0}
    return {}


def data_config(bags: list[Path], batch_size: int, workers: int) -> DataConfig:
    return load_config(
        overrides={
            "data.bags": [str(b) for b in bags],
            "data.loader.batch_size": batch_size,
            "data.loader.num_workers": workers,
        }
    ).data


def pretrain(method: str, args: argparse.Namespace, data: DataConfig, run: Path) -> dict[str, Any]:
    ckpt = run / "ckpt_last.pt"
    cfg = PretrainConfig.model_validate(
        {
            "method": method,
            "epochs": args.pretrain_epochs,
            "lr": args.pretrain_lr,
            "run_dir": run,
            "checkpoint_every": 0,
            "seed": args.seed,
            "backbone": {"preset": args.backbone},
            "teacher": {"arch": "filterbank"},
            **method_settings(method, args),
        }
    )
    trainer = build_pretraining(cfg, data, device="cpu")
    if trainer.resume() and trainer.epoch >= cfg.epochs:
        log.info("%s: pretrained already (%s)", method, ckpt)
        return {"seconds": None, "first_loss": None, "last_loss": None}
    start = time.perf_counter()
    result = trainer.fit()
    trainer.close()
    k = max(1, len(result.losses) // 10)
    return {
        "seconds": time.perf_counter() - start,
        "steps": result.global_step,
        "first_loss": sum(result.losses[:k]) / k,
        "last_loss": sum(result.losses[-k:]) / k,
    }


def probe(
    name: str,
    ckpt: Path | None,
    args: argparse.Namespace,
    data: DataConfig,
    train: Any,
    val: Any,
    seed_dir: Path,
) -> dict[str, Any]:
    cfg = DownstreamConfig(
        class_map="synthetic",
        pretrained=ckpt,
        epochs=args.probe_epochs,
        lr_head=args.probe_lr,
        probe_cache=True,
        batch_size=args.batch_size,
        num_workers=args.workers,
        seed=args.seed,
        backbone=BackboneConfig(preset=args.backbone, normalize=False, bn_momentum=0.02),
        run_dir=seed_dir / "probe" / name,
    )
    start = time.perf_counter()
    result = SegmentationTrainer(cfg, data, SYNTHETIC, "probe", train, val).fit()
    assert result.confusion is not None
    cm = result.confusion
    return {
        "miou": cm.miou(),
        "accuracy": cm.accuracy(),
        "iou": [None if v != v else float(v) for v in cm.iou_per_class()],
        "seconds": time.perf_counter() - start,
        "final_loss": result.history[-1].loss,
    }


def summarize(out: Path) -> str:
    """Mean and sample standard deviation over the seeds of every backbone's probe mIoU, and its gain
    over the randomly initialised backbone of the same seed (a paired difference: the seed fixes the
    probe's initialisation and batch order for every backbone alike)."""
    runs = {
        int(p.parent.name[4:]): json.loads(p.read_text())
        for p in sorted(out.glob("seed*/results.json"))
        if p.parent.name[4:].isdigit()
    }
    if not runs:
        raise SystemExit(f"no seed*/results.json under {out}")
    seeds = sorted(runs)
    names = list(dict.fromkeys(n for r in runs.values() for n in r["probe"]))

    def stats(values: list[float]) -> tuple[float, float]:
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)
        return mean, var**0.5

    rows: dict[str, Any] = {}
    lines = [
        "| backbone | seeds | probe mIoU (%) mean ± std | gain over random (points) mean ± std | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | pretraining min (mean) |",
        "|---|---|---|---|" + "---|" * len(seeds) + "---|",
    ]
    for name in names:
        have = [s for s in seeds if name in runs[s]["probe"]]
        miou = [100 * runs[s]["probe"][name]["miou"] for s in have]
        gain = [
            100 * (runs[s]["probe"][name]["miou"] - runs[s]["probe"]["random"]["miou"])
            for s in have
            if "random" in runs[s]["probe"]
        ]
        minutes = [
            runs[s]["pretrain"][name]["seconds"] / 60
            for s in have
            if name in runs[s]["pretrain"] and runs[s]["pretrain"][name]["seconds"]
        ]
        m, sd = stats(miou)
        g, gsd = stats(gain) if gain and name != "random" else (0.0, 0.0)
        per_seed = " | ".join(
            f"{100 * runs[s]['probe'][name]['miou']:.2f}" if s in have else "-" for s in seeds
        )
        time_cell = f"{sum(minutes) / len(minutes):.1f}" if minutes else "-"
        gain_cell = "-" if name == "random" else f"{g:+.2f} ± {gsd:.2f}"
        cells = [name, str(len(have)), f"{m:.2f} ± {sd:.2f}", gain_cell, per_seed, time_cell]
        lines.append("| " + " | ".join(cells) + " |")
        rows[name] = {"seeds": have, "miou": miou, "gain": gain, "pretrain_minutes": minutes}
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    table = "\n".join(lines)
    (out / "results.md").write_text(table + "\n")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path(".cache/bench/learning-signal"))
    parser.add_argument("--train-drives", type=int, default=2)
    parser.add_argument("--frames", type=int, default=24, help="sweeps per drive")
    parser.add_argument("--backbone", default="small")
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--pretrain-lr", type=float, default=0.5)
    parser.add_argument("--probe-epochs", type=int, default=50)
    parser.add_argument("--probe-lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["ppkt", "slidr", "st-slidr", "scalr"],
        help="scalr and nclr use their own AdamW (pretrain.scalr.lr, pretrain.nclr.lr), not "
        "--pretrain-lr; also: nclr, olivine (weak-label masks are generated for it)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads of this process")
    parser.add_argument("--world-only", action="store_true", help="generate the cached world and stop")
    parser.add_argument(
        "--summarize", action="store_true", help="tabulate every seed<k>/results.json under --out"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the whole chain")
    args = parser.parse_args()
    if args.quick:
        args.train_drives, args.frames, args.pretrain_epochs, args.probe_epochs = 1, 8, 1, 2
        args.backbone = "tiny"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.summarize:
        print(summarize(args.out))
        return
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    train_bags, val_bags = make_world(
        args.out, args.train_drives, args.frames, masks="olivine" in args.methods
    )
    if args.world_only:
        return
    data = data_config(train_bags, args.batch_size, args.workers)
    seed_dir = args.out / f"seed{args.seed}"
    train = index_labelled_sweeps(train_bags, data).sweeps
    val = index_labelled_sweeps(val_bags, data).sweeps
    log.info(
        "world: %d training sweeps, %d validation sweeps (%.0f s)",
        len(train),
        len(val),
        time.perf_counter() - t0,
    )

    results: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "pretrain": {},
        "probe": {},
    }
    seed_dir.mkdir(parents=True, exist_ok=True)
    for name in ["random", *args.methods]:  # each method pretrained then probed: partial runs tabulate
        ckpt = None
        if name != "random":
            run = seed_dir / "pretrain" / name
            results["pretrain"][name] = pretrain(name, args, data, run)
            log.info("pretrained %s: %s", name, results["pretrain"][name])
            ckpt = run / "ckpt_last.pt"
        results["probe"][name] = probe(name, ckpt, args, data, train, val, seed_dir)
        log.info("probe %s: mIoU %.2f", name, 100 * results["probe"][name]["miou"])
        results["total_seconds"] = time.perf_counter() - t0
        (seed_dir / "results.json").write_text(json.dumps(results, indent=2))

    names = SYNTHETIC.class_names
    lines = [
        "| backbone | probe mIoU (%) | accuracy (%) | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for name, r in results["probe"].items():
        ious = " | ".join("-" if v is None else f"{100 * v:.1f}" for v in r["iou"])
        lines.append(f"| {name} | {100 * r['miou']:.2f} | {100 * r['accuracy']:.1f} | {ious} |")
    table = "\n".join(lines)
    (seed_dir / "results.md").write_text(table + "\n")
    print(table)
    print(f"\ntotal {results['total_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
