"""Evaluation reports: per-class IoU table (markdown + JSON), confusion matrix CSV, IoU bar chart PNG.

Everything is written atomically (a temporary file in the same folder, then ``os.replace``), so a
reader never sees half a report. The chart is drawn with OpenCV only (no matplotlib dependency):
one horizontal bar per class in the class colour, its IoU in %, and the mIoU as a dashed line.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from lidar_ssl_core.downstream.classes import ClassMap, default_colors
from lidar_ssl_core.downstream.metrics import ConfusionMatrix
from lidar_ssl_core.fileio import atomic_write_bytes


def _names(cm: ConfusionMatrix, class_names: Sequence[str]) -> list[str]:
    names = [str(n) for n in class_names]
    if len(names) != cm.num_classes:
        raise ValueError(f"{len(names)} class names for a {cm.num_classes}-class confusion matrix")
    return names


def _num(x: float) -> float | None:
    """JSON has no NaN: absent values become null."""
    return None if math.isnan(x) else float(x)


# ------------------------------------------------------------------------------------ table / JSON


def iou_report(cm: ConfusionMatrix, class_names: Sequence[str]) -> dict[str, Any]:
    """JSON-able summary: mIoU (ours and the SLidR-code convention), accuracy, per-class IoU/support."""
    names = _names(cm, class_names)
    iou = cm.iou_per_class()
    evaluated = cm.evaluated_classes()
    return {
        "miou": _num(cm.miou()),
        "miou_target_classes": _num(cm.miou("target")),
        "miou_slidr_code": _num(cm.slidr_code_miou()),
        "accuracy": _num(cm.accuracy()),
        "fw_iou": _num(cm.fw_iou()),
        "num_points": cm.total,
        "ignore_index": cm.ignore_index,
        "classes_evaluated": [n for n, e in zip(names, evaluated, strict=True) if e],
        "per_class": {
            n: {"iou": _num(float(iou[i])), "support": int(cm.support[i]), "predicted": int(cm.predicted[i])}
            for i, n in enumerate(names)
        },
    }


def iou_table_markdown(cm: ConfusionMatrix, class_names: Sequence[str]) -> str:
    """Markdown table, one row per class (IoU in %, '-' where the class is absent), then the means."""
    names = _names(cm, class_names)
    iou = cm.iou_per_class()
    lines = ["| class | IoU (%) | GT points | predicted points |", "|---|---:|---:|---:|"]
    for i, n in enumerate(names):
        value = "-" if math.isnan(iou[i]) else f"{100 * iou[i]:.1f}"
        lines.append(f"| {n} | {value} | {int(cm.support[i])} | {int(cm.predicted[i])} |")

    def pct(x: float) -> str:
        return "-" if math.isnan(x) else f"{100 * x:.1f}"

    n_eval = int(cm.evaluated_classes().sum())
    lines += [
        f"| **mIoU** ({n_eval} classes) | **{pct(cm.miou())}** | {cm.total} | |",
        "",
        f"- mIoU over the classes present in the ground truth: {pct(cm.miou('target'))} %",
        f"- mIoU as SLidR's code computes it (absent classes = 100): {pct(cm.slidr_code_miou())} %",
        f"- point accuracy: {pct(cm.accuracy())} %, frequency-weighted IoU: {pct(cm.fw_iou())} %",
    ]
    return "\n".join(lines) + "\n"


def confusion_csv(cm: ConfusionMatrix, class_names: Sequence[str]) -> str:
    """CSV text: header ``gt\\pred, <names>``, one row per ground-truth class."""
    names = _names(cm, class_names)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["gt\\pred", *names])
    for i, n in enumerate(names):
        writer.writerow([n, *(int(v) for v in cm.matrix[i])])
    return buf.getvalue()


def save_confusion_csv(cm: ConfusionMatrix, class_names: Sequence[str], path: Path | str) -> Path:
    return atomic_write_bytes(path, confusion_csv(cm, class_names).encode())


# ------------------------------------------------------------------------------------------ chart

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_INK = (30, 30, 30)
_GRID = (215, 215, 215)


def _text(img: np.ndarray, s: str, org: tuple[int, int], scale: float = 0.5, color: tuple[int, ...] = _INK,
          thickness: int = 1) -> None:  # fmt: skip
    cv2.putText(img, s, org, _FONT, scale, color, thickness, cv2.LINE_AA)


def _text_width(s: str, scale: float = 0.5, thickness: int = 1) -> int:
    return int(cv2.getTextSize(s, _FONT, scale, thickness)[0][0])


def render_iou_chart(
    ious: Sequence[float] | npt.NDArray[np.floating],
    class_names: Sequence[str],
    colors: npt.ArrayLike | None = None,
    *,
    miou: float | None = None,
    title: str = "per-class IoU",
) -> npt.NDArray[np.uint8]:
    """RGB image: one horizontal bar per class (IoU in [0, 1], NaN drawn as 'absent') and the mIoU line."""
    values = np.asarray(ious, np.float64)
    names = [str(n) for n in class_names]
    if values.shape != (len(names),):
        raise ValueError(f"{values.shape[0] if values.ndim else 0} IoU values for {len(names)} class names")
    palette = default_colors(len(names)) if colors is None else np.asarray(colors, np.uint8).reshape(-1, 3)
    row_h, top, bottom, bar_w = 24, 56, 50, 520
    left = 16 + max([_text_width(n) for n in names] + [60]) + 12
    width = left + bar_w + 60
    height = top + row_h * len(names) + bottom
    img = np.full((height, width, 3), 255, np.uint8)

    _text(img, title, (16, 24), 0.65, thickness=2)
    mean = float("nan") if miou is None else float(miou)
    show_mean = not math.isnan(mean)
    if show_mean:
        head = f"mIoU {100 * mean:.1f} %"
        _text(img, head, (width - _text_width(head, 0.6, 2) - 16, 24), 0.6, (200, 0, 0), 2)
    y_end = top + row_h * len(names)
    for pct in range(0, 101, 25):  # grid and axis labels
        x = left + round(bar_w * pct / 100)
        cv2.line(img, (x, top - 6), (x, y_end), _GRID, 1)
        label = f"{pct}"
        _text(img, label, (x - _text_width(label, 0.45) // 2, y_end + 18), 0.45)
    _text(img, "IoU (%)", (left + bar_w // 2 - _text_width("IoU (%)", 0.45) // 2, y_end + 38), 0.45)
    if show_mean:  # dashed mIoU line, behind the bars and their values
        x_mean = left + round(bar_w * min(max(mean, 0.0), 1.0))
        for y in range(top - 6, y_end, 8):
            cv2.line(img, (x_mean, y), (x_mean, min(y + 4, y_end)), (200, 0, 0), 2)
        _text(img, "mIoU", (x_mean - _text_width("mIoU", 0.45) // 2, top - 12), 0.45, (200, 0, 0))

    for i, (name, value) in enumerate(zip(names, values, strict=True)):
        y0 = top + i * row_h
        _text(img, name, (left - 12 - _text_width(name), y0 + row_h - 8))
        if math.isnan(value):
            _text(img, "absent", (left + 4, y0 + row_h - 8), 0.45, (150, 150, 150))
            continue
        x1 = left + round(bar_w * min(max(value, 0.0), 1.0))
        colour = tuple(int(c) for c in palette[i])
        if x1 > left:
            cv2.rectangle(img, (left, y0 + 4), (x1, y0 + row_h - 4), colour, -1)
            cv2.rectangle(img, (left, y0 + 4), (x1, y0 + row_h - 4), (90, 90, 90), 1)
        label = f"{100 * value:.1f}"  # on a white box, so the mIoU line never hides it
        cv2.rectangle(
            img, (x1 + 3, y0 + 5), (x1 + 8 + _text_width(label, 0.45), y0 + row_h - 5), (255, 255, 255), -1
        )
        _text(img, label, (x1 + 6, y0 + row_h - 8), 0.45)
    cv2.line(img, (left, top - 6), (left, y_end), _INK, 1)
    return img


def save_iou_chart(
    cm: ConfusionMatrix, class_map: ClassMap, path: Path | str, *, title: str | None = None
) -> Path:
    """PNG of ``render_iou_chart`` for a confusion matrix, coloured by the class map."""
    _names(cm, class_map.class_names)
    miou = cm.miou()
    img = render_iou_chart(
        cm.iou_per_class(),
        class_map.class_names,
        class_map.colors,
        miou=miou,
        title=title or f"{class_map.name}: per-class IoU ({cm.total} points)",
    )
    ok, png = cv2.imencode(".png", np.ascontiguousarray(img[..., ::-1]))
    if not ok:
        raise OSError(f"OpenCV could not encode the IoU chart for {path}")
    return atomic_write_bytes(path, png.tobytes())


# ---------------------------------------------------------------------------------------- all of it


def write_evaluation_report(
    out_dir: Path | str,
    cm: ConfusionMatrix,
    class_map: ClassMap,
    *,
    stem: str = "eval",
    title: str | None = None,
) -> dict[str, Path]:
    """Write ``<stem>.md``, ``.json``, ``_confusion.csv`` and ``_iou.png`` into ``out_dir``."""
    out = Path(out_dir)
    names = class_map.class_names
    summary = {"class_map": class_map.name, **iou_report(cm, names), "confusion": cm.matrix.tolist()}
    heading = f"# {title or f'Segmentation evaluation ({class_map.name})'}\n\n"
    return {
        "markdown": atomic_write_bytes(
            out / f"{stem}.md", (heading + iou_table_markdown(cm, names)).encode()
        ),
        "json": atomic_write_bytes(out / f"{stem}.json", (json.dumps(summary, indent=2) + "\n").encode()),
        "csv": save_confusion_csv(cm, names, out / f"{stem}_confusion.csv"),
        "png": save_iou_chart(cm, class_map, out / f"{stem}_iou.png", title=title),
    }


__all__ = [
    "atomic_write_bytes",
    "confusion_csv",
    "iou_report",
    "iou_table_markdown",
    "render_iou_chart",
    "save_confusion_csv",
    "save_iou_chart",
    "write_evaluation_report",
]
