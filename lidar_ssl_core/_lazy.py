"""Lazy package exports: a package names what it offers without importing torch until a name is used.

``lidar_ssl_core.config`` imports the typed configs of ``models``, ``losses`` and ``train``; if their
packages imported torch eagerly, every config error and ``--help`` would pay seconds for it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``package.<module>`` for ``name`` on first use (PEP 562)."""

    def module_getattr(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        vars(importlib.import_module(package))[name] = value  # later look-ups skip this function
        return value

    return module_getattr
