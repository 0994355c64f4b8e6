"""Weak semantic labels per camera image (OLIVINE), made offline by a vision foundation model.

Nothing here runs a model or downloads anything: the user segments the images beforehand (SEEM,
Grounded-SAM, ... with the class prompts) and writes one label image per camera image, keyed like the
superpixel cache and external masks:

    <mask_dir>/<bag name>/<camera>/<image stamp ns>.png     (8-bit; or .npy integer array, no pickle)

Pixel values are class ids 0..254; 255 means "no label" (nothing prompted there, or the model abstained).
Ids are used as they are (not relabelled): the same id must mean the same class in every image. A mask of
another size than the decoded image (``data.loader.image_scale``) is resized with nearest neighbours.

Masks recorded as an image topic in the bag (``sensor_msgs/Image`` mono8/mono16 or a PNG
``CompressedImage`` per camera, stamped like the camera image) are extracted once into that layout with
:func:`extract_weak_masks` (the dataset then reads files, as for superpixels).
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from lidar_ssl_core.data.sample import NO_LABEL
from lidar_ssl_core.errors import DatasetError
from lidar_ssl_core.fileio import atomic_write_bytes, image_keyed_file


def mask_path(mask_dir: Path, camera: str, stamp_ns: int) -> Path:
    """The weak-label file of one image; DatasetError naming the paths tried when there is none."""
    found, base = image_keyed_file(mask_dir, camera, stamp_ns)
    if found is not None:
        return found
    raise DatasetError(f"no weak-label mask for camera {camera} at {stamp_ns}: expected {base}.png or .npy")


def read_mask(path: Path) -> npt.NDArray[np.uint8]:
    """A weak-label file as uint8 class ids (255 = no label); DatasetError when unreadable or out of range."""
    if path.suffix == ".npy":
        try:
            labels = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise DatasetError(f"weak-label mask {path} is not a readable .npy array: {err}") from err
    else:
        labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if labels is None:
            raise DatasetError(f"weak-label mask {path} is not a readable image")
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(
            f"weak-label mask {path} must be a 2-D integer image, got {labels.dtype} {labels.shape}"
        )
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > NO_LABEL):
        raise DatasetError(f"weak-label mask {path} has values outside 0..{NO_LABEL}")
    out: npt.NDArray[np.uint8] = labels.astype(np.uint8)
    return out


class MaskFiles:
    """A weak-label source for :class:`~lidar_ssl_core.data.dataset.PairedBagDataset` (``weak_labels=``)."""

    def __init__(self, mask_dir: Path) -> None:
        self.mask_dir = Path(mask_dir)
        if not self.mask_dir.is_dir():
            raise DatasetError(f"weak-label folder {self.mask_dir} does not exist")

    def __call__(self, rgb: npt.NDArray[np.uint8], *, camera: str, stamp_ns: int) -> npt.NDArray[np.uint8]:
        labels = read_mask(mask_path(self.mask_dir, camera, stamp_ns))
        height, width = rgb.shape[:2]
        if labels.shape != (height, width):
            labels = np.asarray(
                cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST), np.uint8
            )
        return labels


#: default topic of the weak-label masks of camera ``{camera}`` (beside the profile's image topics)
DEFAULT_MASK_TOPIC = "/cameras/{camera}/weak_labels"


def extract_weak_masks(bag: Path, out_dir: Path, *, topic_pattern: str = DEFAULT_MASK_TOPIC) -> list[Path]:
    """Write every mask message of ``bag`` on the topics matching ``topic_pattern`` (``{camera}`` = the
    camera name) to ``<out_dir>/<bag name>/<camera>/<header stamp ns>.png``; the written paths.

    A message that cannot be decoded, or whose values exceed 255, is a DatasetError naming topic and stamp.
    """
    from lidar_ssl_core.bag.reader import open_bag
    from lidar_ssl_core.msg.image import image_to_array
    from lidar_ssl_core.msg.stamps import header_stamp_ns

    if "{camera}" not in topic_pattern:
        raise DatasetError(f"weak-label topic pattern {topic_pattern!r} has no {{camera}} placeholder")
    head, _, tail = topic_pattern.partition("{camera}")
    matcher = re.compile(re.escape(head) + r"(?P<camera>[^/]+)" + re.escape(tail) + "$")
    bag = Path(bag)
    written: list[Path] = []
    with open_bag(bag) as reader:
        topics = {t: m.group("camera") for t in reader.topics if (m := matcher.match(t))}
        if not topics:
            raise DatasetError(f"bag {bag} has no topic matching {topic_pattern!r}")
        for message in reader.messages(list(topics)):
            stamp = header_stamp_ns(message.msg)
            where = f"{message.topic} at {stamp}"
            try:
                if message.msgtype.endswith("CompressedImage"):
                    data = np.frombuffer(bytes(message.msg.data), np.uint8)
                    labels = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
                    if labels is None:
                        raise ValueError("not a decodable image")
                else:
                    labels = np.asarray(image_to_array(message.msg))
            except Exception as err:
                raise DatasetError(f"weak-label mask {where} cannot be decoded: {err}") from err
            if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
                raise DatasetError(f"weak-label mask {where} must be one integer channel, got {labels.shape}")
            if labels.size and int(labels.max()) > NO_LABEL:
                raise DatasetError(f"weak-label mask {where} has values above {NO_LABEL}")
            ok, png = cv2.imencode(".png", labels.astype(np.uint8))
            if not ok:  # pragma: no cover - cv2 encodes any uint8 image
                raise DatasetError(f"weak-label mask {where} could not be encoded")
            path = Path(out_dir) / bag.name / topics[message.topic] / f"{stamp}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, png.tobytes())
            written.append(path)
    return written
