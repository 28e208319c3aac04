"""PretrainConfig grouped by concern: few top-level fields, presets and overrides by path or by name,
and the flat configs that older model folders and checkpoints hold read back into the same config."""

from __future__ import annotations

import dataclasses
import json

import pytest

from core.artifacts import jsonable
from core.overrides import parse_overrides
from gen_fm.config import Augmentation, ModelShape, Optimisation, PretrainConfig, TitleOptions
from gen_fm.recipes import DENSE_SHAPE, PRESETS, SPARSE_TITLE_SHAPE
from gen_fm.model import build_model, load_model
from gen_fm.tokenizer import PromptEncoder
from tests.tiny_folders import save_unit_model, write_id_artifact

# A model folder's config as written before the grouping (the fields of an ml-latest-small run's
# manifest, by hand): every field at the top level under its own name.
FLAT = {
    "preset": "small",
    "hidden_size": 128,
    "num_layers": 4,
    "num_heads": 4,
    "num_kv_heads": None,
    "intermediate_size": 512,
    "dropout": 0.1,
    "hidden_dropout": 0.1,
    "rope_theta": 10000.0,
    "position_headroom": 64,
    "num_user_buckets": 0,
    "history_tokens": "titles",
    "identity_dropout": 0.2,
    "title_loss_weight": 1.0,
    "item_dropout": 0.0,
    "window_jitter": False,
    "label_smoothing": 0.0,
    "canvas_mix": [],
    "canvas_mix_examples": 2000,
    "mtp_tokens": 0,
    "mtp_weight": 0.5,
    "category_weight": 0.0,
    "category_min_titles": 5,
    "lr": 0.002,
    "weight_decay": 0.05,
    "betas": [0.9, 0.98],
    "schedule": "cosine",
    "warmup_ratio": 0.05,
    "batch_size": 64,
    "grad_accum": 1,
    "max_grad_norm": 1.0,
    "ema_decay": 0.995,
    "epochs": 12,
    "max_steps": None,
    "mixed_precision": "auto",
    "seed": 0,
    "eval_every": 1,
    "eval_from": 0.0,
    "eval_k": 10,
    "num_beams": None,
    "val_users": None,
    "selection": "within-se",
    "eval_batch_size": 64,
    "patience": 0,
    "checkpoint_every_steps": 1000,
    "keep_checkpoints": 2,
}
# Fields added after the grouping, at their defaults (a flat manifest predates them).
ADDED_SINCE = {
    "title_code_rows": "shared",
    "code_loss_weight": 1.0,
    "hidden_dropout_on": None,  # read back from a model folder as "all" (PretrainConfig.from_manifest)
    "judge_by": "ranking",
    "init": "llama",
}
NESTED = PretrainConfig.from_preset(
    "small",
    model=dict(num_layers=4, dropout=0.1, hidden_dropout=0.1, history_tokens="titles"),
    titles=dict(identity_dropout=0.2, title_loss_weight=1.0),
    optim=dict(lr=0.002, batch_size=64, ema_decay=0.995, epochs=12),
    validation=dict(val_users=None),
)


def test_few_top_level_fields_each_concern_its_own_dataclass():
    top = dataclasses.fields(PretrainConfig)
    assert len(top) <= 12
    concerns = [f.name for f in top if dataclasses.is_dataclass(getattr(NESTED, f.name))]
    assert concerns == ["model", "titles", "objectives", "augment", "optim", "validation", "checkpoints"]
    # every field name is unique across the concerns: the name alone finds it, and the flat form
    # is the config as it was before the grouping, field for field
    assert sorted(NESTED.by_name()) == sorted({**FLAT, **ADDED_SINCE})
    assert len(NESTED.by_path()) == len(FLAT) + len(ADDED_SINCE)


def test_a_model_folder_written_before_validation_nested_its_judge_loads():
    """Folders before the judge moved into validation hold eval_k / val_users beside the rest."""
    old = {
        "validation": {"eval_every": 2, "eval_k": 20, "num_beams": 30, "val_users": 300, "eval_batch_size": 8}
    }
    judge = PretrainConfig.from_dict(old).validation.judge
    assert (judge.k, judge.num_beams, judge.eval_users, judge.eval_batch_size) == (20, 30, 300, 8)
    assert PretrainConfig.from_dict(old).by_name()["eval_k"] == 20  # run folders keep their names


def test_a_flat_config_written_by_hand_loads_into_the_nested_one():
    assert PretrainConfig.from_dict(FLAT) == NESTED
    assert PretrainConfig.from_dict(jsonable(NESTED)) == NESTED
    assert NESTED.by_name() == {**FLAT, **ADDED_SINCE}
    older = {k: v for k, v in FLAT.items() if k not in ("canvas_mix", "mtp_tokens", "ema_decay")}
    assert PretrainConfig.from_dict(older) == dataclasses.replace(
        NESTED, optim=dataclasses.replace(NESTED.optim, ema_decay=0.0)
    )  # fields a manifest predates take their defaults, never a preset's
    with pytest.raises(ValueError, match="unknown PretrainConfig field.*hidden; known: preset, seed"):
        PretrainConfig.from_dict({**FLAT, "hidden": 3})


def test_a_model_folder_with_a_flat_manifest_loads(tmp_path):
    ids = write_id_artifact(tmp_path / "ids", [f"t{i}" for i in range(20)], (8, 8, 4))
    config = PretrainConfig.from_dict({**FLAT, "history_tokens": "codes", "identity_dropout": 0.0,
                                       "title_loss_weight": 0.0})  # fmt: skip
    enc = PromptEncoder.from_ids(ids, 0)
    out = save_unit_model(tmp_path / "model", build_model(config, enc.layout, 4), enc.layout, ids, config, 4)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["optim"]["lr"] == 0.002  # new folders store the nested form
    manifest["config"] = {
        **FLAT,
        "history_tokens": "codes",
        "identity_dropout": 0.0,
        "title_loss_weight": 0.0,
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    # a folder written before hidden_dropout_on existed trained its hidden dropout at every position
    assert config.model.hidden_dropout_on is None
    assert load_model(out).config == dataclasses.replace(
        config, model=dataclasses.replace(config.model, hidden_dropout_on="all")
    )


def test_overrides_by_path_or_by_unique_name_give_the_same_config():
    """`sidrec pretrain --set`: ``optim.lr=...`` or ``lr=...``; nested dicts merge into the preset."""

    def pretrain_config(*sets: str) -> PretrainConfig:
        return PretrainConfig.from_preset("base", **parse_overrides(None, list(sets)))

    by_path = pretrain_config("optim.lr=0.002", "model.hidden_dropout=0.1", "augment.canvas_mix=search,t2t")
    by_name = pretrain_config("lr=0.002", "hidden_dropout=0.1", "canvas_mix=search,t2t")
    assert by_path == by_name
    assert by_name.optim == dataclasses.replace(PretrainConfig.from_preset("base").optim, lr=0.002)
    assert by_name.augment.canvas_mix == ("search", "t2t") and by_name.augment.item_dropout == 0.1
    assert pretrain_config("seed=3", "val_users=null").validation.judge.eval_users is None
    with pytest.raises(ValueError, match=r"unknown PretrainConfig field\(s\): lrr; known: .*optim\.\{.*lr"):
        pretrain_config("lrr=0.1")
    with pytest.raises(ValueError, match=r"unknown PretrainConfig.optim field\(s\): hidden_size"):
        pretrain_config("optim.hidden_size=64")
    with pytest.raises(ValueError, match="lr must be > 0"):
        pretrain_config("lr=0")


def test_presets_hold_nested_overrides_and_explicit_ones_win():
    for name, over in PRESETS.items():
        assert set(over) <= {f.name for f in dataclasses.fields(PretrainConfig)}, name
    base = PretrainConfig.from_preset("base", optim={"epochs": 3})
    assert (base.optim.epochs, base.optim.lr, base.model.hidden_size, base.preset) == (3, 1e-3, 256, "base")
    assert base.augment == Augmentation(item_dropout=0.1, window_jitter=True)
    assert PretrainConfig.from_preset("tiny", optim=Optimisation(lr=0.5)).optim == Optimisation(lr=0.5)
    assert PretrainConfig.from_preset("tiny").model == ModelShape(
        hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, dropout=0.1
    )


def test_each_concern_checks_its_own_fields_and_the_config_checks_across_them():
    with pytest.raises(ValueError, match="head size 16"):
        ModelShape(hidden_size=64, num_heads=4)
    with pytest.raises(ValueError, match=r"these must be >= 1: \['epochs'\]"):
        Optimisation(epochs=0)
    with pytest.raises(ValueError, match="canvas_mix"):
        Augmentation(canvas_mix="home")
    with pytest.raises(ValueError, match="need history_tokens 'titles'"):
        PretrainConfig.from_dict({"identity_dropout": 0.1})
    with pytest.raises(ValueError, match="need history_tokens 'titles'"):
        PretrainConfig.from_dict({"code_loss_weight": 0.5})
    with pytest.raises(ValueError, match="'trunk' needs history_tokens 'titles'"):
        ModelShape(hidden_dropout_on="trunk")
    assert ModelShape(hidden_dropout_on="trunk", history_tokens="titles").hidden_dropout_on == "trunk"
    with pytest.raises(ValueError, match="init 'sasrec' needs history_tokens 'titles'"):
        ModelShape(init="sasrec")
    with pytest.raises(ValueError, match="init must be one of"):
        ModelShape(init="xavier", history_tokens="titles")
    with pytest.raises(ValueError, match="both 0: nothing to train"):
        TitleOptions(code_loss_weight=0.0)
    assert TitleOptions(code_loss_weight=0.0, title_loss_weight=1.0).code_loss_weight == 0.0
    with pytest.raises(ValueError, match=r"\['canvas_mix'\] read code-token histories"):
        PretrainConfig.from_dict({"history_tokens": "titles", "canvas_mix": "t2t"})
    c = PretrainConfig.from_dict({"epochs": 10, "eval_every": 3, "eval_from": 0.5})
    assert [e for e in range(1, 11) if c.validates(e)] == [6, 9, 10]


def test_depth_and_dropouts_left_unset_are_set_from_the_data_and_set_ones_are_kept():
    titles = PretrainConfig.from_preset("small", history_tokens="titles")
    assert titles.model.left_to_data == ("num_layers", "dropout", "hidden_dropout", "hidden_dropout_on")
    shop, movies = titles.for_data(7).model, titles.for_data(165).model  # median events per member
    assert {n: getattr(shop, n) for n in DENSE_SHAPE} == SPARSE_TITLE_SHAPE
    assert {n: getattr(movies, n) for n in DENSE_SHAPE} == DENSE_SHAPE
    assert shop.left_to_data == () and titles.for_data(7).optim == titles.optim  # nothing else changes
    codes = PretrainConfig.from_preset("small").for_data(7).model
    assert (codes.num_layers, codes.hidden_dropout, codes.hidden_dropout_on) == (4, 0.3, "all")

    # what is set explicitly is kept, the rest still comes from the data
    four = PretrainConfig.from_preset("small", history_tokens="titles", num_layers=4, hidden_dropout=0.1)
    assert (four.for_data(7).model.num_layers, four.for_data(7).model.hidden_dropout) == (4, 0.1)
    assert four.for_data(7).model.dropout == 0.5
    resolved = titles.for_data(7)
    assert resolved.for_data(165) is resolved
    # the GPU recipes set their own
    base = PretrainConfig.from_preset("base", history_tokens="titles")
    assert base.for_data(7) is base and base.model.hidden_dropout == 0.15
    with pytest.raises(ValueError, match="hidden_dropout"):
        ModelShape(hidden_dropout=1.0)
    with pytest.raises(ValueError, match="num_layers"):
        ModelShape(num_layers=0)


def test_a_model_is_built_only_from_a_config_with_its_depth_and_dropout_set(tmp_path):
    ids = write_id_artifact(tmp_path / "ids", [f"t{i}" for i in range(20)], (8, 8, 4))
    layout = PromptEncoder.from_ids(ids, 0).layout
    unset = PretrainConfig.from_preset("small", history_tokens="titles")
    with pytest.raises(ValueError, match="num_layers, dropout left to the data.*config_for_run"):
        build_model(unset, layout, 4)
    assert build_model(unset.for_data(7), layout, 4).config.num_hidden_layers == 2


def test_mixed_precision_auto_is_set_for_the_machine():
    auto = PretrainConfig.from_preset("small", mixed_precision="auto")
    assert auto.for_machine(True).optim.mixed_precision == "bf16"
    assert auto.for_machine(False).optim.mixed_precision == "no"
    assert auto.for_machine(True).model == auto.model  # nothing else changes
    fixed = PretrainConfig.from_preset("small", mixed_precision="no")
    assert fixed.for_machine(True) is fixed
