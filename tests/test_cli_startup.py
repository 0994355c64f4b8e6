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


def test_method_names_from_files_equal_the_registry() -> None:
    """``--help`` and config validation list methods from the module files (no torch): same as registered."""
    from lidar_ssl_core.train.method_names import available_method_names
    from lidar_ssl_core.train.methods import method_names

    assert available_method_names() == method_names()
    assert {"ppkt", "slidr", "st-slidr", "st-ppkt", "nclr", "olivine", "scalr"} <= set(method_names())


def test_loading_and_validating_a_config_needs_no_torch() -> None:
    """A config error must answer as fast as ``--help``: the typed configs import no torch / OpenCV."""
    code = (
        "import sys\n"
        "from lidar_ssl_core.config import load_config\n"
        "from lidar_ssl_core.errors import ConfigError\n"
        "load_config(overrides={'pretrain.method': 'scalr', 'pretrain.backbone.preset': 'tiny'})\n"
        "try:\n"
        "    load_config(overrides={'pretrain.method': 'no-such-method'})\n"
        "except ConfigError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('unknown method accepted')\n"
        "heavy = [m for m in ('torch', 'cv2', 'rosbags', 'transformers') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"config loading imported {out.stdout.strip()}"
