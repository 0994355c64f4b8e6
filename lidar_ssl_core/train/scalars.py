"""Training scalars: always a ``metrics.jsonl`` in the run folder, and TensorBoard when it is installed.

The JSON-lines file needs no extra package, can be read back by anything (``pandas.read_json(lines=True)``)
and is what the tests check; TensorBoard gets the same tags. A resumed run appends to both, and rows after
the checkpoint's step are dropped first, so a run interrupted between checkpoints has no duplicated steps:
the JSON-lines file is rewritten atomically (temporary file, ``os.replace``), and TensorBoard's writer is
reopened with ``purge_step`` so that its reader discards the old events of the replayed steps.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from lidar_ssl_core.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class ScalarLog:
    """Writes ``{"step": s, tag: value, ...}`` rows; a no-op when ``run_dir`` is None (non-main processes)."""

    def __init__(self, run_dir: Path | None, *, tensorboard: bool = False) -> None:
        self.path = run_dir / METRICS_FILE if run_dir is not None else None
        self._file: IO[str] | None = None
        self._tb: Any = None
        self._tb_dir = run_dir / "tb" if run_dir is not None else None
        if run_dir is not None and tensorboard:
            self._tb = _summary_writer(run_dir / "tb", purge_step=None, metrics=self.path)

    def truncate_after(self, step: int) -> None:
        """Drop rows of steps after ``step`` (those of an interrupted run that the resume replays).

        ``metrics.jsonl`` is rewritten through a temporary file and ``os.replace`` (a crash leaves the old or
        the new file, never half of one); TensorBoard's writer is reopened with ``purge_step=step + 1``, which
        tells TensorBoard to discard the earlier events of steps after ``step``.
        """
        if self._tb is not None and self._tb_dir is not None:
            self._tb.close()
            self._tb = _summary_writer(self._tb_dir, purge_step=step + 1, metrics=self.path)
        if self.path is None or not self.path.is_file():
            return
        if self._file is not None:  # appended rows must reach the file before it is rewritten
            self._file.close()
            self._file = None
        steps = [(line, _row_step(line)) for line in self.path.read_text().splitlines()]
        kept = [line for line, s in steps if s is not None and s <= step]
        atomic_write_bytes(self.path, "".join(f"{line}\n" for line in kept).encode())

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if self.path is None:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a")
        row = {"step": step, **{k: (v if math.isfinite(v) else None) for k, v in scalars.items()}}
        self._file.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for tag, value in scalars.items():
                self._tb.add_scalar(tag, value, step)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> ScalarLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _summary_writer(log_dir: Path, *, purge_step: int | None, metrics: Path | None) -> Any:
    """TensorBoard's SummaryWriter, or None (with a warning) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed: scalars go to %s only", metrics)
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def _row_step(line: str) -> int | None:
    """The row's step; None for a line that does not parse (the torn last line of a killed run)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``run_dir/metrics.jsonl`` (unparsable lines, e.g. a torn last line, are skipped)."""
    path = run_dir / METRICS_FILE
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
