"""Config overrides: presets, ``--set``, dotted keys into nested stage configs, clear errors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from core.overrides import build_config, config_from_args, parse_overrides


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    epochs: int = 3


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=lambda: Inner(epochs=5))
    options: dict = field(default_factory=dict)


def test_dotted_keys_nest_and_merge_with_the_preset(tmp_path):
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"inner": {"lr": 0.5}, "name": "a"}))
    values = parse_overrides(str(preset), ["inner.epochs=7", "options.k=2", "name=b"])
    assert values == {"inner": {"lr": 0.5, "epochs": 7}, "options": {"k": 2}, "name": "b"}


def test_a_nested_override_keeps_the_other_defaults_of_the_nested_config():
    c = config_from_args(Outer, None, ["inner.lr=0.1"])
    assert c.inner == Inner(lr=0.1, epochs=5)  # epochs from Outer's default Inner, not Inner's own
    assert config_from_args(Outer, None, None) == Outer()
    assert config_from_args(Outer, None, ["options.k=2"]).options == {"k": 2}


def test_unknown_fields_are_named_at_any_depth():
    with pytest.raises(ValueError, match=r"unknown Outer.inner field\(s\): lrr; known: epochs, lr"):
        build_config(Outer, {"inner": {"lrr": 1}})
    with pytest.raises(SystemExit, match="unknown Outer field"):
        config_from_args(Outer, None, ["nme=1"])
    with pytest.raises(SystemExit, match="key=value"):
        parse_overrides(None, ["lr"])
