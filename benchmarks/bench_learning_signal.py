"""Learning-signal benchmark: does image-to-LiDAR pretraining give the backbone anything a probe can use?

On the synthetic world (several training drives, one held-out validation drive, per-point ground truth):
pretrain the same backbone with PPKT, SLidR, ST-SLidR and ScaLR-style feature distillation from the
label-free filterbank teacher (``lidar_ssl_core/models/filterbank.py``), then linear-probe each one
(frozen backbone and BatchNorm, point-wise linear head; the protocol's lr 0.05 and 50 epochs, on
features computed once without augmentation) and a randomly initialised backbone the same way, and report
the validation mIoU of every probe. All on CPU; the default sizes take well under an hour on 2 cores.

    python benchmarks/bench_learning_signal.py                 # the table in docs/downstream-evaluation.md
    python benchmarks/bench_learning_signal.py --quick         # a few minutes, for a smoke test

Results (markdown table and JSON) go to ``--out`` (default ``.cache/bench/learning-signal``).
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
from lidar_ssl_core.models.unet import BackboneConfig
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
    name: str, ckpt: Path | None, args: argparse.Namespace, data: DataConfig, train: Any, val: Any
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
        run_dir=args.out / "probe" / name,
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
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the whole chain")
    args = parser.parse_args()
    if args.quick:
        args.train_drives, args.frames, args.pretrain_epochs, args.probe_epochs = 1, 8, 1, 2
        args.backbone = "tiny"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    train_bags, val_bags = make_world(
        args.out, args.train_drives, args.frames, masks="olivine" in args.methods
    )
    data = data_config(train_bags, args.batch_size, args.workers)
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
    for method in args.methods:
        run = args.out / "pretrain" / method
        results["pretrain"][method] = pretrain(method, args, data, run)
        log.info("pretrained %s: %s", method, results["pretrain"][method])
    for name in ["random", *args.methods]:
        ckpt = None if name == "random" else args.out / "pretrain" / name / "ckpt_last.pt"
        results["probe"][name] = probe(name, ckpt, args, data, train, val)
        log.info("probe %s: mIoU %.2f", name, 100 * results["probe"][name]["miou"])
    results["total_seconds"] = time.perf_counter() - t0
    (args.out / "results.json").write_text(json.dumps(results, indent=2))

    names = SYNTHETIC.class_names
    lines = [
        "| backbone | probe mIoU (%) | accuracy (%) | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for name, r in results["probe"].items():
        ious = " | ".join("-" if v is None else f"{100 * v:.1f}" for v in r["iou"])
        lines.append(f"| {name} | {100 * r['miou']:.2f} | {100 * r['accuracy']:.1f} | {ious} |")
    table = "\n".join(lines)
    (args.out / "results.md").write_text(table + "\n")
    print(table)
    print(f"\ntotal {results['total_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
