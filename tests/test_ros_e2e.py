"""End to end over real DDS, each node in its own process, started as its launch file says.

bag player -> fleet_recorder -> shards: every synchronized sample of the embedded bag is in the shards;
shards -> pretrain node -> a checkpoint the downstream commands accept (and a restart resumes it);
bag player -> segmenter -> labelled clouds equal to ``lidar-ssl segment`` on the same bag; the segmenter
skips a malformed cloud and loads a new model through lifecycle transitions in the same process.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("rclpy", reason="rclpy (the 'ros' extra) is not installed")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "ros2_ws" / "src" / "lidar_ssl"))

from lidar_ssl.testing import (  # noqa: E402
    PACKAGE_DIR,
    LaunchStub,
    node_command,
    ros_env,
    start_node,
    stop_node,
)

from lidar_ssl_core.bag import BagReader  # noqa: E402
from lidar_ssl_core.cli import app  # noqa: E402
from lidar_ssl_core.config import load_config  # noqa: E402
from lidar_ssl_core.data.bag_index import index_bag  # noqa: E402
from lidar_ssl_core.downstream.classes import SYNTHETIC  # noqa: E402
from lidar_ssl_core.downstream.model import (  # noqa: E402
    build_segmentation_model,
    load_pretrained_backbone,
    segmentation_state,
)
from lidar_ssl_core.models.config import BackboneConfig  # noqa: E402
from lidar_ssl_core.msg import read_cloud, stamp_to_ns, tf_message_to_transforms  # noqa: E402
from lidar_ssl_core.record.calibration_file import dump_static_transforms  # noqa: E402
from lidar_ssl_core.record.shards import closed_shards  # noqa: E402
from lidar_ssl_core.resources import default_bag  # noqa: E402
from lidar_ssl_core.train.checkpoint import save_checkpoint  # noqa: E402

pytestmark = pytest.mark.ros
LAUNCH = PACKAGE_DIR / "launch"
CAMERAS = ["back", "back_left", "back_right", "front", "front_left", "front_right"]
TINY = BackboneConfig(preset="tiny", normalize=False)


def launch_node(launch_file: str, executable: str, **launch_args: str) -> tuple[str, list[str]]:
    """Module and ROS arguments of the node ``executable`` as ``launch_file`` starts it."""
    stub = LaunchStub(LAUNCH / launch_file)
    args = stub.launch_args(**launch_args)
    (node,) = [n for n in stub.nodes if n.kwargs["executable"] == executable and n.enabled(args)]
    return node_command(node, args)


def wait_exit(proc: Any, timeout_s: float, log: Path) -> int:
    try:
        return int(proc.wait(timeout_s))
    except Exception:
        stop_node(proc, 10)
        raise AssertionError(
            f"process did not finish in {timeout_s} s; log:\n{log.read_text()[-3000:]}"
        ) from None


def image_topic(camera: str) -> str:
    return f"/cameras/{camera}/image/compressed"


def frames(bag: Path) -> set[tuple[int, tuple[tuple[str, int], ...]]]:
    index = index_bag(bag, load_config().data)
    return {
        (f.lidar.stamp_ns, tuple(sorted((v.camera, v.image.stamp_ns) for v in f.views))) for f in index.frames
    }


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return ros_env()


RECORDER_IO: dict[str, Any] = {}


@pytest.fixture(scope="module")
def recorder_io(recorded: Path) -> dict[str, Any]:
    """What the test process saw of the recorder: /diagnostics and the snapshot reply."""
    return RECORDER_IO


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Path:
    """Play the embedded bag into the recorder (record.launch.py) and stop it: its shard folder."""
    tmp = tmp_path_factory.mktemp("record")
    with BagReader(default_bag()) as reader:
        statics = [t for m in reader.messages(["/tf_static"]) for t in tf_message_to_transforms(m.msg)]
    calib = tmp / "calibration.yaml"  # tf2_msgs is not pip-installable: extrinsics from a file here
    calib.write_text(dump_static_transforms(statics))
    out = tmp / "shards"
    module, ros = launch_node(
        "record.launch.py", "fleet_recorder", output_dir=str(out), calibration_file=str(calib)
    )
    keep_all = {
        "cameras": CAMERAS,
        "keyframe_hz": 0.0,
        "min_travel_m": 0.0,
        "confidence_topic": "",
        "reliable": True,
        "min_free_mb": 0,
        "shard_max_duration_s": 0.7,
        "qos_depth": 100,  # reliable and lossless: the history holds every message of a topic of the bag
    }
    from diagnostic_msgs.msg import DiagnosticArray
    from std_msgs.msg import String

    with BagReader(default_bag()) as reader:  # what the recorder must have taken before it is stopped
        expected = {t: reader.message_count(t) for t in ["/lidar/points", *map(image_topic, CAMERAS)]}
    recorder = start_node(module, keep_all, env, tmp / "recorder.log", ros)
    collector = Collector(
        int(env["ROS_DOMAIN_ID"]), {"/diagnostics": DiagnosticArray, "/fleet_recorder/snapshot_done": String}
    )

    def received() -> dict[str, int]:
        """Messages per topic the recorder took, from its latest diagnostics."""
        for msg in reversed(collector.messages["/diagnostics"]):
            for st in msg.status:
                if st.name == "fleet_recorder: inputs":
                    values = {kv.key: kv.value for kv in st.values}
                    return {t: int(values.get(f"{t} received", 0)) for t in expected}
        return dict.fromkeys(expected, 0)

    try:
        module, ros = launch_node("segment.launch.py", "bag_player", model="unused", bag=str(default_bag()))
        # the player waits for a subscriber on every topic and, at the end, for every acknowledgement
        player = start_node(
            module, {"rate": 1.0, "wait_for_subscribers_s": 60.0}, env, tmp / "player.log", ros
        )
        assert wait_exit(player, 120, tmp / "player.log") == 0, (tmp / "player.log").read_text()
        deadline = time.monotonic() + 60  # a loaded recorder may still be taking what was delivered
        while received() != expected and time.monotonic() < deadline:
            time.sleep(0.1)
        RECORDER_IO["received"] = (received(), expected)
        request = collector.node.create_publisher(String, "/fleet_recorder/snapshot_request", 10)
        deadline = time.monotonic() + 20
        while not collector.messages["/fleet_recorder/snapshot_done"] and time.monotonic() < deadline:
            if request.get_subscription_count():
                request.publish(String(data="e2e"))
                while not collector.messages["/fleet_recorder/snapshot_done"] and time.monotonic() < deadline:
                    time.sleep(0.1)
            time.sleep(0.1)
        # the same through the ~/snapshot service (std_srvs/Trigger)
        from std_srvs.srv import Trigger

        client: Any = collector.node.create_client(Trigger, "/fleet_recorder/snapshot")
        assert client.wait_for_service(timeout_sec=20), "no /fleet_recorder/snapshot service"
        future = client.call_async(Trigger.Request())
        deadline = time.monotonic() + 20
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        reply = future.result()
        RECORDER_IO["snapshot_service"] = (reply.success, reply.message) if reply is not None else None
        deadline = time.monotonic() + 20
        while len(collector.messages["/fleet_recorder/snapshot_done"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        code = stop_node(recorder)
        collector.close()
    RECORDER_IO["snapshot_done"] = [m.data for m in collector.messages["/fleet_recorder/snapshot_done"]]
    RECORDER_IO["diagnostics"] = list(collector.messages["/diagnostics"])
    log = (tmp / "recorder.log").read_text()
    assert code == 0, log
    assert "Traceback" not in log, log
    return out


def test_every_synchronized_sample_of_the_bag_is_in_the_shards(
    recorded: Path, recorder_io: dict[str, Any]
) -> None:
    got_counts, expected = recorder_io["received"]
    assert got_counts == expected  # the recorder took every sweep and image before it was stopped
    shards = closed_shards(recorded)
    assert len(shards) >= 2  # rotated (0.7 s of log time per shard)
    got: set[tuple[int, tuple[tuple[str, int], ...]]] = set()
    for shard in shards:  # each shard is a bag of the profile on its own
        got |= frames(shard)
    assert got == frames(default_bag())
    assert not list(recorded.glob(".*.partial"))  # a clean stop leaves no open shard


def test_pretrain_node_turns_shards_into_a_checkpoint_the_downstream_commands_accept(
    recorded: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "data:\n  loader:\n    num_workers: 0\n    batch_size: 8\n"
        "  augment:\n    crop_size: [96, 64]\n    min_pairs: 20\n  superpixels:\n    n_segments: 12\n"
        "pretrain:\n  epochs: 1\n  checkpoint_every: 0\n"
        "  backbone:\n    preset: tiny\n  teacher:\n    arch: filterbank\n"
    )
    run = tmp_path / "run"
    args = {"shard_dir": str(recorded), "method": "ppkt", "config": str(config), "output": str(run)}
    module, ros = launch_node("pretrain.launch.py", "pretrain", **args)
    fast = {"steps_per_round": 1, "nice": 0, "threads": 2, "poll_s": 0.5, "status_period_s": 0.5}
    log = tmp_path / "pretrain.log"
    assert wait_exit(start_node(module, fast, env, log, ros), 240, log) == 0, log.read_text()
    ckpt = run / "ckpt_last.pt"
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 1 and state["global_step"] == 2  # 16 frames / 8 per batch, one epoch
    model = build_segmentation_model(TINY, SYNTHETIC.num_classes)
    loaded = load_pretrained_backbone(model, ckpt, load_config().data.voxels)  # what probe/finetune do
    assert loaded.kind == "pretraining" and loaded.loaded > 0
    # a restarted node resumes: nothing left to train, the checkpoint stays at the same step
    log2 = tmp_path / "pretrain2.log"
    assert wait_exit(start_node(module, fast, env, log2, ros), 240, log2) == 0, log2.read_text()
    assert "resumed" in log2.read_text()
    assert torch.load(ckpt, weights_only=True)["global_step"] == 2


@pytest.fixture(scope="module")
def seg_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two segmentation checkpoints (random weights, different seeds) in the format probe writes."""
    tmp = tmp_path_factory.mktemp("models")
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = build_segmentation_model(TINY, SYNTHETIC.num_classes).eval()
        paths.append(
            save_checkpoint(
                segmentation_state(model, SYNTHETIC, load_config().data.voxels), tmp / f"m{seed}.pt"
            )
        )
    return paths[0], paths[1]


class Collector:
    """An rclpy node of its own context in this process, collecting messages of some topics."""

    def __init__(self, domain: int, topics: dict[str, Any]) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = Node("collector", context=self.context)
        self.messages: dict[str, list[Any]] = {t: [] for t in topics}
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.subscriptions = {
            topic: self.node.create_subscription(cls, topic, self.messages[topic].append, qos)
            for topic, cls in topics.items()
        }
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def wait_matched(self, topics: list[str], timeout_s: float) -> bool:
        """Until each of ``topics`` is matched to a publisher (what is sent before that is not received)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self.subscriptions[t].get_publisher_count() > 0 for t in topics):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def test_segmenter_labels_equal_lidar_ssl_segment_on_the_same_bag(
    seg_models: tuple[Path, Path], tmp_path: Path, env: dict[str, str]
) -> None:
    from geometry_msgs.msg import Vector3Stamped
    from sensor_msgs.msg import PointCloud2

    model = seg_models[0]
    from diagnostic_msgs.msg import DiagnosticArray

    topics = {
        "/segmenter/labels": PointCloud2,
        "/segmenter/confidence": Vector3Stamped,
        "/diagnostics": DiagnosticArray,
    }
    collector = Collector(int(env["ROS_DOMAIN_ID"]), topics)

    def accounted() -> dict[str, int]:
        """Scans published and dropped, from the segmenter's latest diagnostics."""
        for msg in reversed(collector.messages["/diagnostics"]):
            for st in msg.status:
                if st.name == "segmenter: segmentation":
                    values = {kv.key: kv.value for kv in st.values}
                    return {
                        "published": int(values["scans published"]),
                        "dropped": int(values["scans dropped (newer arrived)"]),
                    }
        return {"published": 0, "dropped": 0}

    try:
        module, ros = launch_node("segment.launch.py", "segmenter", model=str(model))
        segmenter = start_node(module, {"reliable": True}, env, tmp_path / "segmenter.log", ros)
        try:
            outputs = ["/segmenter/labels", "/segmenter/confidence"]
            assert collector.wait_matched(outputs, 60), (tmp_path / "segmenter.log").read_text()
            module, ros = launch_node(
                "segment.launch.py", "bag_player", model=str(model), bag=str(default_bag())
            )
            only_lidar = {"rate": 0.25, "topics": ["/lidar/points"], "wait_for_subscribers_s": 60.0}
            player = start_node(module, only_lidar, env, tmp_path / "player.log", ros)
            assert wait_exit(player, 90, tmp_path / "player.log") == 0
            deadline = time.monotonic() + 30  # until every sweep is published or counted as dropped
            while sum(accounted().values()) < 16 and time.monotonic() < deadline:
                time.sleep(0.1)
            deadline = time.monotonic() + 30  # until what was published has arrived here
            while time.monotonic() < deadline and (
                len(collector.messages["/segmenter/labels"]) < accounted()["published"]
                or len(collector.messages["/segmenter/confidence"]) < accounted()["published"]
            ):
                time.sleep(0.1)
        finally:
            assert stop_node(segmenter) == 0, (tmp_path / "segmenter.log").read_text()
        live = {stamp_to_ns(m.header.stamp): m for m in collector.messages["/segmenter/labels"]}
        confidences = collector.messages["/segmenter/confidence"]
    finally:
        collector.close()
    counts = accounted()
    # newest-only: under load a sweep may be superseded before it is segmented, and is then counted
    assert counts["published"] + counts["dropped"] == 16, (counts, (tmp_path / "segmenter.log").read_text())
    assert len(live) == counts["published"] >= 4
    out = tmp_path / "segmented"
    result = CliRunner().invoke(
        app, ["segment", "--model", str(model), "--bag", str(default_bag()), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    with BagReader(out) as reader:
        offline = {stamp_to_ns(m.msg.header.stamp): m.msg for m in reader.messages(["/lidar/segmentation"])}
    for stamp, msg in live.items():
        got, want = (
            read_cloud(msg, reshape_organized=False),
            read_cloud(offline[stamp], reshape_organized=False),
        )
        assert msg.header.frame_id == offline[stamp].header.frame_id == "lidar_top"
        assert set(got.dtype.names or ()) >= {"x", "y", "z", "intensity", "label", "score"}
        assert len(got) == len(want)
        assert int((got["label"] != want["label"]).sum()) == 0, f"labels differ at t={stamp}"
        assert float(np.abs(got["x"] - want["x"]).max()) == 0.0
        assert float(got["score"].min()) > 0.0 and float(got["score"].max()) <= 1.0
    assert {stamp_to_ns(c.header.stamp) for c in confidences} >= set(live)
    assert all(0.0 < c.vector.x <= 1.0 and c.vector.z > 0 for c in confidences)


def test_segmenter_skips_malformed_clouds_and_reloads_a_model_through_lifecycle_transitions(
    seg_models: tuple[Path, Path], env: dict[str, str]
) -> None:
    import rclpy
    from lidar_ssl.segmenter import Segmenter
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import PointCloud2, PointField

    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(env["ROS_DOMAIN_ID"]))
    first, second = seg_models
    try:
        node = Segmenter(context=context, parameter_overrides=[Parameter("model", value=str(first))])
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        assert node.engine is not None and node._worker is not None, node._last_error
        engine = node.engine
        bad = PointCloud2(
            height=1,
            width=3,
            point_step=4,
            row_step=12,
            fields=[PointField(name="i", offset=0, datatype=7, count=1)],
        )
        bad.data = bytes(12)
        node._worker.submit((bad, time.perf_counter()))
        deadline = time.monotonic() + 10
        while node.malformed == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert node.malformed == 1 and node._worker.failed == 0  # reported, skipped, worker alive
        # new package: deactivate -> cleanup -> set model -> configure -> activate, same process
        node.trigger_deactivate()
        node.trigger_cleanup()
        assert node.engine is None
        node.set_parameters([Parameter("model", value=str(second))])
        node.trigger_configure()
        node.trigger_activate()
        assert node.engine is not None, node._last_error
        assert node.engine is not engine and node._worker is not None
        assert node.config is not None and node.config.model == str(second)
        executor.shutdown()
        node._stop_input()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_recorder_snapshot_and_diagnostics(recorded: Path, recorder_io: dict[str, Any]) -> None:
    done = recorder_io["snapshot_done"]  # one from ~/snapshot_request, one from the ~/snapshot service
    assert recorder_io["snapshot_service"] == (True, "snapshot started")
    assert len(done) == 2 and not any(d.startswith("error") for d in done), done
    assert done[0] != done[1]
    for path in done:
        with BagReader(Path(path)) as reader:  # the last ring_seconds (10 s > the 1.6 s bag): everything
            assert reader.message_count("/lidar/points") == 16
            assert reader.message_count("/cameras/front/image/compressed") == 16
    statuses = {
        s.name.split(": ", 1)[1]: s
        for d in recorder_io["diagnostics"]
        for s in d.status
        if s.name.startswith("fleet_recorder")
    }
    assert {"inputs", "camera clock offsets", "synchronization", "writer"} <= set(statuses)
    values = {k.key: k.value for k in statuses["camera clock offsets"].values}
    assert float(values["front offset to lidar [ms]"]) == pytest.approx(0.0, abs=1e-6)
    assert float(values["back offset to lidar [ms]"]) < 0  # the back camera fires before the sweep
    writer = {k.key: k.value for k in statuses["writer"].values}
    assert writer["state"] == "ok" and "queue depth" in writer and "free [MiB]" in writer
