"""Small file helpers shared by the writers of reports, caches and checkpoints."""

from __future__ import annotations

import os
from pathlib import Path


def chmod_like_new_file(path: Path | str) -> None:
    """Give a ``tempfile.mkstemp`` file (mode 0600) the mode a plain ``open(path, "w")`` would have
    (0666 minus the umask), so files published by renaming it are readable like every other output."""
    umask = os.umask(0)
    os.umask(umask)
    Path(path).chmod(0o666 & ~umask)
