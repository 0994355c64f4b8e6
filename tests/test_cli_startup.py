"""The CLI module stays light: ``--help`` and usage errors must not pay for torch, OpenCV or rosbags.

Checked by the modules loaded in a fresh interpreter, not by timing (times are in
benchmarks/bench_cli_startup.py and docs/data-path.md).
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "cv2", "rosbags", "numpy", "scipy", "skimage", "transformers")


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(m for m in sys.modules if '.' not in m)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_importing_the_cli_loads_no_heavy_library() -> None:
    loaded = _loaded_after("import lidar_ssl_core.cli")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_help_and_usage_errors_load_no_heavy_library() -> None:
    code = (
        "from typer.testing import CliRunner\n"
        "from lidar_ssl_core.cli import app\n"
        "r = CliRunner()\n"
        "for args in (['--help'], ['pretrain', '--help'], ['convert', 'nuscenes', '--help'], "
        "['probe', '--no-such-option']):\n"
        "    res = r.invoke(app, args)\n"
        "    assert res.exit_code in (0, 2), (args, res.output)\n"
    )
    loaded = _loaded_after(code)
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_pretrain_help_lists_every_registered_method() -> None:
    """``--help`` names the methods without importing torch; the list must follow the registry."""
    from lidar_ssl_core.cli import METHOD_NAMES
    from lidar_ssl_core.train.methods import method_names

    assert tuple(sorted(METHOD_NAMES)) == method_names()
