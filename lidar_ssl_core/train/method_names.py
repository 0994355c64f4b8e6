"""The names of the pretraining methods, read from the method package's files without importing them.

A method module ``train/methods/st_slidr.py`` registers the method ``st-slidr`` (``register`` enforces
it), so the config validator and ``lidar-ssl pretrain --help`` know every method without torch. Methods
registered from elsewhere (a user's own module) count once the registry is loaded.
"""

from __future__ import annotations

import importlib.util
import pkgutil
import sys

METHODS_PACKAGE = "lidar_ssl_core.train.methods"
#: modules of the package that hold shared code, not a method
SHARED_MODULES = frozenset({"base", "distill"})


def method_name_of_module(module: str) -> str:
    """``lidar_ssl_core.train.methods.st_slidr`` -> ``st-slidr``."""
    return module.rsplit(".", 1)[-1].replace("_", "-")


def available_method_names() -> tuple[str, ...]:
    """Every method name, sorted, from the module files (imports no method module)."""
    spec = importlib.util.find_spec(METHODS_PACKAGE)  # imports lidar_ssl_core.train only
    locations = spec.submodule_search_locations if spec is not None else None
    if not locations:
        return ()
    return tuple(
        sorted(
            method_name_of_module(info.name)
            for info in pkgutil.iter_modules(list(locations))
            if not info.name.startswith("_") and info.name not in SHARED_MODULES
        )
    )


def known_method_names() -> tuple[str, ...]:
    """The package's methods plus any registered from elsewhere (once the registry module is loaded)."""
    names = set(available_method_names())
    registry = sys.modules.get(f"{METHODS_PACKAGE}.base")
    if registry is not None:
        names.update(registry.registered_names())
    return tuple(sorted(names))
