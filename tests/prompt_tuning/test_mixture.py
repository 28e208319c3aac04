"""Pretraining on a mixture of canvas formats: the rows it adds, that they leak nothing into the
next-title or canvas evaluations, and a pretraining run that uses them."""

from __future__ import annotations

import pytest
import torch

from gen_fm.config import Augmentation, PretrainConfig
from gen_fm.dataset import IGNORE, catalog_to_sid_rows, to_sid_rows
from gen_fm.tokenizer import PromptEncoder
from prompt_tuning.canvases import build_canvas_data, mixture_examples
from prompt_tuning.config import PromptTuningStageConfig
from semantic_ids.layout import SEP


@pytest.fixture(scope="module")
def mix(slice_world, tmp_path_factory):
    data, split, ids, model_dir, _ = slice_world
    enc = PromptEncoder.from_ids(ids, 8)
    rows, info = mixture_examples(
        data, split, ids, model_dir / "semantic_ids", enc, ("search", "collection"), per_canvas=10_000, seed=0
    )
    return data, split, ids, enc, rows, info


def test_rows_are_a_prompt_then_one_target_with_the_loss_on_the_target(mix):
    *_, enc, rows, info = mix
    L = enc.layout.sid_length
    assert len(rows) == sum(m["examples"] for m in info.values()) > 0
    assert set(info) == {"search", "collection"}
    for ids, labels in zip(rows["input_ids"], rows["labels"]):
        assert len(ids) == len(labels)
        assert labels[-L:] == ids[-L:]  # the target's code tokens carry the loss
        assert all(x == IGNORE for x in labels[:-L])  # nothing else does
        assert SEP in ids[:-L]  # every mixed canvas has a context after <sep>


def test_no_member_example_targets_or_shows_their_held_out_titles(mix):
    data, split, ids, enc, rows, info = mix
    sid_rows = catalog_to_sid_rows(data, ids)
    L = enc.layout.sid_length
    held = {}
    for name in ("valid", "test"):
        ex = split.examples(name)
        for u, t in zip(ex.users, to_sid_rows(ex.targets, sid_rows)):
            held.setdefault(int(u), set()).add(tuple(enc.sid_tokens[t].tolist()))
    checked = 0
    for ids_, member in zip(rows["input_ids"], rows["member"]):
        if member < 0:
            continue
        out = held.get(member, set())
        assert tuple(ids_[-L:]) not in out
        sep = ids_.index(SEP)
        # history titles sit between the prefix and <sep>, whole IDs of L tokens
        hist = ids_[:sep]
        titles = {tuple(hist[i : i + L]) for i in range(len(hist) - L + 1)}
        assert not (titles & out)
        checked += 1
    assert checked > 0


def test_no_held_out_canvas_example_is_mixed_in(mix, slice_world):
    data, split, ids, enc, rows, _ = mix
    model_dir = slice_world[3]
    from prompt_tuning.canvases import QueryEncoder

    queries = QueryEncoder(model_dir / "semantic_ids")
    cfg = PromptTuningStageConfig.create(canvas="search", max_train_examples=None, max_eval_examples=None)
    held = build_canvas_data("search", data, split, ids, enc, cfg, queries).test
    mixed = {tuple(x) for x in rows["input_ids"]}
    for ex in held:
        assert tuple(ex.prompt(enc, "search") + enc.sid_tokens[ex.target].tolist()) not in mixed


def test_a_canvas_asked_the_home_question_is_not_mixed_in(slice_world):
    data, split, ids, model_dir, _ = slice_world
    with pytest.raises(ValueError, match="t2t.*next-title windows pretraining already holds"):
        mixture_examples(
            data,
            split,
            ids,
            model_dir / "semantic_ids",
            PromptEncoder.from_ids(ids, 8),
            ("t2t",),
            per_canvas=10,
        )


def test_config_validates_the_mixture():
    assert Augmentation(canvas_mix="search, t2t").canvas_mix == ("search", "t2t")
    for bad in (("home",), ("search", "search"), ("nope",)):
        with pytest.raises(ValueError, match="canvas_mix"):
            Augmentation(canvas_mix=bad)
    with pytest.raises(ValueError, match="canvas_mix_examples"):
        Augmentation(canvas_mix_examples=0)


def test_pretraining_with_a_mixture_records_it_and_learns_the_contexts(slice_world, tmp_path):
    from gen_fm.model import load_model
    from gen_fm.train import pretrain
    from prompt_tuning.canvases import pretraining_mixture
    from core.data import load_data
    from core.sequences import SequenceConfig

    data, split, ids, model_dir, dc = slice_world
    config = PretrainConfig.from_preset(
        "tiny",
        epochs=2,
        batch_size=32,
        num_user_buckets=8,
        eval_every=0,
        lr=3e-3,
        canvas_mix=("collection",),
        canvas_mix_examples=50,
    )
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(ValueError, match="pass the mixture's rows"):
            pretrain(dc, SequenceConfig(max_history=8), model_dir / "semantic_ids", tmp_path / "x", config)
        seq = SequenceConfig(max_history=8)
        rows = pretraining_mixture(load_data(dc), seq, model_dir / "semantic_ids", config)
        out = pretrain(dc, seq, model_dir / "semantic_ids", tmp_path / "run", config, extra_rows=rows)
    finally:
        torch.set_num_threads(before)
    gen = load_model(out)
    assert gen.config.augment.canvas_mix == ("collection",)
    mix = gen.manifest["training"]["canvas_mix"]
    assert mix["collection"]["examples"] == 50
    # the rows were trained on, next to the same next-title windows as the run without a mixture
    base = load_model(model_dir).manifest["training"]["train_windows"]
    assert gen.manifest["training"]["train_windows"] == base + 50
