"""Continual pretraining for the ``pretrain`` node: the core trainer over bags or a recorder's shards.

It runs the trainer exactly as ``lidar-ssl pretrain`` does (``build_pretraining`` -> ``resume`` -> ``fit``
-> ``save``), in rounds of ``steps_per_round`` steps, each ending with a checkpoint, so a restart (power
cut, node restart) loses at most one round. Over a shard folder it trains on the closed shards
(:func:`~lidar_ssl_core.record.shards.closed_shards`: ``<prefix>_<seq>`` and ``<prefix>_<seq>_recovered``;
a shard still being written lives in a hidden ``.<name>.partial`` staging folder and is never read) and,
after each round, rebuilds the data set when the list changed (a shard closed, or the recorder's quota
evicted one); the run resumes from its checkpoint: model, optimiser, schedule and data position (epoch,
batch in the epoch) carry on, the rest of the current epoch drawn from the grown data set.
``pretrain.epochs`` counts passes over the data as it grows; once reached the run is finished and the node
idles (raise the epochs in a new config to go on).

Low priority on the vehicle: :func:`lower_priority` adds niceness and bounds torch's threads.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from lidar_ssl_core.bag.discover import expand_bags
from lidar_ssl_core.cli_common import parse_sets, write_run_config
from lidar_ssl_core.config import Config, load_config
from lidar_ssl_core.errors import DatasetError
from lidar_ssl_core.live.config import PretrainNodeConfig
from lidar_ssl_core.record.shards import closed_shards

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainProgress:
    """What the node reports (status topic, diagnostics)."""

    state: str = "starting"  # starting | waiting | training | finished | stopped | error
    global_step: int = 0
    epoch: int = 0
    epochs: int = 0
    loss: float = float("nan")
    samples_per_s: float = 0.0
    bags: int = 0
    newest_bag: str = ""  # name of the newest bag (shard) in the data set
    frames_by_bag: dict[str, int] = field(default_factory=dict)  # frames trained per bag, this process
    checkpoint: str = ""
    message: str = ""
    rounds: int = 0
    rebuilds: int = 0
    extra: dict[str, str] = field(default_factory=dict)


class _StopRequestedError(Exception):
    """Raised from the step callback to leave ``fit`` at a step boundary."""


def lower_priority(nice: int, threads: int) -> None:
    """Add ``nice`` to the process's niceness and cap torch's intra-op threads (training yields the CPU
    to the drivers and the live nodes)."""
    import torch

    if nice > 0 and hasattr(os, "nice"):
        os.nice(nice)
    torch.set_num_threads(max(1, threads))


def load_run_config(node: PretrainNodeConfig) -> Config:
    """The lidar_ssl config of the run: file, then ``overrides``, ``method`` and ``output``."""
    overrides = parse_sets(node.overrides)
    if node.method:
        overrides["pretrain.method"] = node.method
    overrides["pretrain.run_dir"] = node.output
    return load_config(Path(node.config) if node.config else None, overrides)


class ContinualPretraining:
    """Runs rounds of pretraining until the epochs are done, ``stop`` is set, or (bags) the run ends."""

    def __init__(
        self,
        node: PretrainNodeConfig,
        *,
        on_progress: Callable[[PretrainProgress], None] | None = None,
    ) -> None:
        if bool(node.bags) == bool(node.shard_dir):
            raise ValueError("give either 'bags' or 'shard_dir' (not both, not neither)")
        self.node = node
        self.config = load_run_config(node)
        self.on_progress = on_progress
        self.progress = PretrainProgress(epochs=self.config.pretrain.epochs)

    def _report(self, **changes: object) -> None:
        self.progress = replace(self.progress, **changes)  # type: ignore[arg-type]
        if self.on_progress is not None:
            self.on_progress(self.progress)

    def current_bags(self) -> list[Path]:
        if self.node.bags:
            return expand_bags(self.node.bag_list)
        folder = Path(self.node.shard_dir)
        return closed_shards(folder, self.node.shard_prefix) if folder.is_dir() else []

    def run(self, stop: threading.Event) -> PretrainProgress:
        """Train until done or stopped; returns the last progress. Errors are reported and re-raised."""
        try:
            return self._run(stop)
        except Exception as err:
            self._report(state="error", message=str(err))
            raise

    def _run(self, stop: threading.Event) -> PretrainProgress:
        from lidar_ssl_core.train.pretrain import StepStats, build_pretraining

        cfg = self.config
        folder = Path(cfg.pretrain.run_dir)
        while not stop.is_set():
            bags = self.current_bags()
            if len(bags) < self.node.min_shards:
                self._report(state="waiting", bags=len(bags), message=f"{len(bags)} closed shards so far")
                stop.wait(self.node.poll_s)
                continue
            trainer = build_pretraining(cfg.pretrain, cfg.data, bags=bags)
            try:
                if trainer.resume():
                    log.info("resumed %s at step %d", trainer.checkpoint_path, trainer.global_step)
                write_run_config(folder, cfg)  # atomic: never a half-written config.yaml
                log.info("training on %d bags, the newest %s", len(bags), bags[-1].name)
                self._report(
                    state="training",
                    bags=len(bags),
                    newest_bag=bags[-1].name,
                    rebuilds=self.progress.rebuilds + 1,
                    message="",
                )

                def on_step(stats: StepStats) -> None:
                    frames = dict(self.progress.frames_by_bag)
                    for source in stats.sources:
                        bag = source.rsplit("#", 1)[0]
                        frames[bag] = frames.get(bag, 0) + 1
                    self._report(
                        global_step=stats.global_step,
                        epoch=stats.epoch,
                        loss=stats.loss,
                        samples_per_s=stats.samples_per_s,
                        frames_by_bag=frames,
                    )
                    if stop.is_set():
                        raise _StopRequestedError

                finished = False
                while not stop.is_set():
                    try:
                        result = trainer.fit(
                            max_steps=trainer.global_step + self.node.steps_per_round, on_step=on_step
                        )
                        finished = result.finished
                    except _StopRequestedError:
                        pass
                    except DatasetError as err:  # frames of a shard the quota evicted meanwhile
                        if self.node.bags or self.current_bags() == bags:
                            raise
                        log.warning("the shard folder changed under the data set (%s): rebuilding", err)
                    saved = trainer.save()
                    self._report(
                        global_step=trainer.global_step,
                        epoch=trainer.epoch,
                        checkpoint=str(saved or trainer.checkpoint_path),
                        rounds=self.progress.rounds + 1,
                    )
                    if finished or (not self.node.bags and self.current_bags() != bags):
                        break
            finally:
                trainer.close()
            if finished:
                self._report(state="finished", message=f"{cfg.pretrain.epochs} epochs done")
                if self.node.exit_when_done:
                    return self.progress
                while not stop.is_set():  # idle until stopped
                    stop.wait(self.node.poll_s)
        self._report(state="stopped")
        return self.progress
