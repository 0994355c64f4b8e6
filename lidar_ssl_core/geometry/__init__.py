"""Rigid transforms, the transform buffer, calibration and LiDAR-to-camera projection."""
