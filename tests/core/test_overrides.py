"""Config overrides: presets, ``--set``, dotted keys into nested stage configs, clear errors."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from core.overrides import (
    build_config,
    config_from_args,
    describe,
    nest_keys,
    override,
    overrides_of,
    parse_overrides,
)


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


@dataclass(frozen=True)
class Other:
    epochs: int = 1
    width: int = 8


@dataclass(frozen=True)
class Pipeline:
    k: int = 10
    outer: Outer = field(default_factory=Outer)
    other: Other = field(default_factory=Other)


def test_a_name_unique_across_the_nested_configs_is_a_shorthand_for_its_path():
    assert config_from_args(Outer, None, ["lr=0.1"]) == config_from_args(Outer, None, ["inner.lr=0.1"])
    assert config_from_args(Outer, None, ["lr=0.1"]).inner == Inner(lr=0.1, epochs=5)
    # at any depth, and inside a nested config's own key
    p = config_from_args(Pipeline, None, ["lr=0.2", "width=4", "outer.epochs=9"])
    assert (p.outer.inner.lr, p.other.width, p.outer.inner.epochs) == (0.2, 4, 9)
    # a direct field is never a shorthand: `k` is Pipeline.k
    assert config_from_args(Pipeline, None, ["k=3"]).k == 3
    # the later of two keys for one field wins (a preset file, then --set, in that order)
    assert nest_keys(Outer, {"inner": {"lr": 1}, "lr": 2}) == {"inner": {"lr": 2}}
    assert nest_keys(Outer, {"lr": 1, "inner": {"lr": 2, "epochs": 3}}) == {"inner": {"lr": 2, "epochs": 3}}


def test_an_ambiguous_or_unknown_name_is_refused_naming_the_choices():
    with pytest.raises(SystemExit, match=r"'epochs' is a field of several configs \(outer.inner.epochs, "
                       r"other.epochs\): give its full path"):  # fmt: skip
        config_from_args(Pipeline, None, ["epochs=2"])
    with pytest.raises(SystemExit, match=r"unknown Pipeline field\(s\): nope; known: k, "
                       r"outer.\{name, options, inner.\{epochs, lr\}\}, other.\{epochs, width\}"):  # fmt: skip
        config_from_args(Pipeline, None, ["nope=1"])
    assert describe(Outer) == "name, options, inner.{epochs, lr}"


def test_dict_fields_merge_key_by_key_at_every_depth():
    @dataclass(frozen=True)
    class WithDict:
        recipe: dict = field(default_factory=lambda: {"optim": {"lr": 1, "epochs": 3}, "seed": 0})

    c = config_from_args(WithDict, None, ["recipe.optim.lr=2"])
    assert c.recipe == {"optim": {"lr": 2, "epochs": 3}, "seed": 0}
    assert WithDict().recipe["optim"]["lr"] == 1  # the default itself is never changed
    assert override(c, {"recipe": {"seed": 4}}).recipe == {"optim": {"lr": 2, "epochs": 3}, "seed": 4}


def test_a_dict_of_overrides_of_a_config_takes_its_keys():
    @dataclass(frozen=True)
    class Run:
        tweak: dict = overrides_of(Outer)

    assert config_from_args(Run, None, ["tweak.lr=0.5", "tweak.name=y"]).tweak == {
        "inner": {"lr": 0.5},
        "name": "y",
    }
    assert config_from_args(Run, None, ["lr=0.5"]).tweak == {"inner": {"lr": 0.5}}  # a shorthand reaches it
    with pytest.raises(SystemExit, match=r"unknown Run.tweak field\(s\): lrr"):
        config_from_args(Run, None, ["tweak.lrr=1"])


def test_a_renamed_field_is_read_by_its_old_name_at_any_depth():
    @dataclass(frozen=True)
    class Judge:
        k: int = 10

    @dataclass(frozen=True)
    class Checks:
        RENAMED: ClassVar[dict[str, str]] = {"eval_k": "judge.k"}
        judge: Judge = field(default_factory=Judge)

    @dataclass(frozen=True)
    class Stage:
        checks: Checks = field(default_factory=Checks)

    assert [f.name for f in dataclasses.fields(Checks)] == ["judge"]  # a class attribute, not a field
    assert build_config(Checks, {"eval_k": 3}).judge.k == 3
    assert build_config(Stage, {"checks": {"eval_k": 4}}).checks.judge.k == 4  # as an old artifact holds it
    assert build_config(Stage, {"eval_k": 5}).checks.judge.k == 5  # the old name alone, as --set gives it
    assert build_config(Stage, {"k": 6}).checks.judge.k == 6
