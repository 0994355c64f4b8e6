"""One exception hierarchy for the whole library.

Every error a user can cause (bad input, wrong config, unreadable bag) is a ``LidarSslError``; the CLI
turns these into one-line messages and an exit code, nothing in the library calls ``sys.exit``.
Messages name *what* was wrong (topic, stamp, file, field) and, where there is one, the fix.
"""

from __future__ import annotations


class LidarSslError(Exception):
    """Base of every error raised on purpose by lidar_ssl_core."""


class ConfigError(LidarSslError):
    """A configuration file or value is invalid."""


class BagError(LidarSslError):
    """A bag cannot be opened, read or written."""


class BagReadError(BagError):
    """A bag (or part of it) cannot be read: missing, truncated, or not a rosbag2."""


class BagWriteError(BagError):
    """A bag cannot be written (exists already, bad path, failed mid-way)."""


class TopicNotFoundError(BagError):
    """A topic the profile needs is not in the bag; the message lists the candidates."""


class MessageError(LidarSslError):
    """A message cannot be converted. Carries where it came from when that is known."""

    def __init__(self, reason: str, *, topic: str | None = None, stamp_ns: int | None = None) -> None:
        self.reason = reason
        self.topic = topic
        self.stamp_ns = stamp_ns
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.topic is not None:
            where.append(f"topic {self.topic}")
        if self.stamp_ns is not None:
            where.append(f"t={self.stamp_ns / 1e9:.9f}s")
        return f"{' at '.join(where)}: {self.reason}" if where else self.reason

    def with_context(self, *, topic: str | None = None, stamp_ns: int | None = None) -> MessageError:
        """Return a copy of this error that also names the topic and stamp (keeps the subclass)."""
        err = type(self).__new__(type(self))
        MessageError.__init__(
            err,
            self.reason,
            topic=topic if topic is not None else self.topic,
            stamp_ns=stamp_ns if stamp_ns is not None else self.stamp_ns,
        )
        err.__cause__ = self.__cause__
        return err


class MalformedMessageError(MessageError):
    """A message's fields contradict each other (sizes, steps, offsets) or its payload is truncated."""


class UnsupportedEncodingError(MessageError):
    """An image encoding, compression format or PointField datatype we do not handle."""


class CalibrationError(LidarSslError):
    """Calibration is missing or unusable (no CameraInfo, no transform between two frames, bad K)."""


class TransformNotFoundError(CalibrationError):
    """No transform between two frames at the asked time."""


class SyncError(LidarSslError):
    """The synchroniser was misused (e.g. unknown source name)."""


class SuperpixelError(LidarSslError):
    """Superpixels cannot be computed or loaded (bad mask file, size mismatch)."""


class DatasetError(LidarSslError):
    """A dataset cannot be built (no usable frame, inconsistent bags)."""


class LossInputError(LidarSslError, ValueError):
    """Tensors given to a loss have inconsistent shapes, dtypes or values (the message names them)."""


class PointCloudInputError(LidarSslError, ValueError):
    """A cloud given to the inference engine has the wrong layout or size (the message says which)."""


class ModelPackageError(LidarSslError):
    """A model package cannot be written or loaded (missing or tampered file, newer format)."""


class EngineCompatibilityError(ModelPackageError):
    """A compiled engine was built for another GPU / TensorRT version and cannot be rebuilt here."""


class BackendUnavailableError(ConfigError, ImportError):
    """An inference backend was asked for whose runtime (onnxruntime, TensorRT, spconv, CUDA) is missing."""
