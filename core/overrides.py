"""Config overrides as every command takes them: a JSON preset file, then ``--set key=value``.

On the ground floor: the command line builds every stage config this way. A config that drives
several stages holds the stages' own configs as fields; ``--set pretrain.lr=0.001`` reaches into
one of them, and a preset file may give a nested field as a JSON object (``{"pretrain": {"lr":
0.001}}``), which overrides only the keys it names; naming a ``preset`` of a config that has
presets (``pretrain.preset=base``) starts from that preset instead. A dict-typed field (e.g. a quantizer's own
options) takes dotted keys the same way.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any


def parse_overrides(preset: str | None, overrides: list[str] | None) -> dict[str, Any]:
    """Config overrides from a JSON preset file, then `--set key=value` (values parsed as JSON).

    Dotted keys become nested dicts: ``a.b=1`` -> ``{"a": {"b": 1}}``, merged with what the preset
    gave ``a``.
    """
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
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = value
    return values


def build_config(cls: type, values: dict[str, Any], where: str = ""):
    """``cls(**values)`` where a field holding a dataclass takes a dict of overrides of its default.

    Unknown keys are refused with the known ones named, at any depth.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    name = where or cls.__name__
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown {name} field(s): {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    kwargs = {}
    for key, value in values.items():
        f = fields[key]
        default = _default(f)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            base = _shallow(default)
            if "preset" in value and hasattr(type(default), "from_preset"):
                # a config with named presets (sizes, recipes): naming another preset starts from it
                base = _shallow(type(default).from_preset(value["preset"]))
            value = build_config(type(default), {**base, **value}, f"{name}.{key}")
        elif isinstance(default, dict) and isinstance(value, dict):
            value = {**default, **value}
        kwargs[key] = value
    return cls(**kwargs)


def config_from_args(cls: type, preset: str | None, overrides: list[str] | None, **explicit: Any):
    """Build a stage config: defaults <- preset file (JSON of overrides) <- --set key=value <- flags."""
    values = parse_overrides(preset, overrides)
    values.update({k: v for k, v in explicit.items() if v is not None})
    try:
        return build_config(cls, values)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: invalid {cls.__name__}: {e}") from e


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _shallow(obj) -> dict[str, Any]:
    """A dataclass's fields as a dict, nested dataclasses kept as objects (not ``asdict``'s dicts)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
