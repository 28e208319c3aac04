"""TIGER's unseen-title protocol (section 4.3): a share of the titles that are test targets is held
out of everything a model learns from, given IDs afterwards by the new-title path, and judged on
the members whose test target is one of them (cold), on the others (warm) and on everyone.

``hold_out`` makes the data a model and its quantizer may see; ``judge`` decodes the test split and
scores the ways of reaching unseen titles side by side on the same members.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.data import RecData
from core.metrics import member_scores, target_ranks, validate_ks
from core.sequences import SequenceConfig, Split, build_sequences, leave_one_out
from eval.new_titles import content_nearest_new
from eval.next_title import recommend_chunked
from gen_fm.dataset import catalog_to_sid_rows, to_sid_rows
from gen_fm.titles import extend_titles
from gen_fm.tokenizer import PromptEncoder
from prompt_tuning.candidate_config import CandidateConfig
from prompt_tuning.candidates import content_vectors, fuse_all, fuse_ranks, with_fresh
from prompt_tuning.train import co_engagement_for
from semantic_ids.trie import PrefixTrie

GROUPS = ("cold", "warm", "all")


@dataclass(frozen=True)
class UnseenConfig:
    """The protocol's draw and how the test split is judged."""

    share: float = 0.05  # of the distinct test-target titles, held out (TIGER: 5%)
    seed: int = 0  # the draw, the warm sample and the random baseline
    ks: tuple[int, ...] = (5, 10)
    beams: int = 20  # the model's beam, also what the served row fuses
    fresh_shares: tuple[float, ...] = (0.1, 0.2)  # of the K slots given to unseen titles
    warm_users: int | None = None  # a seeded sample of the warm members (None: every one)
    batch_size: int = 64

    def __post_init__(self) -> None:
        validate_ks(self.ks)
        if not 0.0 < self.share < 1.0:
            raise ValueError(f"share must be in (0, 1), got {self.share}")
        if self.beams < max(self.ks):
            raise ValueError(f"beams ({self.beams}) must be >= the largest K ({max(self.ks)})")
        bad = [s for s in self.fresh_shares if not 0.0 < s <= 1.0]
        if bad:
            raise ValueError(f"fresh shares must be in (0, 1], got {bad}")
        if self.warm_users is not None and self.warm_users < 1:
            raise ValueError(f"warm_users must be >= 1 or None, got {self.warm_users}")


@dataclass
class HeldOut:
    """The data of one draw: what a model may learn from, and what its quantizer is fitted on."""

    data: RecData  # the whole catalog; the unseen titles' events gone but cold members' test targets
    seen: RecData  # the seen titles only, with their events
    unseen: np.ndarray  # catalog rows of the unseen titles, sorted
    cold_members: int
    removed_events: int  # interaction rows of unseen titles taken out of `data`

    def describe(self) -> dict[str, Any]:
        return {
            "unseen_titles": len(self.unseen),
            "cold_members": self.cold_members,
            "removed_interaction_rows": self.removed_events,
            "catalog": len(self.data.catalog),
        }


def draw_unseen(targets: np.ndarray, share: float, seed: int) -> np.ndarray:
    """`share` of the distinct titles in `targets` (at least one), drawn with `seed`, sorted."""
    distinct = np.unique(np.asarray(targets, dtype=np.int64))
    n = max(1, int(round(share * len(distinct))))
    return np.sort(np.random.default_rng(seed).choice(distinct, n, replace=False))


def _view(data: RecData, catalog_rows: np.ndarray | None, rows: np.ndarray, tag: dict) -> RecData:
    """`data` with only the interaction `rows` (and catalog rows), fingerprinted by `tag`."""
    return dataclasses.replace(
        data,
        catalog=data.catalog if catalog_rows is None else data.catalog.select(catalog_rows.tolist()),
        interactions=data.interactions.select(rows.tolist()),
        source_hashes={**data.source_hashes, "_unseen": json.dumps(tag, sort_keys=True)},
    )


def hold_out(data: RecData, seq_config: SequenceConfig, share: float, seed: int) -> HeldOut:
    """Draw the unseen titles among the test targets and remove every event of theirs except the
    test target of a member whose target is one (from that event's first engagement on). A cold
    member whose sequence would fall under three events (so its target would be trained on) loses
    the target too and is not judged."""
    split = leave_one_out(build_sequences(data, seq_config), seq_config)
    seqs, test = split.sequences, split.examples("test")
    unseen = draw_unseen(test.targets, share, seed)
    unseen_set = set(unseen.tolist())
    cold_target = {  # member id -> (target row, first time of the member's last event)
        seqs.user_ids[u]: (int(t), int(seqs.first_time[seqs.offsets[u + 1] - 1]))
        for u, t in zip(test.users, test.targets)
        if int(t) in unseen_set
    }
    inter = data.interactions.with_format("numpy", columns=["user_id", "item_id", "timestamp"])[:]
    pos = {iid: i for i, iid in enumerate(data.catalog["item_id"])}
    rows = np.fromiter((pos[i] for i in inter["item_id"]), dtype=np.int64, count=len(inter["item_id"]))
    users = np.asarray(inter["user_id"], dtype=object)
    stamps = np.asarray(inter["timestamp"], dtype=np.int64)
    of_unseen = np.isin(rows, unseen)
    target_row = np.zeros(len(rows), dtype=bool)
    for i in np.flatnonzero(of_unseen):
        kept = cold_target.get(users[i])
        target_row[i] = kept is not None and rows[i] == kept[0] and stamps[i] >= kept[1]
    tag = {"share": share, "seed": seed, "unseen_titles": len(unseen)}
    keep = ~of_unseen | target_row
    view = _view(data, None, np.flatnonzero(keep), tag)
    check = leave_one_out(build_sequences(view, seq_config), seq_config)
    short = {check.sequences.user_ids[u] for u in np.flatnonzero(~check.evaluable)} & cold_target.keys()
    if short:
        keep &= ~(target_row & np.isin(users, list(short)))
        view = _view(data, None, np.flatnonzero(keep), tag)
        check = leave_one_out(build_sequences(view, seq_config), seq_config)
    seen_rows = np.setdiff1d(np.arange(len(data.catalog)), unseen)
    seen = _view(data, seen_rows, np.flatnonzero(~of_unseen), {**tag, "seen_only": True})
    cold = check_held_out(check, unseen)
    return HeldOut(view, seen, unseen, cold, int((~keep).sum()))


def check_held_out(split: Split, unseen: np.ndarray) -> int:
    """Raise if an unseen title is in a training event or a validation target of `split`; return
    the number of members whose test target is unseen."""
    _, train_rows = split.train_pairs()
    leaks = {
        "training events": int(np.isin(train_rows, unseen).sum()),
        "validation targets": int(np.isin(split.examples("valid").targets, unseen).sum()),
    }
    if any(leaks.values()):
        raise AssertionError(f"unseen titles leak into {leaks}")
    return int(np.isin(split.examples("test").targets, unseen).sum())


def figures(ranked: list[list[int]], targets: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """Recall and NDCG at each K with one standard error each (of the per-member mean)."""
    n = len(targets)
    if not n:
        return {"num_users": 0}
    ranks = target_ranks(ranked, [int(t) for t in targets])
    out: dict[str, float] = {"num_users": n}
    for k in ks:
        for name, x in zip(("recall", "ndcg"), member_scores(ranks, k)):
            out[f"{name}@{k}"] = float(x.mean())
            out[f"{name}@{k}_se"] = float(x.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    return out


def random_unseen(unseen_rows: np.ndarray, histories: list, k: int, seed: int) -> list[list[int]]:
    """Per member, `k` unseen titles drawn at random (seeded), none of the history."""
    rng = np.random.default_rng([seed, 11])
    out = []
    for h in histories:
        pool = np.setdiff1d(unseen_rows, np.asarray(h, dtype=np.int64))
        out.append(rng.choice(pool, min(k, len(pool)), replace=False).tolist())
    return out


def prefix_unseen(
    codes: np.ndarray, beams: list[list[int]], unseen_rows: np.ndarray, k: int
) -> list[list[int]]:
    """TIGER's way to unseen titles: per member, the unseen titles whose codes but the last (the
    dedup code) equal those of a title in the model's beam, in beam order (ties: lower row)."""
    by_prefix: dict[tuple, list[int]] = {}
    for r in unseen_rows.tolist():
        by_prefix.setdefault(tuple(codes[r, :-1].tolist()), []).append(r)
    out = []
    for beam in beams:
        rows: list[int] = []
        for b in beam:
            rows += [r for r in by_prefix.get(tuple(codes[b, :-1].tolist()), []) if r not in rows]
        out.append(rows[:k])
    return out


def judge(gen, ids, data: RecData, unseen: np.ndarray, config: UnseenConfig) -> dict[str, Any]:
    """Decode the test split of `data` with the model `gen` and the ID map `ids` (the unseen titles
    in it) and score every way of ranking, per group (``GROUPS``)."""
    split = leave_one_out(build_sequences(data, gen.seq_config), gen.seq_config)
    ex = split.examples("test")
    is_cold = np.isin(ex.targets, unseen)
    cold, warm = np.flatnonzero(is_cold), np.flatnonzero(~is_cold)
    if config.warm_users is not None and config.warm_users < len(warm):
        warm = np.sort(np.random.default_rng([config.seed, 3]).choice(warm, config.warm_users, replace=False))
    members = np.concatenate([cold, warm])
    sid_rows = catalog_to_sid_rows(data, ids)
    unseen_rows = np.sort(sid_rows[unseen])
    if (unseen_rows < 0).any():
        raise ValueError("some unseen titles have no ID in the map: assign them first")
    histories = [to_sid_rows(ex.histories[i], sid_rows).tolist() for i in members]
    targets = to_sid_rows(ex.targets[members], sid_rows)
    # the loaded model meets the unseen titles by their codes (a title-token model grows its layout)
    gen.layout = extend_titles(
        gen.model, gen.layout, gen.layout.sids_to_ids(ids.codes), gen.title_code_rows()
    )
    encoder = PromptEncoder.from_ids(ids, gen.config.model.num_user_buckets, gen.layout)
    prompts = [
        encoder.encode(h, user_id=split.sequences.user_ids[ex.users[i]]) for i, h in zip(members, histories)
    ]
    trie = PrefixTrie.from_ids(ids)
    k = max(config.ks)

    def decode(width: int, allow: list | None, desc: str) -> list[list[int]]:
        recs = recommend_chunked(gen.model, prompts, trie, width, config.batch_size, desc, histories, allow)
        return [r.rows for r in recs]

    beams = decode(config.beams, None, f"decoding {len(members)} members")
    fresh = decode(k, [unseen_rows.tolist()] * len(members), "ranking the unseen titles")
    table = co_engagement_for(gen, data, split)
    orders = [table.of_recent(h) for h in histories]
    chosen = gen.fusion()
    cc = CandidateConfig.with_fusion(chosen)
    served = fuse_all(beams, orders, k, cc)
    vectors = content_vectors(ids.path)
    unseen_set = set(unseen_rows.tolist())
    content = content_nearest_new(vectors, unseen_rows, histories, k)
    ranked = {
        "model": [b[:k] for b in beams],
        "served": served,
        "model_unseen_only": fresh,
        "prefix_unseen": prefix_unseen(ids.codes, beams, unseen_rows, k),
        "content_nearest_unseen": content,
        # the model's ranking of unseen titles fused with the content neighbours' by reciprocal rank
        "fused_unseen": [fuse_ranks(f, c, k, cc.fusion_k, 1.0) for f, c in zip(fresh, content)],
        "random_unseen": random_unseen(unseen_rows, histories, k, config.seed),
    }
    for s in config.fresh_shares:
        ranked[f"model_fresh{s:g}"] = [with_fresh(b, f, k, s, unseen_set) for b, f in zip(beams, fresh)]
        ranked[f"served_fresh{s:g}"] = [with_fresh(b, f, k, s, unseen_set) for b, f in zip(served, fresh)]
        ranked[f"served_fresh{s:g}_content"] = [
            with_fresh(b, f, k, s, unseen_set) for b, f in zip(served, content)
        ]
        ranked[f"served_fresh{s:g}_fused"] = [
            with_fresh(b, f, k, s, unseen_set) for b, f in zip(served, ranked["fused_unseen"])
        ]
    index = {"cold": np.arange(len(cold)), "warm": np.arange(len(cold), len(members))}
    index["all"] = np.arange(len(members))
    results = {
        name: {g: figures([rows[i] for i in idx], targets[idx], config.ks) for g, idx in index.items()}
        for name, rows in ranked.items()
    }

    def name_of(rows) -> list[str]:
        return [
            f"{ids.item_ids[r]}{'*' if r in unseen_set else ''} {ids.titles[r] if ids.titles else ''}".strip()
            for r in rows
        ]

    in_lists = {
        name: float(np.mean([sum(r in unseen_set for r in rows[:k]) for rows in lists]))
        for name, lists in ranked.items()
    }
    return {
        "results": results,
        "unseen_titles_per_list": in_lists,
        "members": {"cold": len(cold), "warm": len(warm), "warm_total": int((~is_cold).sum())},
        "fusion": {"fusion_k": cc.fusion_k, "fusion_weight": cc.fusion_weight, "chosen": bool(chosen)},
        "examples": [  # a few cold members, by title
            {"history": name_of(histories[i][-5:]), "target": name_of([targets[i]])[0]}
            | {name: name_of(rows[i][:5]) for name, rows in ranked.items() if name != "random_unseen"}
            for i in range(min(3, len(cold)))
        ],
    }
