"""Launch files and parameters of the ROS 2 package, checked without ``launch`` (not installable here).

Each launch file is imported against a stand-in of the launch API (``lidar_ssl.testing.LaunchStub``):
every executable it names must be an entry point of the package, and every parameter it passes (YAML
files and dicts) must be one the node declares, with a valid value. The e2e tests (test_ros_e2e.py)
start the nodes with exactly these parameters.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "ros2_ws" / "src" / "lidar_ssl"))

from lidar_ssl.testing import PACKAGE_DIR, LaunchStub, entry_points, evaluate, random_domain_id  # noqa: E402

from lidar_ssl_core.live.config import PretrainNodeConfig, SegmenterConfig  # noqa: E402
from lidar_ssl_core.record.config import PlayerConfig, RecorderConfig  # noqa: E402

NODE_MODELS: dict[str, type[BaseModel]] = {
    "fleet_recorder": RecorderConfig,
    "bag_player": PlayerConfig,
    "pretrain": PretrainNodeConfig,
    "segmenter": SegmenterConfig,
}
LAUNCH_FILES = sorted((PACKAGE_DIR / "launch").glob("*.launch.py"))
LAUNCH_ARGS = {
    "segment.launch.py": {"model": "model.pt", "bag": "rosbags/synthetic_sample"},
    "view.launch.py": {"bag": "runs/segmented"},
}
VIEWERS = {("rviz2", "rviz2"), ("foxglove_bridge", "foxglove_bridge")}


def test_the_package_ships_the_three_launch_files_and_the_top_level_folder_points_to_them() -> None:
    assert {p.name for p in LAUNCH_FILES} >= {"pretrain.launch.py", "record.launch.py", "segment.launch.py"}
    assert "ros2_ws/src/lidar_ssl/launch" in (REPO / "launch" / "README.md").read_text()
    assert set(entry_points()) == set(NODE_MODELS)
    pretrain = LaunchStub(PACKAGE_DIR / "launch" / "pretrain.launch.py")
    assert {"bags", "method", "config", "output"} <= set(pretrain.arguments)


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_names_entry_points_and_declared_parameters(path: Path) -> None:
    stub = LaunchStub(path)
    assert stub.nodes, f"{path.name} starts no node"
    args = stub.launch_args(**LAUNCH_ARGS.get(path.name, {}))
    points = entry_points()
    for node in stub.nodes:
        executable = str(node.kwargs["executable"])
        if node.kwargs["package"] != "lidar_ssl":  # viewers (view.launch.py): their config files exist
            assert (node.kwargs["package"], executable) in VIEWERS
            for arg in node.kwargs.get("arguments", []):  # type: ignore[attr-defined]
                value = str(evaluate(arg, args))
                assert not value.startswith(str(PACKAGE_DIR)) or Path(value).is_file(), value
            continue
        assert executable in points, f"{path.name}: {executable} is not an entry point of lidar_ssl"
        model = NODE_MODELS[executable]
        files, values = node.parameters(args)
        given: dict[str, object] = {}
        for file in files:
            assert file.is_file(), f"{path.name}: parameter file {file} is not in the package"
            doc = yaml.safe_load(file.read_text())
            assert set(doc) == {node.kwargs["name"]}, (
                f"{file.name} must hold the parameters of {node.kwargs['name']}"
            )
            given.update(doc[node.kwargs["name"]]["ros__parameters"])
        given.update(values)
        unknown = set(given) - set(model.model_fields)
        assert not unknown, f"{path.name}: {executable} declares no parameter {sorted(unknown)}"
        model.model_validate(given)  # every value is of the right type and range


def test_every_parameter_has_a_description_and_every_config_file_is_launched() -> None:
    for model in NODE_MODELS.values():
        missing = [n for n, f in model.model_fields.items() if not (f.description or "").strip()]
        assert not missing, f"{model.__name__}: parameters without a description: {missing}"
    used = {f.name for path in LAUNCH_FILES for n in LaunchStub(path).nodes for f in n.parameters(
        LaunchStub(path).launch_args(**LAUNCH_ARGS.get(path.name, {})))[0]}  # fmt: skip
    assert used == {p.name for p in (PACKAGE_DIR / "config").glob("*.yaml")}


def test_nodes_declare_their_model_as_described_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    rclpy = pytest.importorskip("rclpy")
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # no DDS traffic off this machine
    from lidar_ssl.params import declare_from_model
    from rclpy.node import Node

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=random_domain_id())
    try:
        for name, model in NODE_MODELS.items():
            node = Node(f"declare_{name}", context=context, start_parameter_services=False)
            try:
                values = declare_from_model(node, model)
                assert values == model()
                described = node.describe_parameters(list(model.model_fields))
                assert all(d.description for d in described)
                assert {d.name for d in described} == set(model.model_fields)
            finally:
                node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_viewer_configs_show_the_segmentation_topics() -> None:
    rviz = yaml.safe_load((PACKAGE_DIR / "rviz" / "lidar_ssl.rviz").read_text())
    displays = {d["Topic"]["Value"]: d for d in rviz["Visualization Manager"]["Displays"] if "Topic" in d}
    assert displays["/lidar/segmentation"]["Color Transformer"] == "RGB8"  # lidar-ssl segment output
    assert displays["/segmenter/colored"]["Color Transformer"] == "RGB8"  # the live node
    layout = json.loads((PACKAGE_DIR / "foxglove" / "lidar_ssl.json").read_text())
    topics = layout["configById"]["3D!seg"]["topics"]
    assert topics["/lidar/segmentation"]["colorMode"] == topics["/segmenter/colored"]["colorMode"] == "rgb"
    view = LaunchStub(PACKAGE_DIR / "launch" / "view.launch.py")
    for viewer, package in (("rviz", "rviz2"), ("foxglove", "foxglove_bridge")):
        args = view.launch_args(bag="runs/segmented", viewer=viewer)
        assert {str(n.kwargs["package"]) for n in view.nodes if n.enabled(args)} == {"lidar_ssl", package}
    assert not any(n.enabled(view.launch_args()) for n in view.nodes if n.kwargs["package"] == "lidar_ssl")


def test_package_xml_declares_the_run_dependencies() -> None:
    text = (PACKAGE_DIR / "package.xml").read_text()
    assert '<package format="3">' in text and "<build_type>ament_python</build_type>" in text
    for dep in (
        "rclpy",
        "sensor_msgs",
        "tf2_msgs",
        "diagnostic_msgs",
        "lifecycle_msgs",
        "std_srvs",
        "geometry_msgs",
    ):
        assert f"<exec_depend>{dep}</exec_depend>" in text
    cfg = (PACKAGE_DIR / "setup.cfg").read_text()
    assert "script_dir=$base/lib/lidar_ssl" in cfg and "install_scripts=$base/lib/lidar_ssl" in cfg
    assert (PACKAGE_DIR / "resource" / "lidar_ssl").is_file()
