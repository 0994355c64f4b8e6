"""Confusion matrix, IoU conventions, voxel -> point transfer and the evaluation report files."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lidar_ssl_core.downstream.classes import NUSCENES, SYNTHETIC
from lidar_ssl_core.downstream.metrics import ConfusionMatrix, voxel_to_point
from lidar_ssl_core.downstream.report import (
    confusion_csv,
    iou_report,
    iou_table_markdown,
    render_iou_chart,
    write_evaluation_report,
)

IGN = 255


def _example() -> ConfusionMatrix:
    """4 classes: 0 and 1 confused a bit, 2 only predicted (false positives), 3 absent everywhere."""
    target = np.array([0, 0, 0, 0, 1, 1, 1, 0, IGN, IGN])
    pred = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 0])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    return cm


def test_confusion_counts_and_ious_by_hand() -> None:
    cm = _example()
    assert cm.matrix.tolist() == [[3, 1, 1, 0], [0, 2, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert cm.total == 8  # the two ignored points are not counted, whatever was predicted there
    iou = cm.iou_per_class()
    assert iou[0] == pytest.approx(3 / 5)  # tp 3, fn 2, fp 0
    assert iou[1] == pytest.approx(2 / 4)  # tp 2, fn 1, fp 1
    assert iou[2] == 0.0  # predicted twice, never true: counts as a failure
    assert math.isnan(iou[3])  # neither true nor predicted: left out
    assert cm.miou() == pytest.approx((3 / 5 + 2 / 4 + 0) / 3)
    assert cm.miou("target") == pytest.approx((3 / 5 + 2 / 4) / 2)
    assert cm.slidr_code_miou() == pytest.approx((3 / 5 + 2 / 4 + 0 + 1.0) / 4)
    assert cm.accuracy() == pytest.approx(5 / 8)
    assert cm.fw_iou() == pytest.approx(5 / 8 * 3 / 5 + 3 / 8 * 2 / 4)
    np.testing.assert_allclose(cm.class_accuracy()[:2], [3 / 5, 2 / 3])
    assert cm.evaluated_classes().tolist() == [True, True, True, False]


def test_matches_independent_histogram_numpy_and_torch() -> None:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 6, 5000)
    target[rng.random(5000) < 0.1] = IGN
    pred = rng.integers(0, 6, 5000)
    cm = ConfusionMatrix(6)
    cm.update(pred, target)
    keep = target != IGN
    hist, _, _ = np.histogram2d(target[keep], pred[keep], bins=6, range=[[0, 6], [0, 6]])
    np.testing.assert_array_equal(cm.matrix, hist.astype(np.int64))
    cm_t = ConfusionMatrix(6)
    cm_t.update(torch.from_numpy(pred).reshape(50, 100), torch.from_numpy(target).reshape(50, 100))
    np.testing.assert_array_equal(cm_t.matrix, cm.matrix)


def test_merge_equals_one_pass() -> None:
    rng = np.random.default_rng(1)
    t, p = rng.integers(0, 5, 3000), rng.integers(0, 5, 3000)
    parts = []
    for sl in (slice(0, 1000), slice(1000, 1700), slice(1700, 3000)):
        m = ConfusionMatrix(5)
        m.update(p[sl], t[sl])
        parts.append(m)
    whole = ConfusionMatrix(5)
    whole.update(p, t)
    np.testing.assert_array_equal(ConfusionMatrix.sum(parts).matrix, whole.matrix)
    np.testing.assert_array_equal((parts[0] + parts[1] + parts[2]).matrix, whole.matrix)
    assert parts[0].total == 1000  # merging does not mutate its inputs
    with pytest.raises(ValueError, match="cannot merge"):
        parts[0].merge(ConfusionMatrix(4))


def test_update_rejects_bad_ids_and_empty_is_nan() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="target holds id 7"):
        cm.update(np.array([0, 1]), np.array([0, 7]))
    with pytest.raises(ValueError, match="prediction holds id -1"):
        cm.update(np.array([0, -1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError, match="ignore_index 2"):
        ConfusionMatrix(3, ignore_index=2)
    cm.update(np.array([1, 2]), np.array([IGN, IGN]))
    assert cm.total == 0 and math.isnan(cm.miou()) and math.isnan(cm.accuracy())
    assert cm.slidr_code_miou() == 1.0  # the reference convention on an empty set


def test_voxel_to_point_numpy_and_torch() -> None:
    logits = np.array([[0.1, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    index = np.array([2, 0, 0, 1, -1, 2])
    expected = [2, 1, 1, 0, IGN, 2]
    assert voxel_to_point(logits, index).tolist() == expected
    assert voxel_to_point(logits.argmax(1), index).tolist() == expected
    out_t = voxel_to_point(torch.from_numpy(logits), torch.from_numpy(index))
    assert isinstance(out_t, torch.Tensor) and out_t.tolist() == expected
    with pytest.raises(ValueError, match="only 3 voxels"):
        voxel_to_point(logits, np.array([0, 3]))


# ------------------------------------------------------------------------------------------ report


def test_report_dict_markdown_and_csv() -> None:
    cm = _example()
    names = ["a", "b", "c", "d"]
    rep = iou_report(cm, names)
    json.dumps(rep, allow_nan=False)  # JSON-able: NaN became null
    assert rep["per_class"]["d"] == {"iou": None, "support": 0, "predicted": 0}
    assert rep["per_class"]["a"]["iou"] == pytest.approx(0.6)
    assert rep["miou"] == pytest.approx(cm.miou()) and rep["classes_evaluated"] == ["a", "b", "c"]
    md = iou_table_markdown(cm, names)
    assert "| a | 60.0 | 5 | 3 |" in md and "| d | - | 0 | 0 |" in md
    assert f"**{100 * cm.miou():.1f}**" in md
    rows = list(csv.reader(io.StringIO(confusion_csv(cm, names))))
    assert rows[0] == ["gt\\pred", *names]
    assert [[int(v) for v in r[1:]] for r in rows[1:]] == cm.matrix.tolist()
    with pytest.raises(ValueError, match="3 class names"):
        iou_report(cm, names[:3])


def test_write_evaluation_report_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    target = rng.integers(0, 9, 4000)
    pred = np.where(rng.random(4000) < 0.7, target, rng.integers(0, 9, 4000))
    target[target == 4] = IGN  # one class absent -> drawn as "absent"
    pred[pred == 4] = 5
    cm = ConfusionMatrix(SYNTHETIC.num_classes)
    cm.update(pred, target)
    paths = write_evaluation_report(tmp_path / "out", cm, SYNTHETIC, stem="val")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["val.md", "val.json", "val_confusion.csv", "val_iou.png"]
    )  # no temporary file left behind
    doc = json.loads(paths["json"].read_text())
    assert doc["class_map"] == "synthetic" and doc["confusion"] == cm.matrix.tolist()
    assert doc["miou"] == pytest.approx(cm.miou())
    img = cv2.imread(str(paths["png"]), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[0] > 9 * 20 and img.shape[1] > 500
    rgb = img[..., ::-1].reshape(-1, 3)
    road = SYNTHETIC.colors[SYNTHETIC.class_names.index("road")]
    assert np.count_nonzero(np.all(rgb == road, axis=1)) > 500  # the road bar is drawn in road colour


def test_render_chart_bar_lengths_follow_iou() -> None:
    img = render_iou_chart([0.25, 1.0, float("nan")], ["x", "y", "z"], NUSCENES.colors[:3], miou=0.625)
    colour = NUSCENES.colors
    widths = [int(np.all(img == colour[i], axis=2).any(axis=0).sum()) for i in range(2)]
    assert widths[1] == pytest.approx(4 * widths[0], rel=0.05)
    assert not np.all(img == colour[2], axis=2).any()  # the absent class has no bar


def test_report_files_get_the_mode_of_ordinary_new_files(tmp_path: Path) -> None:
    import os
    import stat

    from lidar_ssl_core.downstream.report import atomic_write_bytes

    umask = os.umask(0o022)
    try:
        out = atomic_write_bytes(tmp_path / "r.md", b"x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # not mkstemp's 0600
