"""Read integer message fields within their ROS type range, or fail with a typed error.

Messages built in Python (duck-typed, rclpy without its setters, hand-made test doubles) can carry a
``None``, a negative size or an int far beyond uint32 where the ROS type cannot. ``int()`` on such a value
raises a bare ``TypeError``/``ValueError``/``OverflowError`` deep inside numpy; these helpers turn every
such value into a ``MalformedMessageError`` that names the field and the range it must lie in.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from lidar_ssl_core.errors import MalformedMessageError

UINT8_MAX = 2**8 - 1
UINT32_MAX = 2**32 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def int_field(value: Any, what: str, lo: int, hi: int) -> int:
    """``value`` as an ``int`` in ``[lo, hi]``; integral floats are accepted, anything else is refused."""
    if isinstance(value, bool):
        number: int | None = int(value)
    elif isinstance(value, numbers.Integral):
        number = int(value)
    elif isinstance(value, numbers.Real) and math.isfinite(float(value)) and float(value).is_integer():
        number = int(float(value))
    else:
        number = None
    if number is None:
        raise MalformedMessageError(f"{what} is {value!r} ({type(value).__name__}), expected an integer")
    if not lo <= number <= hi:
        raise MalformedMessageError(f"{what} is {number}, outside its type's range [{lo}, {hi}]")
    return number


def uint32_field(value: Any, what: str) -> int:
    """A ROS ``uint32`` field (sizes, steps, offsets, counts)."""
    return int_field(value, what, 0, UINT32_MAX)


def uint8_field(value: Any, what: str) -> int:
    """A ROS ``uint8`` field (PointField.datatype)."""
    return int_field(value, what, 0, UINT8_MAX)
