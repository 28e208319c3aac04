"""Offline evaluation of a foundation-model folder: leave-one-out, full catalog, whole-ID hits.

    sidrec eval --model runs/beauty/model --data ../shared/data --dataset amazon-beauty --split test --out FILE.json

Every member with an evaluable sequence is judged (no sampling). Decoding is trie-constrained beam
search (beam >= K), so every recommendation is a real title; the same members are also decoded
without the constraint to report the invalid-ID rate an unconstrained decoder would have. The report
names the model and ID artifacts (manifest hashes) and the data fingerprint it judged.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from eval.config import EvalConfig
from eval.machine import machine_info
from eval.member_ranks import member_ranks_file
from gen_fm.beams import beam_width
from gen_fm.co_engagement import CO_ENGAGEMENT_FILE, RECENT_DECAY, RECENT_TITLES
from gen_fm.dataset import catalog_to_sid_rows, to_sid_rows
from gen_fm.decode import recommend, recommend_titles, title_tokens
from gen_fm.model import add_fusion, check_device, load_model
from gen_fm.ranking import FUSION_K, FUSION_WEIGHTS, beam_with_head
from prompt_tuning.candidate_config import CandidateConfig
from prompt_tuning.candidates import fuse_all
from prompt_tuning.train import co_engagement_for
from semantic_ids.trie import PrefixTrie
from core.metrics import metrics_from_ranks, ranking_metrics, target_ranks
from core.artifacts import manifest_hash, write_json
from core.data import DataConfig, RecData, load_data
from core.sequences import build_sequences, leave_one_out


@dataclass
class Decoded:
    """A split's members decoded by a model folder: what the reports are computed from."""

    gen: object  # gen_fm.model.GenFM
    data: object  # core.data.RecData
    split: object  # core.sequences.Split
    histories: list  # per member: ID-artifact rows of the history, oldest first
    prompts: list[list[int]]
    targets: object  # (n,) ID-artifact rows
    recs: list  # gen_fm.decode.Recommendations per member (the whole beam)
    seconds: float
    trie: PrefixTrie  # the one the beams were constrained by
    # the title head's list per member, history excluded (a title-token model), else None
    heads: list | None = None
    users: list | None = None  # per member: the member's user id (``decode_split`` fills it)

    def ranked(self, title_weight: float) -> list[list[int]]:
        """Each member's ranking by the model, history excluded: the beam fused with the title
        head (``fuse_title_head``; weight 0 or no head: the beam alone)."""
        seen = [set(h) for h in self.histories]
        beams = [[r for r in rec.rows if r not in s] for rec, s in zip(self.recs, seen)]
        if self.heads is None or title_weight <= 0:
            return beams
        return [
            list(beam_with_head(b, [r for r in h.rows if r not in s], title_weight))
            for b, h, s in zip(beams, self.heads, seen)
        ]


def recommend_chunked(
    model, prompts: list, trie: PrefixTrie, width: int, batch_size: int, desc: str, exclude=None, allow=None
) -> list:
    """``recommend`` with beam and k `width` over many prompts, in chunks behind one progress bar."""
    out, chunk = [], batch_size * 8
    for s in tqdm(range(0, len(prompts), chunk), desc=desc, unit="chunk"):
        part = slice(s, s + chunk)
        out += recommend(
            model,
            prompts[part],
            trie,
            k=width,
            num_beams=width,
            exclude=None if exclude is None else exclude[part],
            batch_size=batch_size,
            allow=None if allow is None else allow[part],
        )
    return out


def decode_split(
    model_dir: str | Path,
    data_config: DataConfig | RecData,
    config: EvalConfig,
    beams: int,
    max_users: int | None = None,
    sample_seed: int | None = None,
) -> Decoded:
    """Load a model folder and decode `config.split`'s members with beam `beams` (the whole beam
    kept). `max_users`: the first members, or with `sample_seed` a seeded sample of that many."""
    check_device(config.device)  # before any data is read: a missing GPU is a clear error at once
    gen = load_model(model_dir, device=config.device)
    data = data_config if isinstance(data_config, RecData) else load_data(data_config)
    trained_on = gen.manifest.get("data", {}).get("fingerprint")
    if trained_on is not None and trained_on != data.fingerprint:
        raise ValueError(
            f"{model_dir} was trained on other data (fingerprint {trained_on[:12]}…, "
            f"this data {data.fingerprint[:12]}…): its split would not be held out"
        )
    split = leave_one_out(build_sequences(data, gen.seq_config), gen.seq_config)
    ex = split.examples(config.split)
    idx = np.arange(len(ex.targets))
    if max_users is not None and max_users < len(idx):
        idx = (
            idx[:max_users]
            if sample_seed is None
            else np.sort(np.random.default_rng(sample_seed).choice(len(idx), max_users, replace=False))
        )
    sid_rows = catalog_to_sid_rows(data, gen.ids)
    encoder = gen.prompt_encoder()
    histories = [to_sid_rows(ex.histories[i], sid_rows) for i in idx]
    prompts = [
        encoder.encode(h, user_id=split.sequences.user_ids[ex.users[i]]) for i, h in zip(idx, histories)
    ]
    targets = to_sid_rows(ex.targets[idx], sid_rows)
    trie = PrefixTrie.from_ids(gen.ids)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    # the whole beam comes back (its first k are the k-title answer): the home row fuses all of it
    recs = recommend_chunked(
        gen.model, prompts, trie, beams, config.batch_size, f"decoding {len(idx)} members"
    )
    seconds = time.perf_counter() - t0
    heads = None
    tokens = title_tokens(gen.layout, trie.num_items)
    if tokens is not None:  # the title head ranks the catalog in one pass per member
        views = [trie.restrict(exclude_rows=h) for h in histories]
        heads = recommend_titles(gen.model, prompts, trie, tokens, beams, views, config.batch_size)
    users = [split.sequences.user_ids[ex.users[i]] for i in idx]
    return Decoded(gen, data, split, histories, prompts, targets, recs, seconds, trie, heads, users)


def evaluate_model(
    model_dir: str | Path,
    data_config: DataConfig,
    config: EvalConfig,
    out: str | Path | None = None,
    num_beams: int | None = None,
    max_users: int | None = None,
    unconstrained_users: int | None = 2000,
    ranks_out: str | Path | None = None,
) -> dict:
    """Judge a model folder on one split and (optionally) write the JSON report, and with
    `ranks_out` each member's target place in every ranking of the home row
    (``eval.member_ranks``), for paired comparisons."""
    k = max(config.ks)
    beams = beam_width(k, num_beams)
    if beams < k:
        raise ValueError(f"num_beams {beams} < K {k}: a beam narrower than K cannot return K titles")
    d = decode_split(model_dir, data_config, config, beams, max_users)
    gen, data, prompts, targets, recs = d.gen, d.data, d.prompts, d.targets, d.recs
    n, seconds, trie = len(recs), d.seconds, d.trie
    metrics = ranking_metrics([r.rows[:k] for r in recs], targets, config.ks)
    invalid_constrained = sum(r.num_invalid for r in recs)
    places: dict[str, np.ndarray] = {}
    home_row = served_home_row(d, config.ks, places)
    diagnosis = diagnose(gen.ids.codes, [r.rows[:k] for r in recs], targets, d.histories, k)

    m = n if unconstrained_users is None else min(unconstrained_users, n)
    free = (
        recommend(
            gen.model,
            prompts[:m],
            trie,
            k=k,
            num_beams=beams,
            constrained=False,
            batch_size=config.batch_size,
        )
        if m
        else []
    )
    returned = sum(len(r.rows) for r in free)
    report = {
        "benchmark": "gen_fm",
        "split": config.split,
        "dataset": data.name,
        **{f"recall@{kk}": metrics.recall[kk] for kk in config.ks},
        **{f"ndcg@{kk}": metrics.ndcg[kk] for kk in config.ks},
        "invalid_rate": invalid_constrained / max(sum(len(r.rows) for r in recs), 1),
        "home_row": home_row,
        "diagnosis": diagnosis,
        "invalid_rate_unconstrained": sum(r.num_invalid for r in free) / max(returned, 1),
        "unconstrained_users": m,
        "num_users": n,
        "num_beams": beams,
        "k": k,
        "device": config.device,
        "decode_seconds": round(seconds, 1),
        "users_per_second": round(n / max(seconds, 1e-9), 2),
        "parameters": gen.manifest.get("num_parameters"),
        "training": gen.manifest.get("training"),
        "artifacts": {
            "model": str(model_dir),
            "model_manifest": manifest_hash(model_dir),
            "semantic_ids_manifest": manifest_hash(Path(model_dir) / "semantic_ids"),
            "data_fingerprint": data.fingerprint,
        },
        "command": " ".join(["sidrec", *sys.argv[1:]]),
        "machine": machine_info(),
    }
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_json(out, report)
    if ranks_out is not None:
        member_ranks_file(
            ranks_out,
            ranks=places,
            users=d.users,
            targets=[gen.ids.item_ids[t] for t in targets],
            dataset=data.name,
            split=config.split,
            data_fingerprint=data.fingerprint,
            list_length=k,
            source={"model": str(model_dir), "model_manifest": manifest_hash(model_dir), "num_beams": beams},
        )
    return report


HISTORY_BUCKETS = ((1, 2), (3, 5), (6, 10), (11, 20), (21, 1 << 30))


def diagnose(codes, ranked: list[list[int]], targets, histories: list, k: int) -> dict:
    """Where hits are lost: `prefix_hits` [l] is the share of members whose target's first l + 1
    codes begin one of the top-k titles (the last level is Recall@k: a hit is the whole ID), and
    Recall@k by history length."""
    codes = np.asarray(codes)
    L = codes.shape[1]
    prefix = [0] * L
    for rows, t in zip(ranked, targets):
        if not rows:
            continue
        match = codes[rows] == codes[t]  # (k, L)
        depth = np.cumprod(match, axis=1).sum(1).max()  # longest shared prefix among the top k
        for lv in range(int(depth)):
            prefix[lv] += 1
    n = max(len(ranked), 1)
    by_len = {}
    lengths = np.array([len(h) for h in histories])
    for lo, hi in HISTORY_BUCKETS:
        sel = np.flatnonzero((lengths >= lo) & (lengths <= hi))
        if len(sel):
            hits = sum(targets[i] in ranked[i] for i in sel)
            by_len[f"{lo}-{hi}" if hi < 1 << 30 else f"{lo}+"] = {
                "members": int(len(sel)),
                f"recall@{k}": hits / len(sel),
            }
    return {f"prefix_hits@{k}": [p / n for p in prefix], f"recall@{k}_by_history_length": by_len}


# (fusion_k, fusion_weight) pairs also reported, so the served constants can be chosen on the
# validation split's report without decoding again
FUSION_GRID = tuple((fk, w) for fk in (1, 5, 20) for w in (0.5, 1.0, 2.0))
CHOICE_BEAMS = 20  # the serving default's beam for k 10
# (titles, decay) of ``CoEngagement.of_recent`` also reported for the co-engaged titles alone
RECENT_GRID = tuple((t, d) for t in (1, 3, 5, 10) for d in (0.5, 0.7))


def served_home_row(d: Decoded, ks: tuple[int, ...], places: dict | None = None) -> dict:
    """Recall / NDCG of the home row as served (``CanvasSpec.fuse_co_engaged``) with serving's
    defaults: the history's titles are never recommended (``exclude_history``), and each member's
    ranking by the model (the beam, fused with the title head by the folder's ``title_weight``) is
    fused by reciprocal rank with the titles most co-engaged with their newest history titles
    (``CoEngagement.of_recent`` over the model folder's table, or the same table counted from the
    split for a folder that predates it: ``prompt_tuning.train.co_engagement_for``), with the
    folder's chosen constants. The beam here was decoded without the history excluded and loses its
    history titles afterwards; serving excludes them inside the search, which refills the beam (so
    serving's row can only differ by titles past the beam's width). Also reported: the model's
    ranking, its beam and its title head alone, the co-engaged titles alone, every pair of
    ``FUSION_GRID`` and every ``RECENT_GRID`` order (its 1-title rows: the newest title's list).
    A `places` dict is filled with each member's target place in the served row ("served"), the
    model's ranking ("model"), its beam and title head ("beam", "title_head") and the co-engaged
    titles ("co_engaged"), history excluded in all."""
    gen, histories, targets = d.gen, d.histories, d.targets
    table = co_engagement_for(gen, d.data, d.split)
    where = (
        "the model folder"
        if (Path(gen.path) / CO_ENGAGEMENT_FILE).is_file()
        else "built from the split's training events (the folder predates the table)"
    )
    chosen = gen.fusion()
    k, cc = max(ks), CandidateConfig.with_fusion(chosen)
    title_weight = title_weight_of(chosen, d)
    beams = d.ranked(title_weight)
    orders = [table.of_recent(h) for h in histories]

    def figures(ranked: list[list[int]], name: str | None = None) -> dict[str, float]:
        ranks = target_ranks(ranked, targets)
        if places is not None and name is not None:
            places[name] = ranks
        m = metrics_from_ranks(ranks, ks)
        se = {f"recall@{kk}_se": (m.recall[kk] * (1 - m.recall[kk]) / len(ranked)) ** 0.5 for kk in ks}
        return {
            **{f"recall@{kk}": m.recall[kk] for kk in ks},
            **{f"ndcg@{kk}": m.ndcg[kk] for kk in ks},
            **se,
        }

    heads = {}
    if d.heads is not None:
        heads = {
            "beam_history_excluded": figures([b[:k] for b in d.ranked(0.0)], "beam"),
            "title_head_alone": figures([h.rows[:k] for h in d.heads], "title_head"),
        }
    return {
        **figures(fuse_all(beams, orders, k, cc), "served"),
        "fusion_k": cc.fusion_k,
        "fusion_weight": cc.fusion_weight,
        "title_weight": title_weight,
        "fusion_source": "chosen on validation (the model folder)" if chosen else "defaults",
        "recent_titles": RECENT_TITLES,
        "recent_decay": RECENT_DECAY,
        "history_excluded": True,
        "co_engagement": where,
        "members_with_co_engaged_titles": sum(bool(o) for o in orders),
        "model_history_excluded": figures([b[:k] for b in beams], "model"),
        **heads,
        "co_engaged_alone": figures([o[:k] for o in orders], "co_engaged"),
        "fusion_grid": [
            {
                "fusion_k": fk,
                "fusion_weight": w,
                **figures(fuse_all(beams, orders, k, CandidateConfig(fusion_k=fk, fusion_weight=w))),
            }
            for fk, w in FUSION_GRID
        ],
        "recent_grid": [
            {
                "recent_titles": t,
                "recent_decay": dd,
                **figures([table.of_recent(h, t, dd)[:k] for h in histories]),
            }
            for t, dd in RECENT_GRID
        ],
    }


def title_weight_of(chosen: dict | None, d: Decoded) -> float:
    """The title head's weight in the model's ranking: the folder's choice (0 before one was made,
    and always 0 for a model without title tokens)."""
    return float((chosen or {}).get("title_weight", 0.0)) if d.heads is not None else 0.0


def choose_fusion(
    model_dir: str | Path,
    data_config: DataConfig | RecData,
    config: EvalConfig | None = None,
    max_users: int | None = 5000,
    seed: int = 0,
    write: bool = True,
) -> dict:
    """Choose the home row's fusion weights for a model on the validation split and (with `write`)
    store them in the model folder, where ``served_home_row`` and serving read them.

    The weights of ``FUSION_WEIGHTS`` are tried on the same decoded members, twice: the title
    head's weight in the model's ranking (a title-token model; 0: the beam alone, the largest: the
    head first), then the counts' weight in the home row over that ranking (0: the model alone, the
    largest: the counts first). The highest Recall@K wins each, NDCG@K breaking ties."""
    config = config or EvalConfig(split="valid", ks=(10,))
    if config.split != "valid":
        raise ValueError("the fusion weight is chosen on the validation split, never on test")
    d = decode_split(model_dir, data_config, config, CHOICE_BEAMS, max_users, sample_seed=seed)
    k = max(config.ks)

    def scored(ranked: list[list[int]], **weights: float) -> dict:
        m = ranking_metrics(ranked, d.targets, config.ks)
        return {**weights, f"recall@{k}": m.recall[k], f"ndcg@{k}": m.ndcg[k]}

    def best(grid: list[dict]) -> dict:
        return max(grid, key=lambda g: (g[f"recall@{k}"], g[f"ndcg@{k}"]))

    # first the model's own ranking (beam and title head), then its fusion with the counts
    title_grid = []
    if d.heads is not None:
        title_grid = [scored([r[:k] for r in d.ranked(w)], title_weight=w) for w in FUSION_WEIGHTS]
    title_weight = best(title_grid)["title_weight"] if title_grid else 0.0
    table = co_engagement_for(d.gen, d.data, d.split)
    beams = d.ranked(title_weight)
    orders = [table.of_recent(h) for h in d.histories]
    grid = [
        scored(
            fuse_all(beams, orders, k, CandidateConfig(fusion_k=FUSION_K, fusion_weight=w)),
            fusion_weight=w,
        )
        for w in FUSION_WEIGHTS
    ]
    chosen = best(grid)
    n = len(d.recs)
    fusion = {
        "fusion_k": FUSION_K,
        "fusion_weight": chosen["fusion_weight"],
        "title_weight": title_weight,
        "chosen_on": "valid",
        "members": n,
        "seed": seed,
        "beams": CHOICE_BEAMS,
        "metric": f"recall@{k}",
        f"recall@{k}_se": (chosen[f"recall@{k}"] * (1 - chosen[f"recall@{k}"]) / n) ** 0.5,
        "title_grid": title_grid,
        "grid": grid,
        "model_manifest": manifest_hash(model_dir),
    }
    if write:
        add_fusion(model_dir, fusion)
    return fusion


def describe_fusion(fusion: dict) -> list[str]:
    """What ``choose_fusion`` tried and chose, one line per weight."""
    metric = fusion["metric"]
    lines = []
    if fusion.get("title_grid"):
        lines.append(
            f"the model's ranking chosen on {fusion['members']:,} validation members (weight 0 = the "
            f"beam alone, {max(g['title_weight'] for g in fusion['title_grid']):g} = the title head first):"
        )
        for g in fusion["title_grid"]:
            mark = "  <- chosen" if g["title_weight"] == fusion["title_weight"] else ""
            lines.append(f"  title weight {g['title_weight']:>5g}  {metric} {g[metric]:.4f}{mark}")
    lines.append(
        f"home row fusion chosen on {fusion['members']:,} validation members (beam "
        f"{fusion['beams']}; weight 0 = the model alone, "
        f"{max(g['fusion_weight'] for g in fusion['grid']):g} = the counts first):"
    )
    for g in fusion["grid"]:
        mark = "  <- chosen" if g["fusion_weight"] == fusion["fusion_weight"] else ""
        lines.append(f"  weight {g['fusion_weight']:>5g}  {metric} {g[metric]:.4f}{mark}")
    return lines
