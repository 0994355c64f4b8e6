"""Start-up time of the ``lidar-ssl`` command line: ``--help``, a usage error and ``--version``.

Each command runs in a fresh interpreter (the way a user or a script calls it); the best of ``--repeat``
runs is kept, since the machine may be shared. The CLI imports torch, OpenCV and rosbags only inside the
command that needs them, so these paths must stay well under a second.

    python benchmarks/bench_cli_startup.py --repeat 5
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

COMMANDS: list[list[str]] = [
    ["--help"],
    ["--version"],
    ["pretrain", "--help"],
    ["probe", "--help"],
    ["convert", "nuscenes", "--help"],
    ["probe", "--no-such-option"],  # a usage error (exit 2)
]


def best_of(argv: list[str], repeat: int) -> float:
    """Fastest wall-clock seconds of running ``argv`` over ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = [("python -c pass (bare interpreter)", [sys.executable, "-c", "pass"])]
    rows.append(("python -c 'import torch' (for scale)", [sys.executable, "-c", "import torch"]))
    rows += [("lidar-ssl " + " ".join(c), [sys.executable, "-m", "lidar_ssl_core", *c]) for c in COMMANDS]
    for label, argv in rows:
        print(f"{label:42s} {best_of(argv, args.repeat):.2f} s")


if __name__ == "__main__":
    main()
