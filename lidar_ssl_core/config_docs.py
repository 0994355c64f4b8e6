"""Generate the configuration reference (docs/config.md) from the pydantic models themselves.

The reference is generated rather than hand-written so it cannot drift: a test compares the committed
file with this output, and ``lidar-ssl config --markdown`` regenerates it.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any

from pydantic import BaseModel

from lidar_ssl_core.config import Config


def _default_text(value: Any) -> str:
    if isinstance(value, Enum):
        return f"`{value.value}`"
    if isinstance(value, tuple | list):
        return "`" + json.dumps([v.value if isinstance(v, Enum) else v for v in value]) + "`"
    if value is None:
        return "`null`"
    return f"`{json.dumps(value) if isinstance(value, bool | str) else value}`"


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows: list[str] = []
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested.append((f"{prefix}{name}", annotation))
            continue
        rows.append(f"| `{prefix}{name}` | {_default_text(info.default)} | {info.description or ''} |")
    for path, sub in nested:
        doc = (sub.__doc__ or "").strip().splitlines()[0] if sub.__doc__ else ""
        rows.append("")
        rows.append(f"### `{path}`" + (f": {doc}" if doc else ""))
        rows.append("")
        rows.append("| key | default | meaning |")
        rows.append("| --- | --- | --- |")
        rows.extend(_rows(sub, f"{path}."))
    return rows


def config_reference_markdown() -> str:
    """Markdown table of every config key, its default and its description."""
    head = [
        "# Configuration reference",
        "",
        "Generated from `lidar_ssl_core/config.py` by `lidar-ssl config --markdown`; do not edit by hand.",
        "A YAML file passed with `--config` overrides any subset of these keys (unknown keys are errors);",
        "`lidar-ssl config` prints the resolved configuration as YAML.",
        "",
        "| key | default | meaning |",
        "| --- | --- | --- |",
    ]
    return "\n".join(head + _rows(Config, "")) + "\n"
