"""Pretraining methods behind one interface (:mod:`.base`), one module per method, registered by name."""

from __future__ import annotations

from lidar_ssl_core.train.methods.base import (
    MethodError,
    MethodOutput,
    MethodSetup,
    PretrainMethod,
    StepContext,
    build_method,
    method_class,
    method_names,
    register,
)

__all__ = [
    "MethodError",
    "MethodOutput",
    "MethodSetup",
    "PretrainMethod",
    "StepContext",
    "build_method",
    "method_class",
    "method_names",
    "register",
]
