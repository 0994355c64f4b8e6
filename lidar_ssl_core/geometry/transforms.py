"""Small SE(3) helpers. Quaternions are (x, y, z, w) as in geometry_msgs, unless a name says wxyz."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Matrix4 = npt.NDArray[np.float64]


def quat_xyzw_to_matrix(q: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """3x3 rotation of a (not necessarily unit) quaternion (x, y, z, w)."""
    x, y, z, w = np.asarray(q, dtype=np.float64)
    n = x * x + y * y + z * z + w * w
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"quaternion {tuple(float(v) for v in (x, y, z, w))} has no rotation")
    s = 2.0 / n
    return np.array(
        [
            [1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w)],
            [s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w)],
            [s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y)],
        ]
    )


def matrix_to_quat_xyzw(R: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Unit quaternion (x, y, z, w) with w >= 0 of a 3x3 rotation matrix."""
    m = np.asarray(R, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    quat = np.asarray(q)
    quat /= np.linalg.norm(quat)
    return -quat if quat[3] < 0 else quat


def make_transform(rotation: npt.ArrayLike, translation: npt.ArrayLike) -> Matrix4:
    """4x4 homogeneous transform from a 3x3 rotation and a 3-vector."""
    T = np.eye(4)
    T[:3, :3] = np.asarray(rotation, dtype=np.float64)
    T[:3, 3] = np.asarray(translation, dtype=np.float64)
    return T


def transform_from_quat(translation: npt.ArrayLike, quat_xyzw: npt.ArrayLike) -> Matrix4:
    return make_transform(quat_xyzw_to_matrix(quat_xyzw), translation)


def invert(T: Matrix4) -> Matrix4:
    """Inverse of a rigid transform (uses R^T, exact for rotations)."""
    R = T[:3, :3]
    out = np.eye(4)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ T[:3, 3]
    return out


def apply(T: Matrix4, points: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Apply a 4x4 transform to (N, 3) points."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ T[:3, :3].T + T[:3, 3]


def slerp_xyzw(q0: npt.ArrayLike, q1: npt.ArrayLike, alpha: float) -> npt.NDArray[np.float64]:
    """Spherical interpolation between two unit quaternions, shortest path."""
    a = np.asarray(q0, dtype=np.float64)
    b = np.asarray(q1, dtype=np.float64)
    dot = float(np.dot(a, b))
    if dot < 0.0:
        b, dot = -b, -dot
    if dot > 0.9995:
        out = a + alpha * (b - a)
        return np.asarray(out / np.linalg.norm(out), dtype=np.float64)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    out = (np.sin((1 - alpha) * theta) * a + np.sin(alpha * theta) * b) / np.sin(theta)
    return np.asarray(out, dtype=np.float64)


def interpolate(T0: Matrix4, T1: Matrix4, alpha: float) -> Matrix4:
    """Rigid interpolation: linear in translation, slerp in rotation."""
    q = slerp_xyzw(matrix_to_quat_xyzw(T0[:3, :3]), matrix_to_quat_xyzw(T1[:3, :3]), alpha)
    t = (1 - alpha) * T0[:3, 3] + alpha * T1[:3, 3]
    return transform_from_quat(t, q)
