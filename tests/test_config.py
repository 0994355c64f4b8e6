"""Typed configuration: defaults, YAML overlay, rejections with the key's name, generated reference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lidar_ssl_core.config import Config, VoxelMode, dump_config, load_config
from lidar_ssl_core.config_docs import config_reference_markdown
from lidar_ssl_core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_reference_settings() -> None:
    cfg = load_config()
    assert cfg.data.superpixels.n_segments == 150
    assert cfg.data.superpixels.compactness == 6.0 and cfg.data.superpixels.sigma == 3.0
    assert cfg.data.voxels.mode is VoxelMode.CYLINDRICAL and cfg.data.voxels.size == (0.1, 1.0, 0.1)
    assert cfg.data.augment.crop_size == (416, 224)
    assert cfg.data.projection.min_depth_m == 1.0


def test_yaml_overlay_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "data:\n  voxels:\n    mode: cartesian\n    size: [0.05, 0.05, 0.05]\n  loader:\n    batch_size: 8\n"
    )
    cfg = load_config(path)
    assert cfg.data.voxels.mode is VoxelMode.CARTESIAN and cfg.data.loader.batch_size == 8
    assert cfg.data.sync.slop_s == 0.05  # untouched keys keep their defaults
    (tmp_path / "dumped.yaml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "dumped.yaml") == cfg


@pytest.mark.parametrize(
    ("yaml_text", "match"),
    [
        ("data:\n  voxels:\n    sise: [1, 1, 1]\n", r"data\.voxels\.sise"),
        ("data:\n  voxels:\n    size: [0, 1, 1]\n", r"data\.voxels\.size"),
        ("data:\n  profile:\n    camera_image_topic: /cam/image\n", r"camera_image_topic.*\{camera\}"),
        ("data:\n  augment:\n    crop_scale: [0.9, 0.2]\n", r"crop_scale"),
        ("data:\n  superpixels:\n    method: watershed\n", r"data\.superpixels\.method"),
        ("- just\n- a list\n", r"mapping"),
        ("data: [unclosed\n", r"not valid YAML"),
    ],
)
def test_bad_configs_name_the_key(tmp_path: Path, yaml_text: str, match: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_config_reference_is_up_to_date() -> None:
    committed = (REPO / "docs" / "config.md").read_text()
    assert committed == config_reference_markdown(), (
        "regenerate with: lidar-ssl config --markdown > docs/config.md"
    )
    for name in Config.model_fields:
        assert f"`{name}`" in committed


def test_importing_the_core_never_imports_rclpy() -> None:
    modules = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for p in (REPO / "lidar_ssl_core").rglob("*.py")
        if p.name != "__init__.py"
    )
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('rclpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_overrides_into_empty_or_scalar_sections(tmp_path: Path) -> None:
    path = tmp_path / "commented.yaml"
    path.write_text("data:\n  # loader:\n  #   batch_size: 2\n")
    assert load_config(path, {"data.loader.batch_size": 3}).data.loader.batch_size == 3
    with pytest.raises(ConfigError, match=r"data\.loader\.batch_size\.x.*data\.loader\.batch_size"):
        load_config(None, {"data.loader.batch_size": 3, "data.loader.batch_size.x": 1})


def test_directory_as_config_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path)


def test_every_shipped_config_file_validates() -> None:
    """configs/*.yaml (make run's among them) must stay valid as the config schema evolves."""
    files = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert files, "configs/ holds the config of `make run`"
    for path in files:
        cfg = load_config(path)
        assert cfg.pretrain.epochs >= 1, path
