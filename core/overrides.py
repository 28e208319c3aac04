"""Config overrides as every command takes them: a JSON preset file, then ``--set key=value``.

A config may hold other configs as fields (a stage's concerns, or a pipeline's stages); a key
reaches into them in one of two ways:

- its dotted path: ``--set optim.lr=0.002``, ``--set pretrain.optim.lr=0.001``; a preset file may
  give the same as JSON objects (``{"optim": {"lr": 0.002}}``), which override only the keys they
  name;
- as a shorthand, the field's name alone when exactly one nested config has a field of that name:
  ``--set lr=0.002`` is ``optim.lr`` in a ``PretrainConfig``. A name that several nested configs
  have (``epochs`` in a pipeline whose stages all train) is refused, naming the paths to choose from.

``pretrain.preset=base`` starts from that preset; a dict-typed field takes dotted keys, merged.
A config that moved or renamed a field lists the old name in a ``RENAMED`` class attribute (old
name -> new dotted path), so old commands and the configs recorded in old artifacts still read.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
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


def nest_keys(cls: type, values: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """`values` (overrides of the dataclass `cls`) with every key where it belongs.

    A dotted key becomes nested dicts, a shorthand name (see the module docstring) its full path,
    at any depth; later keys win over earlier ones for the same field. Nothing is filled in: what
    is not named stays absent. Unknown and ambiguous names are refused, naming the valid keys.
    """
    name = where or cls.__name__
    fields = {f.name for f in dataclasses.fields(cls)}
    nested = _configs_below(cls)
    below = _names_below(cls)
    renamed = renamed_fields(cls)
    out: dict[str, Any] = {}
    unknown, ambiguous = [], []
    for key, value in values.items():
        path = key.split(".")
        if path[0] in renamed:
            path = renamed[path[0]].split(".") + path[1:]
        elif path[0] not in fields:
            found = below.get(path[0], [])
            if len(found) != 1:
                (ambiguous if found else unknown).append((path[0], found))
                continue
            path = found[0].split(".") + path[1:]
        _put(out, path, value)
    if unknown:
        raise ValueError(
            f"unknown {name} field(s): {', '.join(k for k, _ in unknown)}; known: {describe(cls)}"
        )
    if ambiguous:
        raise ValueError(
            "; ".join(f"{name}: {k!r} is a field of several configs ({', '.join(p)})" for k, p in ambiguous)
            + ": give its full path"
        )
    for key, value in out.items():
        if key in nested and isinstance(value, Mapping):
            out[key] = nest_keys(nested[key], value, f"{name}.{key}")
    return out


def build_config(cls: type, values: Mapping[str, Any], where: str = "", base=None, presets: bool = True):
    """`cls` with `values` (overrides, keys as ``nest_keys`` reads them) applied to `base`.

    `base` is an instance of `cls`; None = the class defaults. A field holding a config takes a
    dict of overrides of its current value. With `presets`, a ``preset`` key of a config that has
    ``from_preset`` starts from that preset (a manifest's recorded preset name does not: it is read
    with ``presets=False``).
    """
    name = where or cls.__name__
    values = nest_keys(cls, values, name)
    if presets and "preset" in values and hasattr(cls, "from_preset"):
        base = cls.from_preset(values["preset"])
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        current = getattr(base, key) if base is not None else _default(fields[key])
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            value = build_config(type(current), value, f"{name}.{key}", base=current, presets=presets)
        elif isinstance(current, dict) and isinstance(value, Mapping):
            value = merged(current, value)
        kwargs[key] = value
    return cls(**kwargs) if base is None else dataclasses.replace(base, **kwargs)


def override(config, values: Mapping[str, Any]):
    """`config` with `values` applied (keys as ``--set`` takes them; a ``preset`` key is a name)."""
    return build_config(type(config), values, base=config, presets=False)


def config_from_args(cls: type, preset: str | None, overrides: list[str] | None, **explicit: Any):
    """Build a stage config: defaults <- preset file (JSON of overrides) <- --set key=value <- flags."""
    values = parse_overrides(preset, overrides)
    values.update({k: v for k, v in explicit.items() if v is not None})
    try:
        return build_config(cls, values)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: invalid {cls.__name__}: {e}") from e


def overrides_of(config: type) -> Any:
    """A dict field holding overrides of `config` (e.g. a fine-tune's changes to its parent's
    config): its keys are placed and checked as a nested config's are, and shorthand names reach it."""
    return dataclasses.field(default_factory=dict, metadata={_OVERRIDES_OF: config})


def describe(cls: type) -> str:
    """The keys `cls` takes, nested configs as ``name.{...}``: ``epochs, lr, inner.{a, b}``."""
    nested = _configs_below(cls)
    names = sorted(f.name for f in dataclasses.fields(cls) if f.name not in nested)
    return ", ".join(names + [f"{n}.{{{describe(c)}}}" for n, c in nested.items()])


_OVERRIDES_OF = "overrides_of"


def _configs_below(cls: type) -> dict[str, type]:
    """Fields of `cls` whose keys are another config's, in declaration order: a nested config (a
    dataclass by default) or a dict of overrides of one (``overrides_of``)."""
    out = {}
    for f in dataclasses.fields(cls):
        target = f.metadata.get(_OVERRIDES_OF)
        if target is None:
            default = _default(f)
            target = type(default) if dataclasses.is_dataclass(default) else None
        if target is not None:
            out[f.name] = target
    return out


def renamed_fields(cls: type) -> dict[str, str]:
    """`cls`'s old field names -> their dotted paths now (its ``RENAMED`` class attribute)."""
    return dict(getattr(cls, "RENAMED", None) or {})


def _names_below(cls: type) -> dict[str, list[str]]:
    """Every field name inside `cls`'s nested configs (any depth), old names included -> the
    dotted paths holding it."""
    index: dict[str, list[str]] = {}
    for name, sub in _configs_below(cls).items():
        for f in dataclasses.fields(sub):
            index.setdefault(f.name, []).append(f"{name}.{f.name}")
        for old, new in renamed_fields(sub).items():
            index.setdefault(old, []).append(f"{name}.{new}")
        for leaf, paths in _names_below(sub).items():
            index.setdefault(leaf, []).extend(f"{name}.{p}" for p in paths)
    return index


def _put(node: dict[str, Any], path: list[str], value: Any) -> None:
    """Set `value` at `path` inside `node`, merging into what is there (never into the caller's dicts)."""
    for part in path[:-1]:
        child = node.get(part)
        if dataclasses.is_dataclass(child) and not isinstance(child, type):
            child = _shallow(child)
        node[part] = dict(child) if isinstance(child, Mapping) else {}
        node = node[part]
    last = path[-1]
    current = node.get(last)
    if dataclasses.is_dataclass(current) and not isinstance(current, type) and isinstance(value, Mapping):
        current = _shallow(current)
    node[last] = (
        merged(current, value) if isinstance(current, Mapping) and isinstance(value, Mapping) else value
    )


def merged(base: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `values` merged in key by key, at every depth (new dicts; neither is changed)."""
    out = dict(base)
    for key, value in values.items():
        if isinstance(out.get(key), Mapping) and isinstance(value, Mapping):
            value = merged(out[key], value)
        out[key] = value
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _shallow(obj) -> dict[str, Any]:
    """A dataclass's fields as a dict, nested dataclasses kept as objects (not ``asdict``'s dicts)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
