"""The unseen-title protocol on a real slice: what is held out, where it may not leak, and the
bench run end to end on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.data import DataConfig
from core.sequences import SequenceConfig, build_sequences, leave_one_out
from eval.unseen_titles import UnseenConfig, check_held_out, draw_unseen, figures, hold_out, prefix_unseen
from gen_fm.co_engagement import co_engagement_of_split
from gen_fm.config import PretrainConfig
from semantic_ids.config import SemanticIDConfig
from semantic_ids.ids import SemanticIDs
from sidrec.unseen_titles import run_unseen_titles
from tests.sidrec.test_quickstart import TINY_IDS

SEQ = SequenceConfig()


def test_the_draw_is_seeded_and_a_share_of_the_distinct_targets() -> None:
    targets = np.array([3, 3, 5, 7, 9, 9, 11, 13, 15, 17, 19, 21])
    a, b = draw_unseen(targets, 0.2, 0), draw_unseen(targets, 0.2, 0)
    assert a.tolist() == b.tolist() and len(a) == 2 and set(a) <= set(targets)
    assert draw_unseen(targets, 0.2, 1).tolist() != a.tolist() or len(np.unique(targets)) < 3
    assert len(draw_unseen(targets, 0.001, 0)) == 1  # at least one title


def test_unseen_titles_leave_training_validation_and_the_co_engagement_table(ml_small) -> None:
    held = hold_out(ml_small, SEQ, 0.2, 0)
    before = leave_one_out(build_sequences(ml_small, SEQ), SEQ)
    after = leave_one_out(build_sequences(held.data, SEQ), SEQ)
    unseen = held.unseen
    assert held.cold_members >= 1 and held.removed_events > 0
    _, train_rows = after.train_pairs()
    assert not np.isin(train_rows, unseen).any()
    assert not np.isin(after.examples("valid").targets, unseen).any()
    table = co_engagement_of_split(after, np.arange(len(ml_small.catalog)), len(ml_small.catalog))
    assert all(not np.isin(table.of(r), unseen).any() for r in range(len(ml_small.catalog)))
    # cold members keep their test target; every member keeps the same test target
    t_before = dict(zip(before.examples("test").users, before.examples("test").targets))
    t_after = after.examples("test")
    assert int(np.isin(t_after.targets, unseen).sum()) == held.cold_members
    ids_of = [before.sequences.user_ids[u] for u in t_before]
    same = dict(zip(ids_of, t_before.values()))
    for u, t in zip(t_after.users, t_after.targets):
        assert same[after.sequences.user_ids[u]] == t
    # the quantizer's view has no unseen title and none of their events
    seen_items = set(held.seen.catalog["item_id"])
    cat = list(ml_small.catalog["item_id"])
    assert not seen_items & {cat[r] for r in unseen}
    assert not set(held.seen.interactions["item_id"]) - seen_items
    assert held.data.fingerprint != ml_small.fingerprint != held.seen.fingerprint
    with pytest.raises(AssertionError, match="leak"):
        check_held_out(before, unseen)  # the untouched data trains on them


def test_figures_carry_one_standard_error() -> None:
    got = figures([[1, 2], [3, 4], [5, 6], [7, 8]], np.array([1, 4, 9, 9]), (1, 2))
    assert got["recall@1"] == 0.25 and got["recall@2"] == 0.5
    assert got["recall@2_se"] == pytest.approx(np.std([1, 1, 0, 0], ddof=1) / 2)
    assert got["ndcg@2"] == pytest.approx((1 + 1 / np.log2(3)) / 4)


def test_unseen_titles_bench_end_to_end(data_dir, tmp_path) -> None:
    """Tiny model on 40 members: the quantizer never sees the unseen titles, they get IDs after,
    every way is scored per group, a rerun reuses the stages and another draw is refused."""
    data = DataConfig(data_dir=str(data_dir), dataset="ml-latest-small", max_users=40)
    pretrain = PretrainConfig.from_preset("tiny", epochs=1, eval_every=0, history_tokens="titles")
    config = UnseenConfig(share=0.2, seed=0, fresh_shares=(0.2,), beams=10)
    ids_config = SemanticIDConfig.create(**{**TINY_IDS, "collaborative_weight": 0})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = run_unseen_titles(
            data, SEQ, pretrain, config, tmp_path / "work", tmp_path / "r.json", ids_config
        )
        unseen_ids = {r["target"].split("*")[0] for r in report["examples"]}
        seen_map = SemanticIDs.load(tmp_path / "work" / "ids-seen")
        full_map = SemanticIDs.load(tmp_path / "work" / "ids")
        assert unseen_ids and not unseen_ids & set(seen_map.item_ids) and unseen_ids <= set(full_map.item_ids)
        assert full_map.item_ids[: seen_map.num_items] == seen_map.item_ids  # seen IDs never move
        res = report["results"]
        assert res["model"]["cold"]["num_users"] == report["held_out"]["cold_members"] > 0
        assert res["content_nearest_unseen"]["warm"]["recall@10"] == 0.0  # only unseen titles
        assert report["unseen_titles_per_list"]["served_fresh0.2"] <= 2.0
        assert json.loads((tmp_path / "r.json").read_text())["kind"] == "unseen_titles"
        again = run_unseen_titles(
            data, SEQ, pretrain, config, tmp_path / "work", tmp_path / "r2.json", ids_config
        )
        assert "pretrain_and_fusion" not in again["seconds"] and again["results"] == res
        with pytest.raises(ValueError, match="another draw"):
            other = UnseenConfig(share=0.2, seed=1, fresh_shares=(0.2,), beams=10)
            run_unseen_titles(data, SEQ, pretrain, other, tmp_path / "work", tmp_path / "r3.json", ids_config)
        with pytest.raises(ValueError, match="content-only"):
            collab = SemanticIDConfig.create(**{**TINY_IDS, "collaborative_weight": 1})
            run_unseen_titles(data, SEQ, pretrain, config, tmp_path / "w2", tmp_path / "r4.json", collab)
    finally:
        torch.set_num_threads(threads)


def test_prefix_unseen_follows_the_beam_through_shared_prefixes() -> None:
    codes = np.array([[0, 1, 0], [0, 1, 1], [2, 3, 0], [2, 3, 1], [2, 3, 2], [4, 4, 0]])
    unseen = np.array([1, 3, 4])  # 1 shares (0, 1) with 0; 3 and 4 share (2, 3) with 2
    assert prefix_unseen(codes, [[2, 0, 5], [5], [0, 2]], unseen, 2) == [[3, 4], [], [1, 3]]
