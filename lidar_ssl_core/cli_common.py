"""What every ``lidar-ssl`` command module shares: the console, option types, ``--set`` parsing, errors.

Only the CLI modules print; the library logs and raises ``LidarSslError`` subclasses, which become one
``ERROR:`` line and exit code 1 here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console

from lidar_ssl_core.errors import BagReadError, ConfigError, LidarSslError

if TYPE_CHECKING:
    from pydantic import BaseModel

console = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--config", "-c", help="YAML config (see docs/config.md)"),
]
SetOption = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option("--set", "-s", help="config override KEY=VALUE (dotted key, YAML value), repeatable"),
]

StrictOption = Annotated[
    bool,
    typer.Option(
        "--strict",
        help="a damaged bag is an error (exit 1); default: a warning, and what can be read is used",
    ),
]


def fail(err: LidarSslError) -> typer.Exit:
    """Print the error as one unwrapped line (whatever the terminal width) and exit with 1."""
    typer.echo(f"ERROR: {err}", err=True)
    return typer.Exit(1)


def write_run_config(folder: Path, config: BaseModel) -> Path:
    """The resolved configuration as ``folder/config.yaml``, written atomically (a run folder never holds
    a half-written config that looks complete)."""
    from lidar_ssl_core.config import dump_config
    from lidar_ssl_core.fileio import atomic_write_bytes

    return atomic_write_bytes(Path(folder) / "config.yaml", dump_config(config).encode())


def parse_sets(sets: list[str] | None) -> dict[str, object]:
    """``--set a.b=1`` pairs as load_config overrides (values parsed as YAML: numbers, lists, booleans)."""
    import yaml

    values: dict[str, object] = {}
    for item in sets or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r} is not KEY=VALUE (e.g. --set pretrain.lr=0.1)")
        try:
            values[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({err})") from err
    return values


def report_damage(
    bags: Sequence[Path], strict: bool, sweeps_topic: str | None = None, *, quiet: bool = False
) -> set[Path]:
    """One warning line per damaged bag (what was recovered and lost), or with ``strict`` one error.

    Returns the damaged bags (as discovered: a folder of bags stands for the bags inside). ``quiet``: check
    but print nothing (the non-main processes of a distributed run).
    """
    from lidar_ssl_core.bag.discover import expand_bags
    from lidar_ssl_core.bag.reader import damage_summary

    found = [s for s in (damage_summary(bag) for bag in expand_bags(list(bags))) if s is not None]
    lines = [s.line(sweeps_topic) for s in found]
    if strict and found:
        raise BagReadError(f"{len(found)} damaged bag(s) and --strict: " + " | ".join(lines))
    if not quiet:
        from rich.markup import escape

        for line in lines:
            console.print(f"[yellow]warning[/]: {escape(line)}", highlight=False)
    return {s.bag for s in found}


class CountProgress:
    """A rich bar counting steps or epochs, with a free-text info column (a no-op when disabled)."""

    def __init__(self, label: str, total: int, done: int = 0, *, enabled: bool = True) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = (
            Progress(
                TextColumn(f"[bold]{label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=console,
            )
            if enabled
            else None
        )
        self.label, self.total, self.done = label, total, done

    def __enter__(self) -> CountProgress:
        if self.progress is not None:
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=self.total, completed=self.done, info="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, completed: int, info: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=completed, info=info)
