"""Config overrides as every command takes them: a JSON preset file, then ``--set key=value``.

On the ground floor: the CLI and every benchmark entry point build their stage configs this way.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any


def parse_overrides(preset: str | None, overrides: list[str] | None) -> dict[str, Any]:
    """Config overrides from a JSON preset file, then `--set key=value` (values parsed as JSON)."""
    values: dict[str, Any] = {}
    if preset:
        path = Path(preset)
        if not path.is_file():
            raise SystemExit(f"error: preset file {preset} does not exist")
        values.update(json.loads(path.read_text()))
    for item in overrides or []:
        if "=" not in item:
            raise SystemExit(f"error: --set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values


def config_from_args(cls: type, preset: str | None, overrides: list[str] | None, **explicit: Any):
    """Build a stage config: defaults <- preset file (JSON of overrides) <- --set key=value <- flags."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values = parse_overrides(preset, overrides)
    values.update({k: v for k, v in explicit.items() if v is not None})
    unknown = sorted(set(values) - fields)
    if unknown:
        raise SystemExit(f"error: unknown {cls.__name__} field(s): {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(fields))}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: invalid {cls.__name__}: {e}") from e
