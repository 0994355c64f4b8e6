"""The ``lidar-ssl`` command line. Heavy imports happen inside each command so ``--help`` stays fast.

Only this module prints, shows progress bars and turns errors into exit codes; the library logs and
raises ``LidarSslError`` subclasses.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from lidar_ssl_core import __version__
from lidar_ssl_core.bag_formats import Distro, Storage
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
from lidar_ssl_core.train.method_names import available_method_names

if TYPE_CHECKING:
    import torch

    from lidar_ssl_core.config import Config
    from lidar_ssl_core.geometry.calibration import RigCalibration

app = typer.Typer(
    name="lidar-ssl",
    help="Image-to-LiDAR self-supervised pretraining from ROS 2 bags.\n\n"
    "Examples:\n\n"
    "  lidar-ssl samples                      # samples from the embedded synthetic bag\n\n"
    "  lidar-ssl info rosbags/synthetic_sample\n\n"
    "  lidar-ssl synth --out /tmp/world --frames 50 --seed 3",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

BagsOption = Annotated[
    Optional[list[Path]],  # noqa: UP045
    typer.Option("--bags", "-b", help="bags to read (default: config data.bags, else the embedded sample)"),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lidar-ssl {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )


def _load(config: Path | None, bags: list[Path] | None, overrides: dict[str, object] | None = None) -> Config:
    from lidar_ssl_core.config import load_config

    values = dict(overrides or {})
    if bags:
        values["data.bags"] = [str(b) for b in bags]
    return load_config(config, values)


@app.command()
def info(
    bags: Annotated[list[Path], typer.Argument(help="bag directories or .mcap/.db3 files")],
    config: ConfigOption = None,
    strict: StrictOption = False,
) -> None:
    """Topics of a bag, its calibration and what synchronisation makes of it."""
    from lidar_ssl_core.bag.discover import expand_bags
    from lidar_ssl_core.bag.reader import BagReader
    from lidar_ssl_core.data.bag_index import camera_image_topics, index_bag

    try:
        found = expand_bags(bags)  # a missing bag fails here, before the configuration is loaded
        cfg = _load(config, bags)
        for bag in found:
            damaged = report_damage([bag], strict, cfg.data.profile.lidar_topic)
            with BagReader(bag) as reader:
                table = Table(title=str(bag))
                table.add_column("topic", overflow="fold")
                table.add_column("type", overflow="fold")
                table.add_column("messages", justify="right")
                for topic, msgtype in reader.topics.items():
                    table.add_row(topic, msgtype, str(reader.message_count(topic)))
                Console().print(table)
                cameras = camera_image_topics(cfg.data.profile, reader.topics)
            if not cameras:  # e.g. SemanticKITTI without image_2/: a bag for the downstream commands
                _lidar_only(bag, cfg)
                continue
            index = index_bag(bag, cfg.data)
            out = Console(soft_wrap=True)
            for line in _report_lines(index.report.lines(), damaged):
                out.print(f"  {line}")
            poses = "with" if index.rig.has_poses() else "WITHOUT"
            out.print(f"  LiDAR frame {index.lidar_frame}, ego poses: {poses} ego-motion compensation")
            stamp = index.frames[0].lidar.stamp_ns if index.frames else 0
            out.print(f"  LiDAR {_extrinsic(index.rig, index.lidar_frame, stamp, cfg)}")
            for name, cam in index.rig.cameras.items():
                intr = cam.intrinsics
                out.print(
                    f"  camera {name}: frame {cam.frame}, {intr.width}x{intr.height}, "
                    f"fx {intr.K[0, 0]:.1f} fy {intr.K[1, 1]:.1f}, distortion {intr.distortion_model}"
                    + (" (zero)" if not intr.is_distorted else "")
                )
                out.print(f"    {_extrinsic(index.rig, cam.frame, stamp, cfg)}")
    except LidarSslError as err:
        raise fail(err) from err


def _lidar_only(bag: Path, cfg: Config) -> None:
    """What ``info`` says of a bag without camera images: no pairs to pretrain on, but labelled sweeps
    (with the class map the converter recorded) serve probe, finetune, evaluate and segment."""
    from lidar_ssl_core.bag.reader import read_custom_data
    from lidar_ssl_core.bag_formats import CLASS_MAP_KEY

    profile = cfg.data.profile
    class_map = read_custom_data(bag).get(CLASS_MAP_KEY)
    Console(soft_wrap=True).print(
        f"  no camera image topic matches {profile.camera_image_topic!r} (data.profile.camera_image_topic): "
        "a LiDAR-only bag, usable by probe, finetune, evaluate and segment, not by pretrain or samples; "
        f"class map recorded: {class_map or 'none'}",
        highlight=False,
    )


def _extrinsic(rig: RigCalibration, frame: str, stamp_ns: int, cfg: Config) -> str:
    """``frame``'s pose in the base frame (translation, roll/pitch/yaw) and the topic it was read from."""
    import math

    base = rig.base_frame
    try:
        T = rig.buffer.lookup(base, frame, stamp_ns)
    except LidarSslError as err:  # e.g. a /tf chain that does not cover the first sweep: say so, go on
        return f"extrinsic {base} <- {frame}: not available at the first sweep ({err})"
    R = T[:3, :3]
    rpy = (
        math.degrees(math.atan2(R[2, 1], R[2, 2])),
        math.degrees(math.asin(max(-1.0, min(1.0, -R[2, 0])))),
        math.degrees(math.atan2(R[1, 0], R[0, 0])),
    )
    profile = cfg.data.profile
    source = (
        profile.tf_static_topic
        if rig.buffer.is_static_path(base, frame)
        else f"{profile.tf_topic} (time-varying; at the first sweep)"
    )
    xyz = ", ".join(f"{round(float(v), 3) + 0.0:.3f}" for v in T[:3, 3])  # + 0.0: no "-0.000"
    angles = ", ".join(f"{round(v, 2) + 0.0:.2f}" for v in rpy)
    return f"extrinsic {base} <- {frame}: xyz ({xyz}) m, roll/pitch/yaw ({angles}) deg, from {source}"


def _data_bags(cfg: Config) -> list[Path]:
    """The bags ``data.bags`` names, else the embedded sample (what the datasets read)."""
    from lidar_ssl_core.resources import default_bag

    return list(cfg.data.bags) or [default_bag()]


def _report_lines(lines: list[str], damaged: set[Path]) -> list[str]:
    """An index report without its storage lines when the damage was already summarised (said once)."""
    return [line for line in lines if not (damaged and line.startswith("storage: "))]


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="bag to write (must not exist)")],
    preset: Annotated[str, typer.Option(help="sample | nuscenes_like")] = "sample",
    frames: Annotated[Optional[int], typer.Option(help="number of LiDAR sweeps")] = None,  # noqa: UP045
    seed: Annotated[int, typer.Option(help="world and sensor noise seed")] = 0,
    distro: Annotated[
        Distro, typer.Option(help="bag metadata readable by this ROS 2 distribution")
    ] = "jazzy",
    storage: Annotated[Storage, typer.Option(help="storage plugin")] = "mcap",
    overwrite: Annotated[bool, typer.Option(help="replace an existing output")] = False,
) -> None:
    """Generate a synthetic driving world and write it as a bag in the project profile."""
    from lidar_ssl_core.synth import preset as synth_preset
    from lidar_ssl_core.synth.bagfile import write_synthetic_bag

    try:
        overrides: dict[str, object] = {"seed": seed}
        if frames is not None:
            overrides["n_frames"] = frames
        cfg = synth_preset(preset, **overrides)
        start = time.perf_counter()
        path = write_synthetic_bag(out, cfg, distro=distro, storage=storage, overwrite=overwrite)
        size = (
            sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            if path.is_dir()
            else path.stat().st_size
        )
        elapsed = time.perf_counter() - start
        console.print(f"wrote {path} ({cfg.n_frames} sweeps, {size / 1e6:.1f} MB) in {elapsed:.1f} s")
    except LidarSslError as err:
        raise fail(err) from err


@app.command()
def samples(
    bags: BagsOption = None,
    config: ConfigOption = None,
    count: Annotated[int, typer.Option("--count", "-n", help="samples to build (0 = all)")] = 0,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader workers (default: config)")] = None,  # noqa: UP045
    out: Annotated[
        Path | None, typer.Option(help="folder for a preview image and the resolved config")
    ] = None,
    eval_mode: Annotated[
        bool, typer.Option("--eval", help="validation transform instead of augmentations")
    ] = False,
    strict: StrictOption = False,
) -> None:
    """Build paired point / pixel / superpixel training samples and report them (the data path's job)."""
    from tqdm import tqdm

    from lidar_ssl_core.data.dataset import PairedBagDataset, make_loader
    from lidar_ssl_core.superpixels import Superpixelizer

    try:
        overrides: dict[str, object] = {}
        if workers is not None:
            overrides["data.loader.num_workers"] = workers
        cfg = _load(config, bags, overrides)
        damaged = report_damage(_data_bags(cfg), strict, cfg.data.profile.lidar_topic)
        dataset = PairedBagDataset(
            cfg.data, train=not eval_mode, seed=cfg.seed, superpixels=Superpixelizer(cfg.data.superpixels)
        )
        for index in dataset.indexes:
            lines = _report_lines(index.report.lines(), damaged if index.path in damaged else set())
            console.print(f"[bold]{index.path}[/]: " + "; ".join(lines))
        loader = make_loader(dataset, shuffle=False)
        n_batches = len(loader) if count <= 0 else -(-count // cfg.data.loader.batch_size)
        stats = _SampleStats()
        start = time.perf_counter()
        first_batch = None
        for i, batch in enumerate(tqdm(loader, total=n_batches, desc="samples", unit="batch")):
            if i >= n_batches:
                break
            stats.add(batch)
            first_batch = first_batch if first_batch is not None else batch
        elapsed = time.perf_counter() - start
        stats.print(elapsed)
        if out is not None and first_batch is not None:
            from lidar_ssl_core.visualize import save_pairs_preview

            out.mkdir(parents=True, exist_ok=True)
            write_run_config(out, cfg)
            preview = save_pairs_preview(first_batch, out / "pairs_preview.png")
            console.print(f"preview: {preview}")
    except LidarSslError as err:
        raise fail(err) from err


class _SampleStats:
    def __init__(self) -> None:
        self.samples = self.points = self.voxels = self.pairs = self.images = self.superpixels = 0
        self.replaced: list[str] = []

    def add(self, batch: dict[str, Any]) -> None:
        import torch

        coords = batch["coords"]
        self.samples += len(batch["sources"])
        self.points += len(batch["points"])
        self.voxels += len(coords)
        self.pairs += len(batch["pairing_points"])
        self.images += len(batch["images"])
        self.replaced += batch["replaced"]
        sp = batch.get("superpixels")
        if isinstance(sp, torch.Tensor) and sp.numel():
            self.superpixels += len(torch.unique(sp))

    def print(self, elapsed: float) -> None:
        n = max(self.samples, 1)
        table = Table(title="training samples")
        table.add_column("per sample")
        table.add_column("mean", justify="right")
        table.add_row("points", f"{self.points / n:.0f}")
        table.add_row("voxels", f"{self.voxels / n:.0f}")
        table.add_row("images", f"{self.images / n:.1f}")
        table.add_row("point-pixel pairs", f"{self.pairs / n:.0f}")
        table.add_row("superpixels", f"{self.superpixels / n:.0f}")
        Console().print(table)
        rate = self.samples / max(elapsed, 1e-9)
        Console().print(f"{self.samples} samples in {elapsed:.1f} s = {rate:.2f} samples/s")
        if self.replaced:
            Console().print(f"frames that failed to load and were replaced: {', '.join(self.replaced)}")


@app.command("config")
def config_cmd(
    config: ConfigOption = None,
    sets: SetOption = None,
    markdown: Annotated[bool, typer.Option(help="print the reference of every key (docs/config.md)")] = False,
) -> None:
    """Print the resolved configuration (defaults overlaid by --config and --set) as YAML."""
    from lidar_ssl_core.config import dump_config
    from lidar_ssl_core.config_docs import config_reference_markdown

    try:
        if markdown:
            typer.echo(config_reference_markdown(), nl=False)
        else:
            typer.echo(dump_config(_load(config, None, parse_sets(sets))), nl=False)
    except LidarSslError as err:
        raise fail(err) from err


@app.command()
def pretrain(
    method: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help=f"a registered method: {' | '.join(available_method_names())} "
            "(lidar_ssl_core/train/methods/; default: config pretrain.method)"
        ),
    ] = None,
    bags: BagsOption = None,
    config: ConfigOption = None,
    sets: SetOption = None,
    epochs: Annotated[Optional[int], typer.Option(help="epochs (default: config)")] = None,  # noqa: UP045
    max_steps: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="stop after this many steps in this call (a later call resumes)"),
    ] = None,
    run_dir: Annotated[Optional[Path], typer.Option(help="run folder (checkpoints, config)")] = None,  # noqa: UP045
    resume: Annotated[bool, typer.Option(help="continue from run_dir/ckpt_last.pt when present")] = True,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    strict: StrictOption = False,
) -> None:
    """Pretrain the 3D backbone by distilling the frozen image teacher (default: the embedded bag).

    Multi-GPU: torchrun --nproc-per-node N -m lidar_ssl_core pretrain ... (batch size is per process).
    """
    trainer = None
    dist = None
    try:
        overrides = parse_sets(sets)
        if method is not None:
            overrides["pretrain.method"] = method
        if epochs is not None:
            overrides["pretrain.epochs"] = epochs
        if run_dir is not None:
            overrides["pretrain.run_dir"] = str(run_dir)
        cfg = _load(config, bags, overrides)
        # torch only once the configuration is valid: a config error answers without it
        from lidar_ssl_core.train.distributed import init_distributed
        from lidar_ssl_core.train.pretrain import StepStats, build_pretraining

        dist = init_distributed(cfg.pretrain.device)
        _check_pretraining_setup(cfg, dist.device)  # before any bag is read or model built
        report_damage(_data_bags(cfg), strict, cfg.data.profile.lidar_topic, quiet=not dist.is_main)
        folder = Path(cfg.pretrain.run_dir)
        trainer = build_pretraining(cfg.pretrain, cfg.data, dist=dist)  # validates the bags first
        if resume and trainer.resume() and dist.is_main:  # refuses a checkpoint of another setup
            console.print(f"resumed from {trainer.checkpoint_path} at step {trainer.global_step}")
        if dist.is_main:  # only once the inputs and any checkpoint were accepted
            folder.mkdir(parents=True, exist_ok=True)
            write_run_config(folder, cfg)
        stop = None if max_steps is None else trainer.global_step + max_steps  # steps of this call
        total = cfg.pretrain.epochs * len(trainer.loader)
        if stop is not None:
            total = min(total, stop)
        start = time.perf_counter()
        with CountProgress("pretrain", total, trainer.global_step, enabled=progress and dist.is_main) as bar:

            def on_step(stats: StepStats) -> None:
                info = (
                    f"epoch {stats.epoch + 1} loss {stats.loss:.3f} lr {stats.lr:.3g} "
                    f"{stats.samples_per_s:.2f} samples/s"
                )
                bar.update(stats.global_step, info)

            result = trainer.fit(max_steps=stop, on_step=on_step)
        elapsed = time.perf_counter() - start
        if not result.finished:
            trainer.save()  # stopped by --max-steps: the next call resumes from here
        losses = result.losses
        if losses and dist.is_main:
            k = max(1, len(losses) // 10)
            first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
            console.print(
                f"{len(losses)} steps in {elapsed:.0f} s on {dist.world_size} process(es); "
                f"loss {first:.3f} (mean of first {k}) -> {last:.3f} (mean of last {k}); "
                f"epoch {result.epoch}, step {result.global_step}, finished: {result.finished}"
            )
        if dist.is_main:
            console.print(f"checkpoint: {trainer.checkpoint_path}")
    except LidarSslError as err:
        raise fail(err) from err
    finally:  # also on errors: close TensorBoard's writer and leave the process group
        if trainer is not None:
            trainer.close()
        if dist is not None:
            from lidar_ssl_core.train.distributed import shutdown_distributed

            shutdown_distributed()


CPU_HINT = (
    "for a run that finishes in minutes on a CPU use `--config configs/cpu_demo.yaml` (what `make run` "
    "does: -s pretrain.backbone.preset=small -s pretrain.teacher.arch=filterbank)"
)


def _check_pretraining_setup(cfg: Config, device: torch.device) -> None:
    """Refuse a pretraining that cannot mean anything (a random-weight image teacher, unless
    ``pretrain.teacher.allow_random``), and say which configuration fits a CPU-only machine."""
    from lidar_ssl_core.train.methods import method_class

    teacher, cpu = cfg.pretrain.teacher, device.type == "cpu"
    uses_teacher = method_class(cfg.pretrain.method).uses_teacher  # NCLR trains its own image branch
    if uses_teacher and teacher.arch == "resnet50" and teacher.weights is None and not teacher.allow_random:
        raise ConfigError(
            "pretrain.teacher.weights is not set: a randomly initialised ResNet-50 teacher teaches "
            "nothing. Give self-supervised weights (`pretrain.teacher.weights: PATH`, or "
            "-s pretrain.teacher.weights=PATH: MoCo v2, SwAV, DINO, OBoW, DenseCL or torchvision layouts), "
            "use the label-free `pretrain.teacher.arch: filterbank`, or set "
            "`pretrain.teacher.allow_random: true` for a smoke test"
            + (f". This machine has no CUDA GPU: {CPU_HINT}" if cpu else "")
        )
    if cpu and cfg.pretrain.backbone.preset == "res16unet34c" and teacher.arch != "filterbank":
        console.print(
            f"[yellow]warning[/]: the full Res16UNet34C with a {teacher.arch} teacher is a GPU job "
            f"(hours per epoch on a CPU); {CPU_HINT}"
        )


def _register_subcommands() -> None:
    from lidar_ssl_core.convert.cli import convert_app
    from lidar_ssl_core.deploy.cli import register as register_deploy
    from lidar_ssl_core.downstream.cli import register

    register(app)
    register_deploy(app)
    app.add_typer(convert_app, name="convert")


_register_subcommands()
