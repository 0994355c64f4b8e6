"""``lidar-ssl probe | finetune | evaluate | segment``: the downstream commands (registered in ``cli.py``).

Like ``cli.py``, only this module prints, shows progress and turns errors into exit codes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from lidar_ssl_core.cli_common import (
    ConfigOption,
    CountProgress,
    SetOption,
    StrictOption,
    console,
    fail,
    parse_sets,
    report_damage,
    write_run_config,
)
from lidar_ssl_core.errors import ConfigError, LidarSslError

if TYPE_CHECKING:
    from lidar_ssl_core.config import Config
    from lidar_ssl_core.downstream.config import Mode
    from lidar_ssl_core.downstream.data import SweepIndex

BagList = Annotated[Optional[list[Path]], typer.Option(help="labelled bags")]  # noqa: UP045
Pretrained = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(help="pretraining (or segmentation) checkpoint; none = random init"),
]
ResumeOption = Annotated[bool, typer.Option(help="continue from run_dir/model_last.pt when present")]
RunDir = Annotated[Optional[Path], typer.Option(help="output folder")]  # noqa: UP045
VoxelSize = Annotated[
    Optional[tuple[float, float, float]],  # noqa: UP045
    typer.Option(help="restate the voxel size (checked against the model's)"),
]
Fraction = Annotated[Optional[float], typer.Option(help="share of training scenes, e.g. 0.01")]  # noqa: UP045


def _config(
    config: Path | None, sets: list[str] | None, overrides: dict[str, Any], checkpoint: Path | None = None
) -> Config:
    """The configuration; with a ``checkpoint`` (``--pretrained``/``--model``, or the config's
    downstream.pretrained), its architecture and voxel grid replace the defaults (an explicit contradicting
    setting is refused)."""
    from lidar_ssl_core.config import load_config

    values = parse_sets(sets)
    values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = load_config(config, values)
    checkpoint = checkpoint or cfg.downstream.pretrained
    if checkpoint is None:
        return cfg
    from lidar_ssl_core.downstream.model import settings_from_checkpoint

    return load_config(config, {**values, **settings_from_checkpoint(checkpoint, cfg)})


def _report_index(index: SweepIndex) -> None:
    """Say what indexing left out: sweeps without labels (e.g. nuScenes non-keyframes) and bad messages."""
    unlabelled, bad = sum(index.unlabelled.values()), sum(index.bad.values())
    if unlabelled or bad:
        console.print(
            f"{len(index.sweeps)} labelled sweeps; left out: {unlabelled} unlabelled, {bad} unreadable"
        )


def _train(
    mode: Mode,
    config: Path | None,
    sets: list[str] | None,
    overrides: dict[str, Any],
    resume: bool,
    strict: bool = False,
) -> None:
    from lidar_ssl_core.downstream.classes import load_class_map, recorded_class_map
    from lidar_ssl_core.downstream.data import index_labelled_sweeps
    from lidar_ssl_core.downstream.report import write_evaluation_report
    from lidar_ssl_core.downstream.train import EpochStats, SegmentationTrainer, select_training_sweeps
    from lidar_ssl_core.resources import default_bag

    cfg = _config(config, sets, overrides)
    train_bags = list(cfg.downstream.train_bags or cfg.data.bags or (default_bag(),))
    explicit_map = "class_map" in cfg.downstream.model_fields_set
    map_source = "downstream.class_map" if explicit_map else "the default"
    if not explicit_map:  # the bags may say
        recorded = recorded_class_map([*train_bags, *cfg.downstream.val_bags])
        if recorded is not None:
            cfg = cfg.model_copy(
                update={"downstream": cfg.downstream.model_copy(update={"class_map": recorded})}
            )
            map_source = "recorded in the bags"
    ds = cfg.downstream
    class_map = load_class_map(ds.class_map)
    report_damage([*train_bags, *ds.val_bags], strict, cfg.data.profile.lidar_topic)
    index = index_labelled_sweeps(train_bags, cfg.data)
    sweeps = select_training_sweeps(index.sweeps, ds.label_fraction, ds.split_seed, ds.block_frames)
    _report_index(index)
    val_index = index_labelled_sweeps(list(ds.val_bags), cfg.data) if ds.val_bags else None
    if val_index is not None:
        _report_index(val_index)
    val = val_index.sweeps if val_index is not None else []
    run = Path(ds.run_dir)
    console.print(
        f"{mode}: {len(sweeps)} of {len(index.sweeps)} labelled sweeps "
        f"({100 * len(sweeps) / len(index.sweeps):.3g}%; asked {100 * ds.label_fraction:g}% by scene) from "
        f"{len(index.scenes())} bag(s); {len(val)} validation "
        f"sweeps; class map {class_map.name} ({class_map.num_classes} classes, {map_source}); backbone "
        f"{'from ' + str(ds.pretrained) if ds.pretrained else 'randomly initialised'}"
    )
    trainer = SegmentationTrainer(ds, cfg.data, class_map, mode, sweeps, val)
    if resume and trainer.resume():
        console.print(f"resumed from {trainer.checkpoint_path} after epoch {trainer.start_epoch}")
    run.mkdir(parents=True, exist_ok=True)
    write_run_config(run, cfg)
    with CountProgress(mode, trainer.epochs, trainer.start_epoch) as bar:

        def on_epoch(stats: EpochStats) -> None:
            miou = f" val mIoU {100 * stats.miou:.2f}" if stats.miou is not None else ""
            bar.update(stats.epoch + 1, f"loss {stats.loss:.3f}{miou}")

        start = time.perf_counter()
        result = trainer.fit(on_epoch=on_epoch)
    console.print(
        f"{trainer.epochs} epochs in {time.perf_counter() - start:.0f} s; model: {run / 'model_last.pt'}"
    )
    if result.confusion is not None:
        files = write_evaluation_report(run, result.confusion, class_map, stem="val")
        console.print(f"validation mIoU {100 * result.confusion.miou():.2f}; report: {files['markdown']}")


def probe(
    pretrained: Pretrained = None,
    bags: BagList = None,
    val_bags: BagList = None,
    config: ConfigOption = None,
    sets: SetOption = None,
    epochs: Annotated[Optional[int], typer.Option(help="default: 50")] = None,  # noqa: UP045
    run_dir: RunDir = None,
    resume: ResumeOption = True,
    strict: StrictOption = False,
) -> None:
    """Linear probing: frozen backbone (frozen BatchNorm), point-wise linear head, lr 0.05."""
    try:
        overrides = _overrides(pretrained, bags, val_bags, epochs, run_dir, None)
        _train("probe", config, sets, overrides, resume, strict)
    except LidarSslError as err:
        raise fail(err) from err


def finetune(
    pretrained: Pretrained = None,
    bags: BagList = None,
    val_bags: BagList = None,
    config: ConfigOption = None,
    sets: SetOption = None,
    label_fraction: Fraction = None,
    epochs: Annotated[Optional[int], typer.Option(help="default: 100 at 1%, else 50")] = None,  # noqa: UP045
    run_dir: RunDir = None,
    resume: ResumeOption = True,
    strict: StrictOption = False,
) -> None:
    """Fine-tuning: whole network, cross-entropy + Lovasz, head lr 2.0 / backbone lr 0.02."""
    try:
        overrides = _overrides(pretrained, bags, val_bags, epochs, run_dir, label_fraction)
        _train("finetune", config, sets, overrides, resume, strict)
    except LidarSslError as err:
        raise fail(err) from err


def _overrides(
    pretrained: Path | None,
    bags: list[Path] | None,
    val_bags: list[Path] | None,
    epochs: int | None,
    run_dir: Path | None,
    label_fraction: float | None,
) -> dict[str, Any]:
    return {
        "downstream.pretrained": str(pretrained) if pretrained else None,
        "downstream.train_bags": [str(b) for b in bags] if bags else None,
        "downstream.val_bags": [str(b) for b in val_bags] if val_bags else None,
        "downstream.epochs": epochs,
        "downstream.run_dir": str(run_dir) if run_dir else None,
        "downstream.label_fraction": label_fraction,
    }


def evaluate(
    model: Annotated[Path, typer.Option(help="segmentation checkpoint (model_last.pt)")],
    bags: Annotated[list[Path], typer.Option(help="labelled bags to evaluate on")],
    out: Annotated[Optional[Path], typer.Option(help="report folder (default: beside the model)")] = None,  # noqa: UP045
    config: ConfigOption = None,
    sets: SetOption = None,
    strict: StrictOption = False,
) -> None:
    """Point-wise mIoU, per-class IoU table, confusion matrix and IoU chart of a model on labelled bags."""
    from torch.utils.data import DataLoader

    from lidar_ssl_core.downstream.data import (
        LabelledSweepDataset,
        check_class_map,
        collate_sweeps,
        index_labelled_sweeps,
    )
    from lidar_ssl_core.downstream.model import load_segmentation_model
    from lidar_ssl_core.downstream.report import iou_table_markdown, write_evaluation_report
    from lidar_ssl_core.downstream.train import evaluate as evaluate_network

    try:
        cfg = _config(config, sets, {}, checkpoint=model)  # the model's grid; a contradiction is refused
        seg = load_segmentation_model(model, cfg.downstream.device)
        data = cfg.data
        report_damage(bags, strict, data.profile.lidar_topic)
        index = index_labelled_sweeps(bags, data)
        _report_index(index)
        dataset = LabelledSweepDataset(index.sweeps, data, seg.class_map, train=False)
        check_class_map(
            dataset,
            remedy=f"{model} carries its own class map (downstream.class_map does not apply to evaluate): "
            "evaluate it on bags labelled in its dataset's ids",
        )
        loader: DataLoader[Any] = DataLoader(
            dataset, batch_size=cfg.downstream.batch_size, collate_fn=collate_sweeps
        )
        cm = evaluate_network(seg.network, loader, seg.class_map.num_classes, seg.device)
        folder = out or model.parent
        files = write_evaluation_report(folder, cm, seg.class_map, stem="eval")
        typer.echo(iou_table_markdown(cm, seg.class_map.class_names))
        console.print(f"{len(index.sweeps)} sweeps; mIoU {100 * cm.miou():.2f}; report: {files['markdown']}")
    except LidarSslError as err:
        raise fail(err) from err


def segment(
    model: Annotated[Path, typer.Option(help="model package folder or segmentation checkpoint (.pt)")],
    bag: Annotated[Path, typer.Option(help="input bag")],
    out: Annotated[Path, typer.Option(help="output bag (a copy with the segmentation topic)")],
    topic: Annotated[str, typer.Option(help="output PointCloud2 topic")] = "/lidar/segmentation",
    lidar_topic: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="input PointCloud2 topic (default: data.profile.lidar_topic, /lidar/points)"),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output")] = False,
    backend: Annotated[str, typer.Option(help="torch | spconv | onnxruntime | tensorrt")] = "torch",
    device: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="cpu, cuda, cuda:N (default: cuda where the backend can use it, else cpu)"),
    ] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads of the backend")] = None,  # noqa: UP045
    preset: Annotated[Optional[str], typer.Option(help="restate the preset (checked)")] = None,  # noqa: UP045
    voxel_mode: Annotated[Optional[str], typer.Option(help="restate the voxel mode (checked)")] = None,  # noqa: UP045
    voxel_size: VoxelSize = None,
) -> None:
    """Copy a bag and add a labelled, colour-coded PointCloud2 topic (rgb, label, score) for RViz/Foxglove.

    Runs the inference engine of ``lidar-ssl export`` packages; the architecture and voxel grid come
    from the model (restating them is allowed, contradicting them is refused)."""
    from lidar_ssl_core.bag.discover import expand_bags
    from lidar_ssl_core.deploy.engine import STAGES, Segmentation, default_device, load_engine
    from lidar_ssl_core.downstream.segment_bag import write_segmented_bag
    from lidar_ssl_core.types import PointCloud

    try:
        found = expand_bags([bag])  # the same discovery as every command that reads bags
        if len(found) != 1:
            raise ConfigError(f"segment takes one bag; {bag} holds {len(found)} (give one of them)")
        dev = device or default_device(backend)
        restated = {"preset": preset, "voxel_mode": voxel_mode, "voxel_size": voxel_size}
        engine = load_engine(model, backend=backend, device=dev, threads=threads, restated=restated)
        totals = dict.fromkeys(STAGES, 0.0)

        def predict(cloud: PointCloud) -> Segmentation:
            result = engine.segment(cloud)
            for key in STAGES:
                totals[key] += result.timings_ms.get(key, 0.0)
            return result

        start = time.perf_counter()
        report = write_segmented_bag(
            found[0],
            out,
            predict,
            engine.spec.class_map,
            topic_in=lidar_topic,
            topic_out=topic,
            overwrite=overwrite,
        )
        per_sweep = ", ".join(f"{k} {v / max(1, report.sweeps_written):.1f}" for k, v in totals.items())
        console.print(
            f"{report.sweeps_written} sweeps segmented ({report.points_written} points) in "
            f"{time.perf_counter() - start:.1f} s on {engine.backend}/{dev} (ms per sweep: {per_sweep}); "
            f"{report.n_skipped} skipped; wrote {out} ({topic})"
        )
    except LidarSslError as err:
        raise fail(err) from err


def register(app: typer.Typer) -> None:
    """Add the downstream commands to the ``lidar-ssl`` app."""
    for command in (probe, finetune, evaluate, segment):
        app.command()(command)
